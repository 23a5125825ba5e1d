"""`WorkerGroup`: ``trainer.nnodes x trainer.n_gpus_per_node`` rank workers on Ray, driven as one.

Layout: one Ray placement group per node, ``STRICT_PACK``, of ``n_gpus_per_node`` bundles
(``{"GPU": 1, "CPU": 1}``, or ``{"CPU": 1}`` on a CPU-only run); global rank = node * gpus_per_node +
local rank, as :meth:`rlkit.parallel.ParallelPlan.rank_info` numbers them. Each bundle holds one
:class:`~rlkit.training.rank_worker.RankWorker` actor with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT`` in its environment; the address is rank 0's node (as Ray sees
it) and a port free there, and every ``host:port`` is built by :mod:`rlkit.addresses`
(IPv6 bracketed). The ranks then meet in ``init_process_group`` (NCCL on GPU, gloo on CPU).

Dispatch modes (:mod:`rlkit.distributed.dispatch`): :meth:`~WorkerGroup.call_all`,
:meth:`~WorkerGroup.call_rank0`, :meth:`~WorkerGroup.split_gather`, and the phase methods
``generate``, ``compute_log_prob``, ``compute_ref_log_prob``, ``compute_values``,
``update_actor``, ``update_critic``.

Checkpoints: :meth:`~WorkerGroup.checkpoint_writer` returns a writer with which every rank writes its own
shards (``torch.distributed.checkpoint``) into the checkpoint's temporary folder, and
:meth:`~WorkerGroup.load_state_dict` has every rank read its own; layout in :mod:`rlkit.checkpoint`.
The checkpoint folder must be reachable under the same path from every rank (a shared filesystem
when the group spans nodes), and loads only into a group of the same size.

Failures never hang the notebook:

* too few resources: refused before anything starts, listing what the cluster has; a placement
  group not ready within ``ready_timeout_s`` (nodes busy, fragmented) is removed and reported;
* a rank whose process dies (out of memory, a crash, a ``kill``) raises
  :class:`WorkerDiedError` naming its node, rank, local rank and
  GPU, with its last memory reading (every call returns one; the group keeps the latest per rank).
  The other ranks, stuck in a collective with the dead one, are given ``grace_s`` to fail on their
  own (gloo/NCCL notice the closed connection, or time out after ``timeout_s``) and then ended;
* an exception inside a rank is raised as a RuntimeError naming the rank and carrying its traceback.

After a failure the group is broken (the ranks' collectives are out of step): call
:meth:`~WorkerGroup.shutdown` and build a new group. ``shutdown`` ends every actor and removes the
placement groups, so a new group can start in the same process.

A group of one rank can also run in this process (``WorkerGroup(cfg, local=True)``: no Ray, the
same RankWorker and dispatch, a world-size-1 process group here); an exception in the rank breaks
the group as above. SGLang never starts in this process (it kills its launcher when it fails), so a
local group takes ``rollout.name=hf`` only.

A group dropped without ``shutdown`` (a notebook cell run again: ``exp = Experiment(...)``) releases
what it holds when it is garbage-collected: its actors end, its placement groups are removed (Ray
keeps those until then, so the next group would find no free bundles), a local rank leaves the
process group and stops its engine.
"""
from __future__ import annotations

import time
import weakref
from typing import Any, Sequence

from rlkit.datasets.batch import RolloutBatch
from rlkit.distributed import dispatch
from rlkit.addresses import format_host_port
from rlkit.distributed.cluster import _import_ray, check_nodes, connect
from rlkit.parallel import ParallelPlan

__all__ = ["WorkerGroup", "WorkerDiedError", "describe_snapshot"]


class WorkerDiedError(RuntimeError):
    """A rank's process died (out of memory, a crash, a kill; SGLang kills its launcher when the engine
    fails). The message names node, rank, local rank and GPU with the rank's last memory reading."""

GiB = 1024**3


def describe_snapshot(snap: dict | None) -> str:
    """One line from a MemorySnapshot dict: when, host RSS, each GPU's use and torch's counters.

    >>> from rlkit.distributed.group import describe_snapshot
    >>> describe_snapshot({"time": 0, "phase": "update_actor", "event": "end", "host_rss": 2 * 1024**3, "gpus": []})
    'after update_actor: host RSS 2.00 GiB; no GPU readings'
    """
    if not snap:
        return "no memory reading yet"
    when = f"{'after' if snap.get('event') == 'end' else 'at'} {snap.get('phase') or 'start'}"
    parts = [f"host RSS {snap.get('host_rss', 0) / GiB:.2f} GiB"]
    for g in snap.get("gpus") or []:
        line = f"GPU {g['index']}: used {g['used'] / GiB:.2f} of {g['total'] / GiB:.2f} GiB"
        if g.get("torch_allocated") is not None:
            line += (f" (torch allocated {g['torch_allocated'] / GiB:.2f}, peak "
                     f"{(g.get('torch_peak_allocated') or 0) / GiB:.2f} GiB)")
        parts.append(line)
    if not snap.get("gpus"):
        parts.append("no GPU readings")
    return f"{when}: " + "; ".join(parts)


def _node_address() -> tuple[str, int]:
    """Run inside bundle 0: this node's address (as Ray knows it) and a TCP port free on it."""
    import ray

    from rlkit.addresses import free_port

    ip = ray.util.get_node_ip_address()
    return ip, free_port(ip)


class WorkerGroup:
    """N :class:`~rlkit.training.rank_worker.RankWorker` actors; see the module docstring.

    Args:
        cfg: validated config; ``trainer.nnodes``, ``trainer.n_gpus_per_node`` give the size, and
            ``trainer.device`` (``cpu``, or a cluster without GPUs) makes CPU bundles and gloo.
        total_training_steps: passed to every rank (lr schedules).
        timeout_s: collective timeout inside the ranks (a stuck collective raises after this long).
        ready_timeout_s: how long the placement groups may take to be placed.
        grace_s: after one rank fails, how long the others get to finish or fail before they are ended.
    """

    def __init__(self, cfg, total_training_steps: int = 1, *, timeout_s: float = 600, ready_timeout_s: float = 60,
                 grace_s: float = 30, progress: bool = False, local: bool = False):
        from rlkit.training.rank_worker import RankWorker

        self.cfg = cfg
        self.nnodes = int(cfg.trainer.nnodes)
        self.gpus_per_node = int(cfg.trainer.n_gpus_per_node)
        self.world_size = self.nnodes * self.gpus_per_node
        self.plan = ParallelPlan.from_config(cfg)  # TP groups: who generates
        self.grace_s = float(grace_s)
        self.actors: list = []
        self.placement_groups: list = []
        self.broken: str | None = None
        self.local = None  # the in-process rank of a local group
        self._ray = None
        # what the group holds, ended once: by shutdown(), or when a group dropped without it is collected (a
        # notebook cell run again, `exp = Experiment(...)`): Ray ends actors with their handles, but a placement
        # group keeps its bundles until it is removed, and a local rank keeps the process group and its engine
        self._held = {"ray": None, "local": None, "actors": self.actors, "placement_groups": self.placement_groups}
        self._release = weakref.finalize(self, _release, self._held)
        if local:
            self._start_local(RankWorker, total_training_steps, timeout_s, progress)
            return
        ray = _import_ray()
        self._ray = self._held["ray"] = ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        connect(cfg)  # trainer.ray_address, RAY_ADDRESS, or a local cluster
        resources = ray.cluster_resources()
        self.use_gpu = str(cfg.trainer.get("device", "cuda") or "cuda") != "cpu" and resources.get("GPU", 0) > 0
        check_nodes(self.nnodes, self.gpus_per_node, self.use_gpu)  # before Ray waits forever for bundles
        bundle = {"GPU": 1, "CPU": 1} if self.use_gpu else {"CPU": 1}
        try:
            self.placement_groups.extend(placement_group([dict(bundle)] * self.gpus_per_node, strategy="STRICT_PACK")
                                         for _ in range(self.nnodes))
            try:
                ray.get([pg.ready() for pg in self.placement_groups], timeout=ready_timeout_s)
            except ray.exceptions.GetTimeoutError:
                raise RuntimeError(
                    f"the Ray cluster could not place {self.nnodes} x {self.gpus_per_node} bundles of {bundle} (one "
                    f"node each, STRICT_PACK) within {ready_timeout_s:g} s; the cluster has "
                    f"{_shown(ray.cluster_resources())}, free now {_shown(ray.available_resources())}. Other work may "
                    "hold the resources, or no single node has n_gpus_per_node free GPUs") from None

            def strategy(rank: int):
                return PlacementGroupSchedulingStrategy(self.placement_groups[rank // self.gpus_per_node],
                                                        placement_group_bundle_index=rank % self.gpus_per_node)

            self.master_addr, self.master_port = ray.get(
                ray.remote(num_cpus=0)(_node_address).options(scheduling_strategy=strategy(0)).remote(),
                timeout=ready_timeout_s)
            self.master = format_host_port(self.master_addr, self.master_port)  # for messages
            remote_cls = ray.remote(RankWorker)
            for rank in range(self.world_size):
                env = {"RANK": str(rank), "WORLD_SIZE": str(self.world_size),
                       "LOCAL_RANK": str(rank % self.gpus_per_node), "MASTER_ADDR": self.master_addr,
                       "MASTER_PORT": str(self.master_port), "RLKIT_DIST_TIMEOUT_S": str(timeout_s)}
                self.actors.append(remote_cls.options(
                    num_cpus=bundle["CPU"], num_gpus=bundle.get("GPU", 0), scheduling_strategy=strategy(rank),
                    runtime_env={"env_vars": env}, max_restarts=0).remote(
                        cfg, total_training_steps, progress=progress and rank == 0))
            self.ranks: list[dict] = [{"rank": r, "node": "?", "device": "?"} for r in range(self.world_size)]
            self.last_snapshot: list[dict | None] = [None] * self.world_size
            self._describe_ranks(timeout_s + 600)
        except BaseException:
            self.shutdown()
            raise

    def _start_local(self, rank_cls, total_training_steps: int, timeout_s: float, progress: bool) -> None:
        """One rank in this process (see the module docstring)."""
        from rlkit.addresses import free_port

        if self.world_size != 1:
            raise ValueError(f"a local worker group has one rank, and trainer.nnodes * trainer.n_gpus_per_node = "
                             f"{self.world_size}; several ranks run on Ray (local=False)")
        if self.cfg.actor_rollout_ref.rollout.name != "hf":
            raise ValueError(f"rollout.name={self.cfg.actor_rollout_ref.rollout.name!r} never starts in this process "
                             "(SGLang kills the process that launches a failing engine); use local=False (Ray)")
        self.use_gpu = str(self.cfg.trainer.get("device", "cuda") or "cuda") != "cpu"
        self.master_addr, self.master_port = "127.0.0.1", free_port("127.0.0.1")
        self.master = format_host_port(self.master_addr, self.master_port)
        self.local = rank_cls(self.cfg, total_training_steps, rank=0, world_size=1, local_rank=0,
                              master_addr=self.master_addr, master_port=self.master_port, timeout_s=timeout_s,
                              progress=progress)
        self._held["local"] = self.local
        self.ranks = [{"rank": 0, "node": "local", "device": "?"}]
        self.last_snapshot = [None]
        self._describe_ranks()

    def _describe_ranks(self, timeout: float | None = None) -> None:
        """Wait for every rank to start; keep where each runs and what rank 0 holds."""
        self.ranks = self.call_all("describe", _what="starting the ranks (process group, model load)", _timeout=timeout)
        info = self.ranks[0]
        self.has_ref, self.has_critic = info["has_ref"], info["has_critic"]
        self.model_dir, self.device, self.load_time = info["model_dir"], info["device"], info["load_time"]
        self.device_name = info["device_name"]  # the card (torch.cuda.get_device_name), or "cpu"
        self.tokenizer = self.call_rank0("get_tokenizer")

    # ------------------------------------------------------------------ dispatch
    def _submit(self, per_rank_args: Sequence[tuple], method: str, kwargs: dict) -> list:
        if self.local is not None:  # runs now; the answer (or the exception) waits for _collect
            (args,) = per_rank_args
            try:
                return [(True, self.local.run(method, *args, **kwargs))]
            except Exception as e:  # KeyboardInterrupt goes straight to the notebook
                return [(False, e)]
        return [a.run.remote(method, *args, **kwargs) for a, args in zip(self.actors, per_rank_args)]

    def _collect(self, refs: list, method: str, what: str | None, timeout: float | None) -> list:
        """Every rank's answer, in rank order; a failure raises (see the module docstring)."""
        if self.local is not None:
            ((ok, value),) = refs
            if ok:
                result, self.last_snapshot[0] = value
                return [result]
            self._break({}, {0: value}, [], method, what)
        ray = self._ray
        index = {r: i for i, r in enumerate(refs)}
        results: list[Any] = [None] * len(refs)
        dead: dict[int, Exception] = {}
        failed: dict[int, Exception] = {}
        pending = list(refs)
        deadline = None if timeout is None else time.monotonic() + timeout
        grace = None  # set when the first rank fails: the others get grace_s to finish or fail
        while pending:
            limits = [d for d in (deadline, grace) if d is not None]
            wait = None if not limits else max(0.0, min(limits) - time.monotonic())
            ready, pending = ray.wait(pending, num_returns=1, timeout=wait)
            if not ready:
                break  # out of time with ranks still running
            for ref in ready:
                i = index[ref]
                try:
                    results[i], self.last_snapshot[i] = ray.get(ref)
                except ray.exceptions.RayActorError as e:
                    # __init__ raising is an error in that rank, not a dead process
                    (failed if "creation task" in str(e) else dead)[i] = e
                except ray.exceptions.RayTaskError as e:
                    failed[i] = e
            if (dead or failed) and grace is None:
                grace = time.monotonic() + self.grace_s
        stuck = [index[r] for r in pending]
        if not (dead or failed or stuck):
            return results
        self._break(dead, failed, stuck, method, what)

    def _break(self, dead: dict, failed: dict, stuck: list, method: str, what: str | None) -> None:
        doing = what or f"{method!r} ran"
        if dead:
            lines = [f"rank {i} ({self._where(i)}) died while {doing}. Its last memory reading, "
                     f"{describe_snapshot(self.last_snapshot[i])}." for i in sorted(dead)]
            cause = str(next(iter(dead.values())))
            msg = (" ".join(lines) + (f" Ranks {stuck} were still waiting and were ended." if stuck else "") +
                   f" The whole group is shut down; build a new one. (Out of memory? Check the node's log and "
                   f"lower the micro-batch sizes or enable fsdp_config.param_offload.) Ray said: {cause[-1500:]}")
            self.broken = msg
            self.shutdown()
            raise WorkerDiedError(msg) from next(iter(dead.values()))
        if failed:
            i = min(failed)
            e = failed[i]
            msg = (f"rank {i} ({self._where(i)}) raised while {doing}" +
                   (f"; ranks {sorted(set(failed) - {i})} failed too" if len(failed) > 1 else "") +
                   (f"; ranks {stuck} were still waiting (in a collective with the failed rank) and were ended" if stuck
                    else "") + f". The group is shut down; build a new one.\n{e}")
            self.broken = msg
            self.shutdown()
            raise RuntimeError(msg) from e
        msg = (f"ranks {stuck} did not answer in time while {doing}; last memory readings: " +
               "; ".join(f"rank {i} {describe_snapshot(self.last_snapshot[i])}" for i in stuck) +
               ". The group is shut down; build a new one.")
        self.broken = msg
        self.shutdown()
        raise TimeoutError(msg)

    def _where(self, i: int) -> str:
        r = self.ranks[i] if i < len(self.ranks) else {}
        gpu = f"GPU {','.join(r['gpu_ids'])}" if r.get("gpu_ids") else r.get("device", "?")
        return f"node {r.get('node', '?')}, local rank {r.get('local_rank', i % self.gpus_per_node)}, {gpu}"

    def _check(self) -> None:
        if self.broken:
            raise RuntimeError(f"this worker group failed earlier and was shut down: {self.broken[:300]}")
        if not self.actors and self.local is None:
            raise RuntimeError("this worker group was shut down; build a new WorkerGroup")

    def call_all(self, method: str, *args, _what: str | None = None, _timeout: float | None = None,
                 **kwargs) -> list:
        """``method(*args, **kwargs)`` on every rank; the answers in rank order."""
        self._check()
        return self._collect(self._submit([args] * self.world_size, method, kwargs), method, _what, _timeout)

    def call_rank0(self, method: str, *args, **kwargs) -> Any:
        """``method`` on every rank (they are collectives), rank 0's answer."""
        return self.call_all(method, *args, **kwargs)[0]

    def call_each(self, method: str, per_rank_args: Sequence[tuple], **kwargs) -> list:
        """``method(*per_rank_args[r], **kwargs)`` on rank r; the answers in rank order."""
        self._check()
        if len(per_rank_args) != self.world_size:
            raise ValueError(f"call_each: {len(per_rank_args)} argument tuples for {self.world_size} ranks")
        return self._collect(self._submit(per_rank_args, method, kwargs), method, None, None)

    def split_gather(self, method: str, batch: RolloutBatch, *args, **kwargs) -> Any:
        """Pad ``batch`` to a multiple of the data-parallel size, give rank r the r-th equal part,
        concatenate the answers in rank order and drop the padding."""
        parts, pad = dispatch.split_batch(batch, self.world_size)
        return dispatch.gather(self.call_each(method, [(part, *args) for part in self._put(parts)], **kwargs), pad)

    def _put(self, parts: list) -> list:
        """Per-rank arguments as the ranks receive them: each once into Ray's object store (a local rank
        takes them as they are)."""
        return parts if self._ray is None else [self._ray.put(p) for p in parts]

    # ------------------------------------------------------------------ the phases Experiment.step() calls
    def generate(self, prompt_ids: list[list[int]], validate: bool = False) -> RolloutBatch:
        """Each engine (TP group) samples a contiguous run of the prompts; one RolloutBatch, prompt-major."""
        per_rank = dispatch.split_to_leaders(prompt_ids, self.plan.tp_groups)
        outs = self.call_each("generate_tokens", [(p, validate) for p in per_rank])
        cat = {k: [x for o in outs for x in o[k]] for k in outs[0]}
        return RolloutBatch.from_generation(cat["prompts"], cat["responses"], cat["log_probs"],
                                            self.tokenizer.pad_token_id, columns={"finish_reason": cat["finish_reasons"]})

    def compute_log_prob(self, batch: RolloutBatch) -> dict:
        return self.split_gather("compute_log_prob", batch)

    def compute_ref_log_prob(self, batch: RolloutBatch):
        return self.split_gather("compute_ref_log_prob", batch)

    def compute_values(self, batch: RolloutBatch):
        return self.split_gather("compute_values", batch)

    def _update(self, role: str, batch: RolloutBatch, step: int) -> dict:
        from rlkit.training.rank_worker import update_shards

        sec = self.cfg.critic if role == "critic" else self.cfg.actor_rollout_ref.actor
        a = self.cfg.actor_rollout_ref.actor
        n = int(self.cfg.actor_rollout_ref.rollout.n)
        mini = int(sec.get("ppo_mini_batch_size") or a.ppo_mini_batch_size) * n  # verl counts prompts
        epochs = int(sec.get("ppo_epochs") or a.ppo_epochs)
        shuffle = bool(sec.get("shuffle", False))
        shards = update_shards(batch, self.world_size, mini, epochs, shuffle, step)
        refs = self._put(shards)
        return self.call_each(f"update_{role}", [(ref, step) for ref in refs])[0]  # every rank returns the same

    def update_actor(self, batch: RolloutBatch, step: int) -> dict:
        """PPO update over the whole group; the metrics of the global mini-batches (identical on all ranks)."""
        return self._update("actor", batch, step)

    def update_critic(self, batch: RolloutBatch, step: int) -> dict:
        return self._update("critic", batch, step)

    def set_total_training_steps(self, total: int) -> None:
        self.call_all("set_total_training_steps", total)

    def reset_after_interrupt(self) -> None:
        self.call_all("reset_after_interrupt")

    # collectives on every rank (the weight push unshards the actor); no-ops for hf, whose generation
    # copy takes the actor's weights at every generate
    def wake_rollout(self) -> None:
        self.call_all("wake_rollout", _what="waking the rollout engines (weight push)")

    def sleep_rollout(self) -> None:
        self.call_all("sleep_rollout")

    def sync_rollout_weights(self) -> None:
        self.call_all("sync_rollout_weights", _what="pushing weights into the rollout engines")

    def checkpoint_writer(self):
        """The group's checkpoint writer, for :func:`rlkit.checkpoint.write`'s ``write_worker``: called
        with the checkpoint's temporary folder, every rank writes its own DCP shards of model and
        optimizer and its random state and lr schedules there (:meth:`RankWorker.save_checkpoint`);
        returns the marker's ``{"layout": "sharded", "world_size": N}``. The folder must be the same
        path on every rank: on several nodes, a shared filesystem."""
        self._check()

        def write_shards(tmp_dir, contents: list[str]) -> dict:
            self.call_all("save_checkpoint", str(tmp_dir), list(contents),
                          _what=f"writing checkpoint shards into {tmp_dir}")
            return {"layout": "sharded", "world_size": self.world_size}

        return write_shards

    def load_state_dict(self, state) -> None:
        """Load a checkpoint's worker state (``Checkpoint.load_worker_state``): a sharded one
        (:class:`rlkit.checkpoint.ShardedState`) saved by as many ranks as this group has, each rank
        reading its own shards; or one process's state dicts (the single-process layout of rlkit
        before the worker group), which every rank cuts its shards from. A sharded checkpoint of
        another world size is refused with a CheckpointError naming both sizes (resharding is not
        supported yet); the group is shut down first, so its placement groups do not outlive the
        resume that failed."""
        from rlkit.checkpoint import CheckpointError, ShardedState

        if not isinstance(state, ShardedState):
            self._check()
            self.call_all("load_full_state", self._put([state])[0], _what="loading a single-process checkpoint")
            return
        if state.world_size != self.world_size:
            self.shutdown()
            raise CheckpointError(
                f"this checkpoint was saved by {state.world_size} rank{'s' if state.world_size != 1 else ''} (sharded "
                f"layout) and this group has "
                f"{self.world_size} ranks: saved world size {state.world_size}, this group's {self.world_size}. "
                "Loading a checkpoint into another number of ranks (resharding N -> M) is not supported yet")
        self._check()
        self.call_all("load_checkpoint", str(state.path), list(state.roles), bool(state.with_optimizer),
                      _what=f"loading checkpoint shards from {state.path}")

    def memory_snapshot(self, step, phase: str, event: str) -> None:
        """Fire and forget on every rank (each runs it between the calls around it)."""
        if self.local is not None:
            self.local.memory_snapshot(step, phase, event)
        for a in self.actors:
            a.memory_snapshot.remote(step, phase, event)

    def take_snapshots(self) -> list[dict]:
        """Every rank's snapshots recorded since the last call (rank field set)."""
        return [s for rank_snaps in self.call_all("take_snapshots") for s in rank_snaps]

    # ------------------------------------------------------------------ teardown
    def shutdown(self) -> None:
        """End every rank's process and remove the placement groups (idempotent). A local rank leaves
        its process group and frees its models."""
        local, self.local = self.local, None
        if self.actors and not self.broken:
            try:  # leave the process group cleanly where possible
                self._ray.get([a.shutdown.remote() for a in self.actors], timeout=30)
            except Exception:
                pass
        self._release()  # once; afterwards the group holds nothing
        if local is not None:
            import gc

            del local
            gc.collect()

    def __repr__(self) -> str:
        state = "broken" if self.broken else ("shut down" if not (self.actors or self.local) else "running")
        where = "in this process, " if self._ray is None else ""
        return (f"WorkerGroup({self.nnodes} node(s) x {self.gpus_per_node} = {self.world_size} ranks, {where}"
                f"{'GPU' if self.use_gpu else 'CPU'}, {state})")


def _release(held: dict) -> None:
    """End what a group holds (``WorkerGroup._held``): its local rank leaves the process group (and stops its
    engine), its actors are killed and its placement groups removed. A group's finalizer: it runs once."""
    local, held["local"] = held["local"], None
    if local is not None:
        local.shutdown()
    ray = held["ray"]
    for a in held["actors"]:
        try:
            ray.kill(a, no_restart=True)
        except Exception:
            pass
    held["actors"].clear()
    if held["placement_groups"]:
        from ray.util.placement_group import remove_placement_group

        for pg in held["placement_groups"]:
            try:
                remove_placement_group(pg)
            except Exception:
                pass
        held["placement_groups"].clear()


def _shown(resources: dict) -> str:
    return ", ".join(f"{k}={v:g}" for k, v in sorted(resources.items())
                     if k in ("CPU", "GPU", "memory") or k.startswith("accelerator_type")) or "nothing"
