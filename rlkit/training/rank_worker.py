"""`RankWorker`: one training process per GPU (or per CPU rank), its roles sharded with FSDP2.

A group of N rank workers (:class:`rlkit.distributed.group.WorkerGroup` starts them on Ray, one per
placement-group bundle, or one rank in the controller's process) trains like one process holding
the whole batch. Each rank:

1. joins the process group from ``RANK`` / ``WORLD_SIZE`` / ``MASTER_ADDR`` / ``MASTER_PORT``
   (``tcp://`` init method, IPv6 bracketed; NCCL on CUDA, gloo on CPU; collectives time out after
   ``timeout_s`` instead of hanging when a peer is gone);
2. loads actor, critic and reference (:func:`rlkit.training.worker.load_role_models`), sharding each as it loads with
   :func:`rlkit.training.fsdp.shard_model` (bf16 compute on GPU, fp32 on CPU;
   ``fsdp_config.param_offload`` -> CPUOffloadPolicy; ``optimizer_offload`` -> AdamW state on the
   CPU between updates; ``fsdp_size`` -> the HSDP mesh of :class:`~rlkit.parallel.ParallelPlan`);
   on GPU, with ``actor.use_torch_compile`` (the default, as verl), each decoder layer is compiled
   (:func:`rlkit.training.fsdp.compile_layers`; ``ref.use_torch_compile`` for the reference, the
   actor's switch for the critic); CPU ranks run eager (compiling costs more there than it saves);
3. runs forward passes on its share of a batch (``compute_log_prob``, ``compute_ref_log_prob``,
   ``compute_values``: any rows, in micro-batches), and updates.

Updates (``update_actor``, ``update_critic``) - what makes N ranks equal one:

* **Mini-batch layout.** :func:`update_shards` (called by the group, on the driver) draws one order
  of the whole batch per epoch - ``torch.Generator`` seeded with the step -
  cuts it into global mini-batches and gives each rank an equal share of every mini-batch, in
  order. Every rank therefore takes the same number of optimizer steps over the same global
  mini-batches a single rank would take. A mini-batch that does not split evenly is padded with
  copies of its rows whose ``response_mask`` is zero (they weigh nothing, but keep every rank's
  forward/backward count equal, which FSDP's collectives need).
* **Global normalisation.** A micro-batch loss is ``agg_loss`` over its own rows; it is scaled by
  ``units / global_units`` where units are what the ``loss_agg_mode`` averages over (tokens for
  ``token-mean``, non-empty sequences for every ``seq-mean-*`` mode) and ``global_units`` is the
  all-reduced count over the whole mini-batch on all ranks. The result is multiplied by the world
  size because FSDP averages gradients over ranks. So the accumulated gradient is exactly that of
  one loss over the global mini-batch, whatever the split into ranks and micro-batches.
* **Clipping** uses the global norm over all shards (:func:`rlkit.training.fsdp.clip_grad_norm`);
  a non-finite norm skips the step on every rank alike.
* **Metrics** are weighted like the loss and all-reduced, so every rank returns the same numbers,
  those of the global mini-batch (averaged over mini-batches). Besides verl's, each role reports how far
  an optimizer step moved its weights, ``<role>/update_norm`` (``||theta_new - theta_old||``, read back
  from AdamW's moments: :func:`rlkit.training.optim.adamw_step_norms`), the weights' ``<role>/param_norm``
  after it, and AdamW's step count so far, ``<role>/optimizer_steps`` (one per mini-batch and epoch of
  every update: a smaller count means the moments were lost on the way).

Generation with SGLang (``rollout.name=sglang``, verl's hybrid engine): one engine per TP group of
``rollout.tensor_model_parallel_size`` ranks, its TP ranks on those ranks' GPUs
(:class:`rlkit.training.engine_group.EngineGroup`). It starts before any training state loads (so
every GPU of the group reads the same free memory for SGLang's TP check, which the group runs
first over its ranks' real readings) and sleeps until the first :meth:`RankWorker.wake_rollout`,
which pushes the actor's weights from the FSDP shards bucket by bucket; the group's first rank (its
leader) generates for the group, the others get no prompts. :meth:`RankWorker.sleep_rollout` frees
the engine's KV cache and weights for training.

Generation with the ``hf`` engine: ranks generate different numbers of tokens, so a sharded module,
whose every forward is a collective, cannot run ``generate``. Each rank keeps a plain (unsharded)
copy of the actor, made before sharding; :meth:`RankWorker.generate` first gathers the actor's current
weights into it (one all-gather per tensor, the same order on every rank), then generates its own
prompts with no communication. Cost: one full model copy per rank, fine for the ``hf`` engine's
model sizes; SGLang is the path for large models. Each rank samples with its own random stream
(``data.seed + rank``).

Checkpoints (:meth:`RankWorker.save_checkpoint`, :meth:`RankWorker.load_checkpoint`): every rank
writes its own model and AdamW shards with ``torch.distributed.checkpoint`` into ``<dir>/actor/dcp``
and ``<dir>/critic/dcp``, and its random state (its sampling generator, the CPU and CUDA
generators) and lr schedules into ``<dir>/ranks/rank_<r>.pt``; layout in :mod:`rlkit.checkpoint`.
``<dir>`` must be the same path on every rank (a shared filesystem across nodes).

Micro-batches: the plan's fixed number of rows, or with ``use_dynamic_bsz`` groups of at most the
role's token budget, balanced by length, as many on every rank (:meth:`RankWorker._micro_batches`).
With ``use_remove_padding`` each micro-batch runs as one packed row of its real tokens
(:func:`rlkit.training.worker.response_log_probs`). Neither changes the numbers, only speed and memory.

Not implemented yet: Ulysses sequence parallelism, resharding a checkpoint to another number of ranks.

The layout, checked by hand (8 rows, global mini-batch 4, 2 ranks, no shuffle)::

    >>> import torch
    >>> from rlkit.datasets import RolloutBatch
    >>> from rlkit.training.rank_worker import update_shards
    >>> b = RolloutBatch({"x": torch.arange(8), "response_mask": torch.ones(8, 1)})
    >>> shards = update_shards(b, world=2, mini=4, epochs=1, shuffle=False, seed=0)
    >>> [s["x"].tolist() for s in shards], shards[0].meta["mini_batch_sizes"]
    ([[0, 1, 4, 5], [2, 3, 6, 7]], [2, 2])

A mini-batch of 3 rows over 2 ranks gets one padding row with an empty mask::

    >>> s = update_shards(b.select(range(3)), world=2, mini=4, epochs=1, shuffle=False, seed=0)
    >>> [x["x"].tolist() for x in s], s[1]["is_pad"], s[1]["response_mask"].flatten().tolist()
    ([[0, 1], [2, 0]], [False, True], [1.0, 0.0])
"""
from __future__ import annotations

import contextlib
import copy
import datetime
import os
import socket
import time
import warnings
from typing import Any, Callable

import torch
from torch.profiler import record_function

from rlkit.datasets.batch import PAD_COLUMN, RolloutBatch
from rlkit.datasets.packing import token_budget_groups
from rlkit.diagnostics import memory as memory_lib
from rlkit.parallel import ParallelPlan
from rlkit.rollout.base import get_rollout_class
from rlkit.training import fsdp, models, worker as worker_lib
from rlkit.training.optim import adamw_step_norms, build_optimizer, build_scheduler

__all__ = ["RankWorker", "update_shards", "loss_units", "DEFAULT_TIMEOUT_S"]

DEFAULT_TIMEOUT_S = 600  # a collective waiting longer than this raises instead of hanging


# ---------------------------------------------------------------------------------------------- layout
def update_shards(batch: RolloutBatch, world: int, mini: int, epochs: int, shuffle: bool,
                  seed: int) -> list[RolloutBatch]:
    """Per rank, its share of every global mini-batch, in training order (epochs unrolled).

    Args:
        batch: the whole batch (B rows).
        world: data-parallel ranks.
        mini: rows per global mini-batch (``ppo_mini_batch_size * rollout.n``); the last may be short.
        epochs, shuffle: ``ppo_epochs`` and ``shuffle``; one ``randperm`` per epoch from a generator
            seeded with ``seed`` (one rank's order, cut into shares).

    Returns ``world`` batches; ``meta["mini_batch_sizes"]`` lists the per-rank rows of each
    mini-batch (the same on every rank). Padding rows (``is_pad`` True) have a zero response_mask.
    """
    if world < 1 or mini < 1 or epochs < 1:
        raise ValueError(f"update_shards needs world, mini and epochs >= 1 (got {world}, {mini}, {epochs})")
    n = len(batch)
    if n == 0:
        raise ValueError("update_shards: empty batch")
    gen = torch.Generator().manual_seed(int(seed))
    rows: list[list[torch.Tensor]] = [[] for _ in range(world)]
    pads: list[list[bool]] = [[] for _ in range(world)]
    sizes: list[int] = []
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen) if shuffle else torch.arange(n)
        for start in range(0, n, mini):
            idx = order[start : start + mini]
            k = -(-len(idx) // world)  # rows per rank in this mini-batch
            extra = k * world - len(idx)
            full = torch.cat([idx, idx[torch.arange(extra) % len(idx)]])
            flags = [False] * len(idx) + [True] * extra
            for r in range(world):
                rows[r].append(full[r * k : (r + 1) * k])
                pads[r] += flags[r * k : (r + 1) * k]
            sizes.append(k)
    out = []
    for r in range(world):
        part = batch.select(torch.cat(rows[r]))
        part[PAD_COLUMN] = pads[r]
        if any(pads[r]) and "response_mask" in part.tensors:
            keep = torch.tensor([not p for p in pads[r]], dtype=part["response_mask"].dtype)
            part["response_mask"] = part["response_mask"] * keep.view(-1, *([1] * (part["response_mask"].dim() - 1)))
        part.meta["mini_batch_sizes"] = list(sizes)
        out.append(part)
    return out


def loss_units(mask: torch.Tensor, loss_agg_mode: str) -> float:
    """What ``agg_loss(.., mask, loss_agg_mode)`` averages over in these rows: response tokens
    (``token-mean``) or non-empty sequences (every ``seq-mean-*`` mode).

    >>> import torch
    >>> from rlkit.training.rank_worker import loss_units
    >>> m = torch.tensor([[1., 1., 0.], [0., 0., 0.], [1., 0., 0.]])
    >>> loss_units(m, "token-mean"), loss_units(m, "seq-mean-token-mean"), loss_units(m, "seq-mean-token-sum-norm")
    (3.0, 2.0, 2.0)
    """
    if loss_agg_mode == "token-mean":
        return float(mask.sum())
    if loss_agg_mode in ("seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"):
        return float((mask.sum(-1) > 0).sum())
    raise ValueError(f"unknown loss_agg_mode {loss_agg_mode!r}")


def _env_int(name: str, given: int | None, default: int | None = None) -> int:
    if given is not None:
        return int(given)
    v = os.environ.get(name)
    if v is None:
        if default is None:
            raise RuntimeError(f"{name} is not set: a rank worker needs RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT "
                               "(WorkerGroup sets them; torchrun too)")
        return default
    return int(v)


# ---------------------------------------------------------------------------------------------- worker
class RankWorker:
    """One rank of a training group; see the module docstring.

    Args:
        cfg: a validated :class:`rlkit.PPOConfig`; ``trainer.nnodes * trainer.n_gpus_per_node`` must be
            the world size.
        total_training_steps: updates the lr schedules span.
        rank, world_size, local_rank, master_addr, master_port: default to the environment variables.
        timeout_s: collective timeout (default ``RLKIT_DIST_TIMEOUT_S`` or 600).
    """

    def __init__(self, cfg, total_training_steps: int = 1, *, rank: int | None = None,
                 world_size: int | None = None, local_rank: int | None = None, master_addr: str | None = None,
                 master_port: int | None = None, timeout_s: float | None = None, progress: bool = False):
        import torch.distributed as dist

        from rlkit.addresses import bare_host, tcp_init_method  # pure stdlib

        self.cfg = cfg
        self.progress = progress
        # the critic's output is a view (squeeze); FSDP2 warns about in-place ops on it, and rlkit does none
        warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
        self.rank = _env_int("RANK", rank)
        self.world_size = _env_int("WORLD_SIZE", world_size)
        self.local_rank = _env_int("LOCAL_RANK", local_rank, default=0)
        addr = master_addr if master_addr is not None else os.environ.get("MASTER_ADDR")
        port = _env_int("MASTER_PORT", master_port)
        if not addr:
            raise RuntimeError("MASTER_ADDR is not set (the rank 0 node's address)")
        self.node = socket.gethostname()
        self.timeout_s = float(timeout_s or os.environ.get("RLKIT_DIST_TIMEOUT_S") or DEFAULT_TIMEOUT_S)
        self.snapshots: list[dict] = []
        self.total_training_steps = total_training_steps

        # device: under Ray a GPU actor sees only its own GPU (CUDA_VISIBLE_DEVICES), elsewhere LOCAL_RANK's
        want_gpu = str(cfg.trainer.get("device", "cuda") or "cuda") != "cpu" and torch.cuda.is_available()
        if want_gpu:
            index = 0 if torch.cuda.device_count() == 1 else self.local_rank
            self.device = torch.device("cuda", index)
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device("cpu")
        on_gpu = self.device.type == "cuda"
        self.backend = "nccl" if on_gpu else "gloo"
        if not dist.is_initialized():
            dist.init_process_group(self.backend, init_method=tcp_init_method(bare_host(addr), port), rank=self.rank,
                                    world_size=self.world_size, timeout=datetime.timedelta(seconds=self.timeout_s))
        elif (dist.get_world_size(), dist.get_backend()) != (self.world_size, self.backend):
            raise RuntimeError(f"this process already has a torch.distributed process group of {dist.get_world_size()} "
                               f"rank(s) ({dist.get_backend()}); this rank needs {self.world_size} ({self.backend}). Shut "
                               "down the other Experiment (exp.shutdown()) or run this one on Ray")
        _PROCESS_GROUP_USERS[0] += 1  # local ranks of several experiments in one process share it
        self._joined = True
        # FSDP's MixedPrecisionPolicy computes in bf16 on GPU; no autocast on top
        self.param_dtype = torch.bfloat16 if on_gpu else None

        self.plan = ParallelPlan.from_config(cfg)
        if self.plan.world_size != self.world_size:
            raise ValueError(f"trainer.nnodes * trainer.n_gpus_per_node = {self.plan.world_size} but the group has "
                             f"{self.world_size} ranks")
        problems = self.plan.problems()
        if problems:
            raise ValueError("the config's parallel layout is broken: " + "; ".join(problems))

        # this rank's random streams, both seeded with data.seed + rank: sampling in generate (a generator
        # of its own), and torch's global CPU/GPU state, which is the rank's only inside its calls
        # (:meth:`_rank_rng`): a rank running in a notebook's process leaves the notebook's state alone
        self._rng = torch.Generator().manual_seed(int(cfg.data.get("seed", 1) or 1) + self.rank)
        self._torch_rng: dict | None = None
        with self._rank_rng():
            self._load(cfg)

    def _load(self, cfg) -> None:
        arr = cfg.actor_rollout_ref
        self.model_dir = models.resolve_model_path(arr.model.path, arr.model.get("gguf_file"))
        self.tokenizer = models.model_tokenizer(arr.model, self.model_dir)
        self.eos_ids = worker_lib.eos_token_ids(self.tokenizer, self.model_dir)
        self.engine_group = None  # the rank's part of its TP group's engine (rollout.name=sglang)
        self.gen_model = None  # the hf engine's unsharded generation copy
        self.compiled: dict[str, bool] = {}  # role -> its layers (and log-prob math) run compiled
        if arr.rollout.name != "hf":
            self._start_engine(cfg)
        self._memory("load_models", "start")
        self._load_models(cfg)
        self.load_time = time.time()
        self._memory("load_models", "end")

    # ------------------------------------------------------------------ loading
    def _mesh(self, role: str):
        shape = self.plan.role(role).fsdp_mesh or (1, self.world_size)
        fsdp_size = -1 if shape[0] == 1 else shape[1]
        return fsdp.device_mesh(self.world_size, fsdp_size, self.device.type)

    def _shard(self, model, role: str, fsdp_cfg):
        off = _param_offload(fsdp_cfg)
        model = model.to("cpu" if off else self.device)  # CPUOffloadPolicy wants the shards on the CPU
        model = fsdp.shard_model(model, self._mesh(role), param_dtype=self.param_dtype, reduce_dtype=torch.float32,
                                 offload=off, reshard_after_forward=bool(fsdp_cfg.get("reshard_after_forward", True)))
        self.compiled[role] = self.device.type == "cuda" and _compiles(self.cfg, role)
        if self.compiled[role]:
            fsdp.compile_layers(model)
        return model

    def _start_engine(self, cfg) -> None:
        """Start this rank's part of its TP group's engine, then put it to sleep (collective over the group)."""
        from rlkit.training.engine_group import EngineGroup  # lazy: only engines that run beside the shards

        name = cfg.actor_rollout_ref.rollout.name
        engine_cls = get_rollout_class(name)
        if not hasattr(engine_cls, "load_rank_payloads"):
            raise NotImplementedError(f"rollout.name={name!r} cannot run inside rank workers: its engine has no rank-group "
                                      "interface (rlkit.rollout.base.RankGroupEngine)")
        gpus = _ray_gpu_ids() if self.device.type == "cuda" else []
        self._memory("engine_start", "start")
        self.engine_group = EngineGroup(cfg, self.plan, self.rank, self.model_dir, engine_cls,
                                        gpu_id=gpus[0] if gpus else None, timeout_s=self.timeout_s)
        self.engine_group.sleep()
        self._memory("engine_start", "end")

    def _load_models(self, cfg) -> None:
        """The roles (:func:`rlkit.training.worker.load_role_models`), each model sharded as it
        loads; for the ``hf`` engine the actor first leaves its unsharded generation copy."""
        arr = cfg.actor_rollout_ref
        fsdp_cfgs = {"actor": arr.actor.fsdp_config, "ref": arr.ref.fsdp_config, "critic": cfg.critic.model.fsdp_config}

        def place(role: str, model):
            if role == "actor" and self.engine_group is None:  # the hf engine's copy (see the module docstring)
                self.gen_model = copy.deepcopy(model).to(self.device).eval().requires_grad_(False)
            return self._shard(model, role, fsdp_cfgs[role])

        self.actor, self.ref, self.critic = worker_lib.load_role_models(cfg, self.model_dir, None, place=place)
        self.actor_optim = build_optimizer(self.actor.parameters(), arr.actor.optim)
        self.actor_offload_optim = _optimizer_offload(arr.actor.fsdp_config)
        if self.critic is not None:
            self.critic_optim = build_optimizer(self.critic.parameters(), cfg.critic.optim)
            self.critic_offload_optim = _optimizer_offload(cfg.critic.model.fsdp_config)
        self.set_total_training_steps(self.total_training_steps)

    def set_total_training_steps(self, total: int) -> None:
        """(Re)build the lr schedules for ``total`` updates; only before the first update."""
        self.total_training_steps = total
        self.actor_sched = build_scheduler(self.actor_optim, self.cfg.actor_rollout_ref.actor.optim, total)
        if self.critic is not None:
            self.critic_sched = build_scheduler(self.critic_optim, self.cfg.critic.optim, total)

    # ------------------------------------------------------------------ identity and memory
    def describe(self) -> dict:
        """Where this rank runs and what it holds (the group's error messages name these)."""
        gpus = _ray_gpu_ids()
        return {"rank": self.rank, "world_size": self.world_size, "local_rank": self.local_rank, "node": self.node,
                "pid": os.getpid(), "device": str(self.device), "gpu_ids": gpus, "backend": self.backend,
                "device_name": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu",
                "has_ref": self.ref is not None, "has_critic": self.critic is not None, "model_dir": self.model_dir,
                "load_time": self.load_time}

    def _memory(self, phase: str | None, event: str | None, step: int | None = None) -> dict:
        snap = memory_lib.snapshot(rank=self.rank, step=step, phase=phase, event=event).to_dict()
        self.snapshots.append(snap)
        return snap

    def memory_snapshot(self, step: int | None, phase: str, event: str) -> dict:
        """Record this rank's memory now (kept until :meth:`take_snapshots`) and return it."""
        if phase == "step" and event == "start" and self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        return self._memory(phase, event, step)

    def take_snapshots(self) -> list[dict]:
        out, self.snapshots = self.snapshots, []
        return out

    def run(self, method: str, *args, **kwargs) -> tuple[Any, dict]:
        """``getattr(self, method)(*args, **kwargs)`` under this rank's random state, and this rank's
        memory right after: the group keeps the latest reading of every rank for the message it raises
        if the rank dies."""
        with self._rank_rng():
            out = getattr(self, method)(*args, **kwargs)
        return out, memory_lib.snapshot(rank=self.rank, phase=method, event="end").to_dict()

    @contextlib.contextmanager
    def _rank_rng(self):
        """torch's global random state (CPU, and this rank's GPU) is the rank's inside, the process's
        again after: checkpoints save and restore the rank's (:meth:`_rng_state`)."""
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            if self._torch_rng is None:
                torch.manual_seed(int(self.cfg.data.get("seed", 1) or 1) + self.rank)
            else:
                torch.set_rng_state(self._torch_rng["cpu"])
                for d, state in zip(devices, self._torch_rng["cuda"]):
                    torch.cuda.set_rng_state(state, d)
            try:
                yield
            finally:
                self._torch_rng = {"cpu": torch.get_rng_state(),
                                   "cuda": [torch.cuda.get_rng_state(d) for d in devices]}

    # ------------------------------------------------------------------ generation
    def generate_tokens(self, prompt_ids: list[list[int]], validate: bool = False) -> dict[str, list]:
        """This rank's prompts -> n responses each (prompt-major) as token lists: ``prompts`` (repeated
        n times), ``responses``, ``log_probs``, ``finish_reasons``. A rank may have no prompts.

        SGLang: only the TP group's leader takes prompts (its engine runs on the whole group), after
        :meth:`wake_rollout`. ``hf``: collective (the weight gather into the generation copy), then
        local: ranks may generate different lengths."""
        sampling = worker_lib.sampling_params(self.cfg, self.eos_ids, validate)
        if self.engine_group is not None:
            if prompt_ids and not self.engine_group.awake:
                raise RuntimeError("the rollout engine is asleep: call wake_rollout() before generate")
            with self._own_rng():
                out = self.engine_group.generate(prompt_ids, sampling)
        else:
            self.gen_model.load_state_dict(fsdp.full_state_dict(self.actor))
            if not prompt_ids:
                return {"prompts": [], "responses": [], "log_probs": [], "finish_reasons": []}
            engine = get_rollout_class("hf")(self.gen_model, self.tokenizer.pad_token_id, self.eos_ids,
                                             max_batch_size=self.cfg.actor_rollout_ref.rollout.get("max_num_seqs") or None)
            engine.progress = self.progress
            with self._own_rng():
                out = engine.generate(prompt_ids, sampling)
        return {"prompts": [list(p) for p in prompt_ids for _ in range(sampling.n)], "responses": out.response_ids,
                "log_probs": out.log_probs, "finish_reasons": out.finish_reasons}

    def generate(self, prompt_ids: list[list[int]], validate: bool = False) -> RolloutBatch:
        """:meth:`generate_tokens` as a RolloutBatch with a ``finish_reason`` column (what
        Experiment.step() takes). Needs at least one prompt."""
        out = self.generate_tokens(prompt_ids, validate)
        return RolloutBatch.from_generation(out["prompts"], out["responses"], out["log_probs"],
                                            self.tokenizer.pad_token_id, columns={"finish_reason": out["finish_reasons"]})

    def wake_rollout(self) -> None:
        """Give the GPU to the engine: resume weights -> push the actor's -> resume the KV cache.
        Collective. (``hf``: nothing to do; its copy takes the weights at every generate.)"""
        if self.engine_group is not None:
            self.engine_group.wake_up(self.actor)

    def sleep_rollout(self) -> None:
        """Give the GPU back to training (frees KV cache and weights when rollout.free_cache_engine)."""
        if self.engine_group is not None:
            self.engine_group.sleep()

    def sync_rollout_weights(self) -> None:
        """Push the actor's weights into an awake engine; a sleeping one gets them at its next wake-up.
        Collective."""
        if self.engine_group is not None and self.engine_group.awake:
            self.engine_group.push_weights(self.actor)

    @contextlib.contextmanager
    def _own_rng(self):
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=self._rng)))
            yield

    # ------------------------------------------------------------------ forward passes
    def _micro_batches(self, batch: RolloutBatch, role: str) -> list[torch.Tensor]:
        """Row indices of each micro-batch of ``batch`` for ``role``: the plan's fixed size, or with
        ``use_dynamic_bsz`` groups of at most the role's token budget (real tokens), balanced by
        length (:func:`rlkit.datasets.packing.token_budget_groups`). Every rank gets as many micro-batches
        as the rank that needs the most (a sharded forward is a collective)."""
        sizes = self.plan.role(role)
        n = len(batch)
        if not sizes.dynamic:
            micro = max(1, int(sizes.micro_batch_per_rank or n))
            return [torch.arange(s, min(s + micro, n)) for s in range(0, n, micro)]
        lengths = batch["attention_mask"].sum(1).tolist()
        budget = int(sizes.max_token_len_per_rank)
        count = 1
        while True:  # every rank runs the same rounds: each ends with one all-reduce of (most, -fewest)
            groups = token_budget_groups(lengths, budget, min_groups=count)
            most, neg_fewest = self._all_reduce(torch.tensor([len(groups), -len(groups)], dtype=torch.float64), "max")
            if int(most) == -int(neg_fewest):
                return [torch.tensor(g, dtype=torch.long) for g in groups]
            if int(most) > n:
                raise RuntimeError(f"rank {self.rank} has {n} rows but another rank needs {int(most)} micro-batches "
                                   f"for {role}; give every rank the same rows (WorkerGroup does)")
            count = int(most)

    @torch.no_grad()
    def compute_log_prob(self, batch: RolloutBatch) -> dict[str, torch.Tensor]:
        """old_log_probs (B, R) and entropys (B, R) of this rank's rows under the current actor."""
        return self._log_probs(self.actor, "rollout", batch, with_entropy=True)

    @torch.no_grad()
    def compute_ref_log_prob(self, batch: RolloutBatch) -> torch.Tensor:
        if self.ref is None:
            raise RuntimeError("no reference model: it is loaded only with actor.use_kl_loss or algorithm.use_kl_in_reward")
        return self._log_probs(self.ref, "ref", batch, with_entropy=False)["log_probs"]

    def _forward_rows(self, batch: RolloutBatch, role: str, desc: str,
                      fn: Callable[[RolloutBatch], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """``fn`` over the micro-batches of ``batch`` (host rows; ``fn`` moves them); its (rows, ...) outputs in
        row order, on the host. The outputs come back once at the end, so the micro-batches queue up on the
        device without the host waiting for each."""
        groups = self._micro_batches(batch, role)
        parts: dict[str, list[torch.Tensor]] = {}
        for idx in self._progress(groups, desc):
            with record_function("rlkit/forward"):
                out = fn(batch.select(idx))  # moved by fn: a packed layout is worked out on the host first
            for k, v in out.items():
                parts.setdefault(k, []).append(v)
        order = torch.cat(groups)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(len(order))
        return {k: torch.cat(v).cpu()[inverse] for k, v in parts.items()}

    def _log_probs(self, model, role: str, batch: RolloutBatch, with_entropy: bool) -> dict[str, torch.Tensor]:
        was_training = model.training
        model.eval()
        packed = worker_lib.remove_padding(self.cfg, role)
        temperature = self.cfg.actor_rollout_ref.rollout.temperature
        compiled = self.compiled.get("ref" if role == "ref" else "actor", False)  # "rollout" sizes the actor's

        def fn(mb):
            lp, ent = worker_lib.response_log_probs(model, mb, temperature, with_entropy, packed, compiled, self.device)
            return {"log_probs": lp, "entropys": ent} if with_entropy else {"log_probs": lp}

        try:
            return self._forward_rows(batch, role, "ref log-probs" if role == "ref" else "old log-probs", fn)
        finally:
            model.train(was_training)

    @torch.no_grad()
    def compute_values(self, batch: RolloutBatch) -> torch.Tensor:
        """values (B, R) of this rank's rows: V(s_t) at the state before each response token."""
        self.critic.eval()
        packed = worker_lib.remove_padding(self.cfg, "values")
        try:
            return self._forward_rows(batch, "values", "values",
                                      lambda mb: {"values": worker_lib.response_values(self.critic, mb, packed,
                                                                                       self.device)})["values"]
        finally:
            self.critic.train()

    def _progress(self, items: list, desc: str):
        """``items`` with a progress bar on rank 0 when the group was built with progress=True."""
        bar = worker_lib.progress_bar(len(items), desc, self.progress and self.rank == 0)
        try:
            for item in items:
                yield item
                bar.update(1)
        finally:
            bar.close()

    # ------------------------------------------------------------------ updates
    def _all_reduce(self, t: torch.Tensor, op: str = "sum") -> torch.Tensor:
        import torch.distributed as dist

        if self.world_size == 1:
            return t.clone()
        t = t.to(self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
        return t.cpu()

    def _train(self, role: str, model, optim, sched, batch: RolloutBatch, step: int, shuffle: bool,
               grad_clip: float, agg: str, offload_optim: bool,
               micro_loss: Callable[[RolloutBatch], tuple[torch.Tensor, dict]]) -> dict[str, float]:
        """The epoch / mini-batch / micro-batch loop of both roles, on this rank's update shard.
        ``micro_loss`` takes a micro-batch on the host and returns its loss and metrics (0-d tensors or
        floats); the metrics are summed on the device and read once per mini-batch."""
        sizes = self.plan.role(role)
        if "mini_batch_sizes" not in batch.meta:  # called directly with the whole batch: lay it out for one rank
            if self.world_size != 1:
                raise ValueError(f"update_{role} on {self.world_size} ranks needs update_shards() output "
                                 "(WorkerGroup.update_* lays the batch out)")
            batch = update_shards(batch, 1, int(sizes.mini_batch_per_rank or len(batch)), int(sizes.epochs or 1),
                                  shuffle, step)[0]
        stats: dict[str, list[float]] = {}
        model.train()
        start = 0
        bar = worker_lib.progress_bar(len(batch.meta["mini_batch_sizes"]), f"update {role}",
                                      self.progress and self.rank == 0)
        for k in batch.meta["mini_batch_sizes"]:
            mini = batch.select(range(start, start + k))
            micros = [mini.select(idx) for idx in self._micro_batches(mini, role)]
            start += k
            units = [loss_units(mb["response_mask"], agg) for mb in micros]
            total_units = float(self._all_reduce(torch.tensor([sum(units)], dtype=torch.float64))[0])
            optim.zero_grad(set_to_none=True)
            keys = acc_dev = acc_host = None
            for mb, u in zip(micros, units):
                with record_function("rlkit/update/forward+loss"):
                    loss, row = micro_loss(mb)
                w = u / max(total_units, 1.0)  # this micro-batch's share of the mini-batch's units
                with record_function("rlkit/update/backward"):
                    (loss * (w * self.world_size)).backward()  # FSDP divides the gradient by the world size
                if keys is None:  # tensor metrics are summed on the device (read once per mini-batch), floats here
                    on_dev = sorted(k for k in row if torch.is_tensor(row[k]))
                    keys, n_dev = on_dev + sorted(k for k in row if k not in on_dev), len(on_dev)
                    acc_dev = torch.zeros(n_dev, dtype=torch.float64, device=self.device)
                    acc_host = torch.zeros(len(keys) - n_dev, dtype=torch.float64)
                if n_dev:
                    acc_dev += torch.stack([row[k].to(self.device, torch.float64) for k in keys[:n_dev]]) * w
                acc_host += torch.tensor([float(row[k]) for k in keys[n_dev:]], dtype=torch.float64) * w
            bar.update(1)
            acc = self._all_reduce(torch.cat([acc_dev.cpu(), acc_host]))  # the global mini-batch's, on every rank
            _append(stats, dict(zip(keys, acc.tolist())))
            with record_function("rlkit/update/optimizer"):
                if offload_optim:
                    fsdp.load_optimizer(optim, self.device)
                grad_norm = fsdp.clip_grad_norm(model.parameters(), grad_clip)
                stepped = bool(torch.isfinite(torch.tensor(grad_norm)))
                if stepped:
                    optim.step()
                else:  # as verl: a non-finite gradient skips the update (on every rank: the norm is global)
                    optim.zero_grad(set_to_none=True)
                    grad_norm = float("nan")
                sums, optim_steps = adamw_step_norms(optim, stepped)  # before the offload: the moments are here
                if offload_optim:
                    fsdp.offload_optimizer(optim)
            update_sq, param_sq = self._all_reduce(sums.cpu()).tolist()
            _append(stats, {f"{role}/grad_norm": grad_norm, f"{role}/update_norm": update_sq ** 0.5,
                            f"{role}/param_norm": param_sq ** 0.5})
        bar.close()
        lr = optim.param_groups[0]["lr"]  # the rate this update used (verl's actor/lr), before the schedule moves
        sched.step()
        out = {k: sum(v) / len(v) for k, v in stats.items()}
        out[f"{role}/lr"] = lr
        out[f"{role}/optimizer_steps"] = optim_steps  # AdamW's count so far: the moments carried over
        return out

    def update_critic(self, batch: RolloutBatch, step: int) -> dict[str, float]:
        """Clipped value loss towards ``returns`` on this rank's update shard; metrics of the global batch."""
        c = self.cfg.critic
        agg = worker_lib.critic_loss_agg_mode(self.cfg)

        packed = worker_lib.remove_padding(self.cfg, "critic")

        def micro_loss(mb):  # mb on the host (see _train)
            vpreds = worker_lib.response_values(self.critic, mb, packed, self.device)
            return worker_lib.critic_micro_loss(self.cfg, vpreds, mb)  # moves the columns it reads

        return self._train("critic", self.critic, self.critic_optim, self.critic_sched, batch, step,
                           bool(c.get("shuffle", False)), float(c.grad_clip), agg, self.critic_offload_optim, micro_loss)

    def update_actor(self, batch: RolloutBatch, step: int) -> dict[str, float]:
        """PPO clipped policy loss (+ entropy bonus, + KL loss) on this rank's update shard."""
        a = self.cfg.actor_rollout_ref.actor
        agg = a.loss_agg_mode

        packed = worker_lib.remove_padding(self.cfg, "actor")
        entropy = worker_lib.update_entropy(self.cfg)
        temperature = self.cfg.actor_rollout_ref.rollout.temperature

        def micro_loss(mb):
            lp, ent = worker_lib.response_log_probs(self.actor, mb, temperature, entropy, packed,
                                                    self.compiled["actor"], self.device)
            return worker_lib.actor_micro_loss(self.cfg, lp, ent, mb)  # moves the columns it reads

        return self._train("actor", self.actor, self.actor_optim, self.actor_sched, batch, step, bool(a.shuffle),
                           float(a.grad_clip), agg, self.actor_offload_optim, micro_loss)

    # ------------------------------------------------------------------ state
    def full_state_dict(self, rank0_only: bool = True) -> dict[str, dict[str, torch.Tensor]]:
        """``{"actor": ..., "critic": ...}`` unsharded on the CPU (rank 0 only by default). Collective."""
        out = {"actor": fsdp.full_state_dict(self.actor, rank0_only)}
        if self.critic is not None:
            out["critic"] = fsdp.full_state_dict(self.critic, rank0_only)
        return out

    def _roles(self) -> list[tuple[str, Any, Any, Any, bool, Any]]:
        """(name, model, optimizer, schedule, optimizer offloaded, optim config) of each trained role."""
        out = [("actor", self.actor, self.actor_optim, self.actor_sched, self.actor_offload_optim,
                self.cfg.actor_rollout_ref.actor.optim)]
        if self.critic is not None:
            out.append(("critic", self.critic, self.critic_optim, self.critic_sched, self.critic_offload_optim,
                        self.cfg.critic.optim))
        return out

    def _rng_state(self) -> dict:
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        return {"generator": self._rng.get_state(), "cpu": torch.get_rng_state(),
                "cuda": [torch.cuda.get_rng_state(d) for d in devices]}

    def save_checkpoint(self, directory: str, contents: list[str]) -> str:
        """Write this rank's part of a sharded checkpoint into ``directory`` (the checkpoint's
        temporary folder, the same path on every rank); ``contents``: ``model``, ``optimizer``.
        Collective (DCP). Returns the rank file written."""
        import torch.distributed as dist

        root = os.path.abspath(directory)
        with_optim = "optimizer" in contents
        scheds, fresh = {}, []
        for role, model, optim, sched, offloaded, _ in self._roles():
            if with_optim and not optim.state:  # DCP creates the state with a zero-lr step; undone below
                fresh.append(role)
            if "model" in contents or with_optim:
                if offloaded and with_optim:
                    fsdp.load_optimizer(optim, self.device)
                try:
                    fsdp.save_sharded(model, optim if with_optim else None, os.path.join(root, role, "dcp"))
                finally:
                    if offloaded and with_optim:
                        fsdp.offload_optimizer(optim)
                    if role in fresh:
                        optim.state.clear()  # a save before the first update leaves AdamW as it was (step 0)
            if with_optim:
                scheds[role] = sched.state_dict()
        os.makedirs(os.path.join(root, "ranks"), exist_ok=True)
        path = os.path.join(root, "ranks", f"rank_{self.rank}.pt")
        torch.save({"rank": self.rank, "world_size": self.world_size, "rng": self._rng_state(), "sched": scheds,
                    "fresh_optimizer": fresh}, path)
        dist.barrier()  # every rank's files are complete before the controller lists and renames them
        return path

    def load_checkpoint(self, directory: str, roles: list[str], with_optimizer: bool) -> None:
        """Load :meth:`save_checkpoint` output saved by as many ranks as this group has. A role saved
        without its optimizer starts a fresh AdamW; the learning rates are this config's. Collective."""
        root = os.path.abspath(directory)
        rank_file = torch.load(os.path.join(root, "ranks", f"rank_{self.rank}.pt"), map_location="cpu",
                               weights_only=False)
        if rank_file["world_size"] != self.world_size:
            raise ValueError(f"{root} was saved by {rank_file['world_size']} ranks; this group has {self.world_size}")

        def load(role, model, optim):
            fsdp.load_sharded(model, optim if with_optimizer else None, os.path.join(root, role, "dcp"))
            if role in rank_file.get("fresh_optimizer", []):
                optim.state.clear()  # saved before its first update: no moments, step 0
            return rank_file["sched"][role] if with_optimizer else None

        self._load_roles(roles, with_optimizer, load, f"checkpoint {root}")
        self._rng.set_state(rank_file["rng"]["generator"])
        self._set_torch_rng(rank_file["rng"])

    def load_full_state(self, state: dict) -> None:
        """Load one process's state (the single-process checkpoint layout:
        ``{"actor": {"model": state_dict, "optimizer": {"optim", "sched"} or None}, "critic": ..., "rng": ...}``)
        into this rank's shards (:func:`rlkit.training.fsdp.load_full`); every rank gets the same state.
        Weights, AdamW moments and lr schedules carry over exactly; the saved CPU/CUDA random state
        becomes the rank's (the sampling generator keeps its seed). Collective."""
        def load(role, model, optim):
            saved = state[role].get("optimizer")
            fsdp.load_full(model, state[role]["model"], optim if saved else None, saved["optim"] if saved else None)
            return saved["sched"] if saved else None

        self._load_roles([r for r in ("actor", "critic") if r in state], True, load, "the single-process checkpoint")
        if state.get("rng") is not None:
            self._set_torch_rng(state["rng"])

    def _set_torch_rng(self, rng: dict) -> None:
        """torch's global CPU and CUDA generators from a saved ``{"cpu", "cuda": [...]}`` (inside a call:
        :meth:`_rank_rng` keeps them as the rank's)."""
        torch.set_rng_state(rng["cpu"])
        if self.device.type == "cuda" and rng.get("cuda"):
            torch.cuda.set_rng_state(rng["cuda"][0], self.device)

    def _load_roles(self, roles: list[str], with_optimizer: bool, load: Callable, source: str) -> None:
        """For each trained role: refuse a role the checkpoint lacks, bring an offloaded AdamW state back,
        ``load(role, model, optim)`` -> the saved lr schedule or None, offload again, set this config's lr."""
        for role, model, optim, sched, offloaded, optim_cfg in self._roles():
            if role not in roles:
                raise ValueError(f"{source} has no {role} but this config trains one (algorithm.adv_estimator=gae)")
            if offloaded and with_optimizer:
                fsdp.load_optimizer(optim, self.device)
            saved_sched = load(role, model, optim)
            if offloaded:
                fsdp.offload_optimizer(optim)
            if saved_sched is not None:
                sched.load_state_dict(saved_sched)
            worker_lib.set_base_lr(optim, sched, float(optim_cfg.lr))

    def reset_after_interrupt(self) -> None:
        self.actor_optim.zero_grad(set_to_none=True)
        if self.critic is not None:
            self.critic_optim.zero_grad(set_to_none=True)
        self.actor.train()

    def ping(self) -> int:
        return self.rank

    def get_tokenizer(self):
        return self.tokenizer

    def shutdown(self) -> None:
        """Leave the process group (the process itself is ended by its owner)."""
        import torch.distributed as dist

        self.gen_model = None
        group, self.engine_group = self.engine_group, None
        if group is not None:
            group.shutdown()
        if getattr(self, "_joined", False):
            self._joined = False
            _PROCESS_GROUP_USERS[0] -= 1
            if _PROCESS_GROUP_USERS[0] == 0 and dist.is_initialized():
                try:
                    dist.destroy_process_group()
                except Exception:
                    pass


# rank workers of this process on its default process group: local groups of several experiments in
# one notebook share it, and the last one to shut down destroys it
_PROCESS_GROUP_USERS = [0]


def _compiles(cfg, role: str) -> bool:
    """Whether ``role``'s decoder layers are compiled (on GPU): ``actor.use_torch_compile`` for the actor
    and the critic, ``ref.use_torch_compile`` (which follows the actor's) for the reference."""
    arr = cfg.actor_rollout_ref
    return bool((arr.ref if role == "ref" else arr.actor).get("use_torch_compile", True))


def _param_offload(fsdp_cfg) -> bool:
    """``param_offload`` (verl's ``offload_policy`` too): FSDP2's CPUOffloadPolicy keeps the shards on the CPU."""
    return bool(fsdp_cfg.get("param_offload", False) or fsdp_cfg.get("offload_policy", False))


def _optimizer_offload(fsdp_cfg) -> bool:
    """Whether AdamW's state moves to the CPU between updates and back for the step. With
    ``param_offload`` the shards and their gradients are on the CPU, so the step runs there and
    the state never leaves the CPU: nothing to move (moving it to the GPU would put AdamW's state on
    another device than its parameters).

    >>> from rlkit.training.rank_worker import _optimizer_offload
    >>> _optimizer_offload({"optimizer_offload": True}), _optimizer_offload({"optimizer_offload": True, "param_offload": True})
    (True, False)
    """
    return bool(fsdp_cfg.get("optimizer_offload", False)) and not _param_offload(fsdp_cfg)


def _ray_gpu_ids() -> list[str]:
    """This process's GPU ids as Ray assigned them (physical ids), or [] outside Ray."""
    try:
        import ray

        return [str(g) for g in ray.get_gpu_ids()] if ray.is_initialized() else []
    except Exception:
        return []


def _append(stats: dict[str, list[float]], row: dict[str, float]) -> None:
    for k, v in row.items():
        stats.setdefault(k, []).append(float(v))
