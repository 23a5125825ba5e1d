"""Checkpoint folders: the layout on disk, integrity checks, retention, and what may change on resume.

One checkpoint is one folder that resumes as a unit (verl's ``global_step_N`` layout)::

    global_step_N/
        rlkit_checkpoint.json   format, step, time, what it holds, the size of every file
        config.yaml             the run's config
        actor/model.pt          actor weights (fp32 master copy)            save_contents: model
        actor/optim.pt          AdamW state and lr schedule                 save_contents: optimizer
        critic/model.pt         value model (adv_estimator=gae only)
        critic/optim.pt
        extra.pt                data position, KL controller, history, memory trace, the
                                worker's random state                       save_contents: extra

A run on several ranks (:class:`~rlkit.distributed.group.WorkerGroup`) writes the sharded layout
(marker: ``"layout": "sharded", "world_size": N``): every rank writes its own shards of model and
AdamW state with ``torch.distributed.checkpoint`` (DCP) and its own random state::

    global_step_N/
        rlkit_checkpoint.json   as above, plus layout and world_size
        config.yaml, extra.pt   as above (extra.pt: the controller's state only)
        actor/dcp/              DCP folder: .metadata and one __<rank>_0.distcp per rank
                                (model shards, and AdamW shards with save_contents: optimizer)
        critic/dcp/             (adv_estimator=gae only)
        ranks/rank_<r>.pt       rank r's random state (its sampling generator, the CPU and CUDA
                                generators) and the lr schedules (with save_contents: optimizer)

The ranks write into the checkpoint's temporary folder, so every rank must see that path: one
machine's local disk is enough for one node; several nodes need a shared filesystem for
``trainer.default_local_dir`` (as with verl and torch's DCP). rlkit saves the sharded layout at every
world size, one rank included. A sharded checkpoint loads only into the same number of ranks:
loading N shards into M ranks (resharding) is not supported yet and is refused with both sizes
named. Checkpoints of the single-process layout (written by rlkit before the worker group, and
format 1) still resume, into any number of ranks: each rank cuts its shards from the whole state.

Sizes follow the model: weights are 4 bytes per parameter, AdamW keeps two more fp32 tensors per
parameter, so a full checkpoint is about 12 bytes per trained parameter (actor, plus the critic
with GAE). :func:`describe` prints the breakdown.

Everything here is written into a temporary folder and renamed into place, and nothing is
deleted except older rlkit checkpoints by :func:`prune` (never a folder without the marker).
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

MARKER = "rlkit_checkpoint.json"
FORMAT = 2
READABLE_FORMATS = (1, 2)  # format 1: one state.pt (rlkit 0.1.0 before the split layout)
PARTS = {"actor": ("model", "optimizer"), "critic": ("model", "optimizer")}
STEP_PREFIX = "global_step_"
SINGLE, SHARDED = "single", "sharded"  # the marker's "layout"


class CheckpointError(RuntimeError):
    """A checkpoint folder is missing, damaged, foreign, or does not fit the config it resumes with."""


class NotACheckpointError(CheckpointError, FileNotFoundError):
    """The folder does not exist or carries no rlkit marker."""


class ForeignFolderError(CheckpointError, FileExistsError):
    """Saving would overwrite a non-empty folder that is not an rlkit checkpoint."""


# ---------------------------------------------------------------------- writing
def write(target: str | os.PathLike, *, worker_state: dict | None = None, extra: dict, config_yaml: str,
          global_step: int, contents: Iterable[str] = ("model", "optimizer", "extra"),
          write_worker: Callable[[Path, list[str]], dict] | None = None) -> Path:
    """Write a checkpoint folder atomically; an existing rlkit checkpoint there is replaced, any other
    non-empty folder is refused (a user's files are never overwritten).

    worker_state: ``{"actor": {"model": sd, "optimizer": sd}, "critic": {...}, "rng": ...}``
    (a worker's ``state_dict()``); extra: the controller's state (sampler, KL controller, history...).
    write_worker: instead of ``worker_state``, for a worker that writes its own files (a
    WorkerGroup's ranks): called as ``write_worker(tmp_dir, sorted(contents))`` with the temporary
    folder (absolute) before the marker is written; it returns the marker's layout fields
    (``{"layout": "sharded", "world_size": N}``). Its files are recorded and size-checked by
    :func:`inspect` like every other file, and renamed into place with the rest.
    """
    import torch

    if (worker_state is None) == (write_worker is None):
        raise TypeError("checkpoint.write needs exactly one of worker_state and write_worker")
    contents = set(contents)
    target = Path(target).expanduser().resolve()
    if target.exists() and any(target.iterdir()) and not (target / MARKER).exists():
        raise ForeignFolderError(f"{target} exists and is not an rlkit checkpoint; choose an empty or new folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        layout = {"layout": SINGLE}
        if write_worker is not None:
            layout = dict(write_worker(tmp, sorted(contents)))
            if layout.get("layout") != SHARDED or int(layout.get("world_size") or 0) < 1:
                raise CheckpointError(f"write_worker returned {layout!r}; expected layout 'sharded' and a world_size")
        else:
            for role, parts in PARTS.items():
                state = worker_state.get(role)
                if state is None:
                    continue
                (tmp / role).mkdir()
                for part in parts:
                    if part in contents:
                        torch.save(state[part], tmp / role / f"{'model' if part == 'model' else 'optim'}.pt")
        if "extra" in contents:
            rng = worker_state.get("rng") if worker_state is not None else None  # sharded: in ranks/rank_<r>.pt
            torch.save({**extra, "worker_rng": rng}, tmp / "extra.pt")
        (tmp / "config.yaml").write_text(config_yaml)
        files = {str(p.relative_to(tmp)): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}
        (tmp / MARKER).write_text(json.dumps({"format": FORMAT, "global_step": global_step, "contents": sorted(contents),
                                              **layout, "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                              "files": files}, indent=1))
        old = target.parent / f".{target.name}.old-{os.getpid()}"
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


# ---------------------------------------------------------------------- reading
@dataclass
class Checkpoint:
    """A checkpoint folder that passed :func:`inspect` (marker, format, every file whole)."""

    path: Path
    format: int
    global_step: int
    contents: list[str]
    files: dict[str, int] = field(default_factory=dict)
    layout: str = SINGLE  # "single" (one process's state dicts) or "sharded" (one DCP shard per rank)
    world_size: int = 1  # ranks that wrote it (1 for the single layout)

    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    def has(self, rel: str) -> bool:
        return rel in self.files

    def load_extra(self) -> dict:
        if self.format == 1:
            return _torch_load(self.path / "state.pt")
        if not self.has("extra.pt"):
            raise CheckpointError(f"{self.path} was saved without 'extra' (checkpoint.save_contents); it holds no data "
                                  "position or history and cannot resume a run. Load its weights with "
                                  "rlkit.checkpoint.load_weights instead")
        return _torch_load(self.path / "extra.pt")

    def load_worker_state(self, roles: Iterable[str]) -> dict | ShardedState:
        """The worker state to load: ``{"actor": {"model": ..., "optimizer": ... or None}, ...}``; for
        the sharded layout a :class:`ShardedState` (the ranks read their own shards)."""
        if self.layout == SHARDED:
            return ShardedState(self.path, self.world_size, [r for r in roles if self.has_role(r)],
                                "optimizer" in self.contents)
        if self.format == 1:
            old = _torch_load(self.path / "state.pt")["worker"]
            out = {}
            for role in roles:
                if role not in old:
                    continue
                out[role] = {"model": old[role], "optimizer": {"optim": old[f"{role}_optim"], "sched": old[f"{role}_sched"]}}
            return out
        out = {}
        for role in roles:
            if not self.has(f"{role}/model.pt"):
                continue
            out[role] = {"model": _torch_load(self.path / role / "model.pt"),
                         "optimizer": _torch_load(self.path / role / "optim.pt") if self.has(f"{role}/optim.pt") else None}
        return out

    def has_role(self, role: str) -> bool:
        """Weights of ``role`` ("actor", "critic") are in the checkpoint (either layout; format 1 keeps
        every role of its run in one ``state.pt``)."""
        if self.format == 1:
            return self.has("state.pt")
        if self.layout == SHARDED:
            return any(k.startswith(f"{role}/dcp/") for k in self.files)
        return self.has(f"{role}/model.pt")

    def require_world_size(self, world_size: int) -> None:
        """Refuse (CheckpointError naming both sizes) unless this checkpoint loads into a run of
        ``world_size`` ranks: a sharded checkpoint only into as many ranks as saved it; one process's
        state dicts (the single-process layout) into any number (each rank cuts its shards)."""
        if self.layout == SINGLE or self.world_size == world_size:
            return
        raise CheckpointError(
            f"{self.path} was saved by {self.world_size} rank{'s' if self.world_size != 1 else ''} (sharded layout) and "
            f"this run has {world_size} rank{'s' if world_size != 1 else ''}: saved world size {self.world_size}, this "
            f"run's world size {world_size}. Loading a checkpoint into another number of ranks (resharding N -> M) is "
            f"not supported yet. Fix: resume with the saved size (trainer.nnodes * trainer.n_gpus_per_node = "
            f"{self.world_size}), or start a new run (trainer.resume_mode=disable or another trainer.default_local_dir)")

    def describe(self) -> str:
        """Sizes per file, e.g. ``actor/model.pt 19.5 MB, actor/optim.pt 39.0 MB, ...``; the sharded
        layout sums each DCP folder (``actor/dcp 58.5 MB``) and the rank files."""
        total = sum(self.files.values())
        groups: dict[str, int] = {}
        for k, v in self.files.items():
            if "/dcp/" in k:
                k = k.split("/dcp/")[0] + "/dcp"
            elif k.startswith("ranks/"):
                k = "ranks/"
            elif not k.endswith(".pt"):
                continue
            groups[k] = groups.get(k, 0) + v
        parts = ", ".join(f"{k} {_mb(v)}" for k, v in groups.items())
        shards = (f"; {self.world_size} rank{'s' if self.world_size != 1 else ''}, sharded" if self.layout == SHARDED
                  else "")
        return f"{_mb(total)} ({parts}{shards})"


@dataclass
class ShardedState:
    """What a sharded checkpoint gives to ``WorkerGroup.load_state_dict``: each rank loads its own
    shards from ``path`` (DCP folders ``<role>/dcp`` and ``ranks/rank_<r>.pt``)."""

    path: Path
    world_size: int
    roles: list[str]
    with_optimizer: bool


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _torch_load(path: Path) -> Any:
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated or overwritten file
        raise CheckpointError(f"{path} cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:200]}); the "
                              "checkpoint is damaged. Resume from an older one (trainer.resume_mode=resume_path "
                              "trainer.resume_from_path=DIR)") from e


def inspect(directory: str | os.PathLike) -> Checkpoint:
    """Check a checkpoint folder without loading any tensors: marker, format, every recorded file
    present with its recorded size. Raises :class:`CheckpointError` naming what is wrong."""
    src = Path(directory).expanduser()
    if not src.is_dir():
        raise NotACheckpointError(f"checkpoint {src} does not exist")
    marker = src / MARKER
    if not marker.exists():
        raise NotACheckpointError(f"{src} is not an rlkit checkpoint (no {MARKER})")
    try:
        meta = json.loads(marker.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{marker} is damaged ({e}); resume from an older checkpoint") from e
    fmt = meta.get("format")
    if fmt not in READABLE_FORMATS:
        raise CheckpointError(f"{src} has checkpoint format {fmt}; this rlkit reads formats "
                              f"{', '.join(map(str, READABLE_FORMATS))} (upgrade rlkit)")
    if fmt == 1:
        files = {"state.pt": (src / "state.pt").stat().st_size if (src / "state.pt").exists() else -1,
                 "config.yaml": (src / "config.yaml").stat().st_size if (src / "config.yaml").exists() else -1}
        expected = {k: None for k in files}
        contents = ["model", "optimizer", "extra"]
        layout, world = SINGLE, 1
    else:
        expected = dict(meta.get("files") or {})
        files, contents = {}, list(meta.get("contents") or [])
        layout, world = meta.get("layout", SINGLE), int(meta.get("world_size") or 1)
        if layout not in (SINGLE, SHARDED):
            raise CheckpointError(f"{src} has checkpoint layout {layout!r}; this rlkit reads {SINGLE!r} and "
                                  f"{SHARDED!r} (upgrade rlkit)")
        for rel in expected:
            p = src / rel
            files[rel] = p.stat().st_size if p.is_file() else -1
    problems = []
    for rel, size in files.items():
        if size < 0:
            problems.append(f"{rel} is missing")
        elif expected[rel] is not None and size != expected[rel]:
            problems.append(f"{rel} is {size} bytes, {expected[rel]} were written")
    if problems:
        raise CheckpointError(f"checkpoint {src} is damaged: {'; '.join(problems)}. Resume from an older one "
                              "(trainer.resume_mode=resume_path trainer.resume_from_path=DIR) or move it away")
    return Checkpoint(src, fmt, int(meta.get("global_step", 0)), contents, files, layout, world)


def step_folders(parent: str | os.PathLike) -> list[Path]:
    """``global_step_N`` rlkit checkpoints under ``parent`` (marker present), oldest first."""
    parent = Path(parent).expanduser()
    found = []
    for p in parent.glob(f"{STEP_PREFIX}*"):
        tail = p.name[len(STEP_PREFIX):]
        if p.is_dir() and tail.isdigit() and (p / MARKER).exists():
            found.append((int(tail), p))
    return [p for _, p in sorted(found)]


def latest(parent: str | os.PathLike) -> Path | None:
    """The newest ``global_step_N`` checkpoint under ``parent`` (verl's resume_mode=auto), or None."""
    steps = step_folders(parent)
    return steps[-1] if steps else None


def prune(parent: str | os.PathLike, max_actor: int | None, max_critic: int | None) -> list[Path]:
    """Delete the oldest ``global_step_N`` checkpoints beyond the keep limits; returns what went.

    rlkit's checkpoint holds actor and critic together and resumes as a unit, so the folder count
    obeys both verl limits: ``min(max_actor_ckpt_to_keep, max_critic_ckpt_to_keep)`` (None = no
    limit). Only folders carrying rlkit's marker are touched; the newest is always kept.
    """
    limits = [int(k) for k in (max_actor, max_critic) if k is not None]
    if not limits:
        return []
    keep = max(1, min(limits))
    steps = step_folders(parent)
    doomed = steps[:-keep] if len(steps) > keep else []
    for p in doomed:
        shutil.rmtree(p)
    return doomed


# ---------------------------------------------------------------------- resuming with another config
# Keys whose change would make the saved state describe another run: refused on resume.
FIXED_ON_RESUME = (
    "actor_rollout_ref.model.path", "actor_rollout_ref.model.gguf_file", "actor_rollout_ref.model.tokenizer_path",
    "actor_rollout_ref.model.override_config", "actor_rollout_ref.model.custom_chat_template",
    "actor_rollout_ref.model.lora_rank",
    "critic.model.path", "critic.model.gguf_file", "critic.model.override_config",
    "data.train_files", "data.train_max_samples", "data.prompt_key", "data.train_batch_size", "data.shuffle",
    "data.seed", "data.max_prompt_length", "data.truncation", "data.filter_overlong_prompts",
    "actor_rollout_ref.rollout.n", "algorithm.adv_estimator",
)
# Keys that only steer the loop, logging, checkpoints and validation: applied without comment.
FREE_ON_RESUME = (
    "trainer.total_training_steps", "trainer.total_epochs", "trainer.logger", "trainer.save_freq",
    "trainer.test_freq", "trainer.val_before_train", "trainer.val_only", "trainer.project_name",
    "trainer.experiment_name", "trainer.default_local_dir", "trainer.max_actor_ckpt_to_keep",
    "trainer.max_critic_ckpt_to_keep", "trainer.resume_mode", "trainer.resume_from_path",
    "trainer.log_val_generations", "trainer.rollout_data_dir", "trainer.validation_data_dir",
    "data.val_files", "data.val_max_samples", "data.val_batch_size", "actor_rollout_ref.rollout.val_kwargs",
    "actor_rollout_ref.actor.checkpoint", "critic.checkpoint",
    "reward_model",  # model-based reward is not supported: its keys steer nothing
)
LR_KEYS = ("actor_rollout_ref.actor.optim.lr", "critic.optim.lr")


@dataclass
class ResumeChanges:
    """How a new config differs from the one a checkpoint was saved with."""

    applied: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # key -> (saved, new), no comment needed
    warned: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # applied, but they change the dynamics
    refused: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # cannot change on resume

    def lines(self) -> list[str]:
        out = [f"  {k}: {a!r} -> {b!r}" for k, (a, b) in self.applied.items()]
        out += [f"  {k}: {a!r} -> {b!r} (warning: {_warning_text(k)})" for k, (a, b) in self.warned.items()]
        return out


def _warning_text(key: str) -> str:
    if key in LR_KEYS:
        return "the optimizer keeps its moments; the schedule continues from the saved step at the new lr"
    return "changes the training dynamics from this step on"


def _matches(key: str, prefixes: Iterable[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def _leaves(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out.update(_leaves(v, f"{prefix}{k}."))
        return out or {prefix[:-1]: {}}
    return {prefix[:-1]: tree}


def compare_configs(saved, new) -> ResumeChanges:
    """Classify every resolved value that differs between ``saved`` and ``new`` (DictConfigs)."""
    from omegaconf import OmegaConf

    a = _leaves(OmegaConf.to_container(saved, resolve=True))
    b = _leaves(OmegaConf.to_container(new, resolve=True))
    changes = ResumeChanges()
    for key in sorted(set(a) | set(b)):
        old, cur = a.get(key), b.get(key)
        if old == cur:
            continue
        if _matches(key, FIXED_ON_RESUME):
            changes.refused[key] = (old, cur)
        elif _matches(key, FREE_ON_RESUME):
            changes.applied[key] = (old, cur)
        else:
            changes.warned[key] = (old, cur)
    return changes


def refusal_message(path: Path, changes: ResumeChanges) -> str:
    rows = "\n".join(f"  {k}: saved {a!r}, now {b!r}" for k, (a, b) in changes.refused.items())
    return (f"cannot resume {path} with this config: these keys define the run that was saved and cannot change "
            f"on resume:\n{rows}\nFix: pass the saved values (see {path / 'config.yaml'}), or start a new run in "
            "another trainer.default_local_dir (or trainer.resume_mode=disable).")


def load_weights(directory: str | os.PathLike, role: str = "actor") -> dict:
    """The ``role`` model's state dict ("actor" or "critic") from a checkpoint folder, e.g. to
    evaluate a saved policy: ``model.load_state_dict(rlkit.checkpoint.load_weights(path))``.
    A sharded checkpoint is assembled on the CPU from every rank's shards (no process group needed)."""
    ck = inspect(directory)
    if ck.layout == SHARDED:
        if not ck.has_role(role):
            raise CheckpointError(f"{ck.path} holds no {role} weights (saved contents: {', '.join(ck.contents)})")
        import tempfile

        import torch
        from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

        with tempfile.TemporaryDirectory(prefix="rlkit-weights-") as tmp:
            whole = Path(tmp) / "whole.pt"
            dcp_to_torch_save(ck.path / role / "dcp", whole)
            return torch.load(whole, map_location="cpu", weights_only=False)["model"]
    state = ck.load_worker_state([role])
    if role not in state:
        raise CheckpointError(f"{ck.path} holds no {role} weights (saved contents: {', '.join(ck.contents)})")
    return state[role]["model"]
