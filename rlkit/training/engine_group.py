"""`EngineGroup`: one rank worker's part in a rollout engine that spans its TP group.

verl's hybrid engine: SGLang runs beside the FSDP shards on the same GPUs and sleeps while they
train. :attr:`rlkit.parallel.ParallelPlan.tp_groups` lists the engines, ``tp`` consecutive global
ranks each. Within a group, on the rank workers (one GPU each):

* **Launch.** The group's first rank on every node the group covers launches that node's part of
  the engine (SGLang's ``node_rank``; one part when the group sits inside a node). It points the
  engine processes' ``CUDA_VISIBLE_DEVICES`` at its node's group GPUs in TP order, so engine TP rank
  i runs on the GPU of the group's i-th rank. The group's first rank overall, the *leader*, owns the
  engine's front end: ``generate``, memory release and resume, weight loads.
* **Pre-flight.** Before any engine starts, every rank reads its GPU's memory and every rank applies
  SGLang's TP memory rule (:func:`rlkit.diagnostics.balance.check_before_engine`) to the group's
  readings, so all ranks raise the same report instead of SGLang killing one launcher.
* **Weights** (:meth:`push_weights`, every rank, every group at once): the actor is unsharded one
  parameter at a time (:func:`rlkit.training.fsdp.full_tensors`, a collective over the FSDP mesh, cast
  to the engine's dtype before the gather), cut into buckets of
  ``rollout.update_weights_bucket_megabytes`` (:func:`rlkit.rollout.base.weight_buckets`). Per bucket,
  each rank serializes its copy (CUDA IPC handles: no bytes move), the leader gathers the payloads
  over the group's gloo group and the engine loads TP rank i's values from rank i's GPU; a barrier
  then lets every rank free the bucket. At no point does one GPU hold the whole model twice.

The engine class is the rollout's (:class:`rlkit.rollout.base.RankGroupEngine`); tests use a CPU
stand-in with the same methods.
"""
from __future__ import annotations

import contextlib
import datetime
import os
import socket
from typing import Any

import torch

from rlkit.diagnostics import memory as memory_lib
from rlkit.diagnostics.balance import check_before_engine
from rlkit.rollout.base import GenerationOutput, SamplingParams, weight_buckets
from rlkit.training import fsdp

__all__ = ["EngineGroup", "visible_devices_for"]


def visible_devices_for(peers: list[dict], node: Any) -> str | None:
    """``CUDA_VISIBLE_DEVICES`` for the engine part launched on ``node``: the GPU ids of the group's
    ranks there, in TP order (None when the ranks know no GPU ids, e.g. on CPU).

    >>> from rlkit.training.engine_group import visible_devices_for
    >>> peers = [{"node": 0, "gpu": "6"}, {"node": 0, "gpu": "7"}, {"node": 1, "gpu": "0"}, {"node": 1, "gpu": "1"}]
    >>> visible_devices_for(peers, 0), visible_devices_for(peers, 1)
    ('6,7', '0,1')
    """
    ids = [p.get("gpu") for p in peers if p["node"] == node]
    return ",".join(ids) if ids and all(ids) else None


@contextlib.contextmanager
def _environ(**values: str | None):
    old = {k: os.environ.get(k) for k in values}
    for k, v in values.items():
        if v is not None:
            os.environ[k] = v
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class EngineGroup:
    """This rank's part of its TP group's engine; see the module docstring. Collective to build.

    Args:
        cfg: the run config (``actor_rollout_ref.rollout.*``).
        plan: the run's :class:`~rlkit.parallel.ParallelPlan` (TP groups, nodes).
        rank: this process's global rank (``torch.distributed`` is initialised).
        model_dir: the folder the engine loads.
        engine_cls: the rollout class (:class:`~rlkit.rollout.base.RankGroupEngine`):
            ``engine_cls.from_config(cfg, model_dir, tp_size=, nnodes=, node_rank=, dist_init_addr=,
            preflight=False, tp_memory_check=)`` starts an engine part; ``serialize_bucket`` and
            ``tp_memory_mode(cfg)`` (the effective ``rollout.tp_memory_check``) are classmethods.
        gpu_id: this rank's physical GPU id (Ray's), or None on CPU.
        timeout_s: timeout of the group's gloo collectives.
        bucket_bytes: weight-sync bucket size; default ``rollout.update_weights_bucket_megabytes``.
    """

    def __init__(self, cfg, plan, rank: int, model_dir: str, engine_cls, *, gpu_id: str | None = None,
                 timeout_s: float = 600, bucket_bytes: int | None = None):
        import torch.distributed as dist

        info = plan.rank_info(rank)
        self.rank = rank
        self.tp_ranks: tuple[int, ...] = tuple(info["tp_ranks"])
        self.tp_rank: int = info["tp_rank"]
        self.leader = self.tp_ranks[0]
        self.is_leader = rank == self.leader
        self.engine_cls = engine_cls
        self.engine = None
        self.awake = True  # engines start awake; every rank of the group tracks the same state
        rollout = cfg.actor_rollout_ref.rollout
        self.bucket_bytes = bucket_bytes or int(rollout.get("update_weights_bucket_megabytes", 512)) * 2**20
        dtype = str(rollout.get("dtype", "bfloat16"))
        self.dtype = getattr(torch, dtype) if dtype != "auto" else torch.bfloat16
        timeout = datetime.timedelta(seconds=timeout_s)
        self.group = None
        for ranks in plan.tp_groups:  # torch requires every rank to create every group, in the same order
            g = dist.new_group(list(ranks), backend="gloo", timeout=timeout)
            if rank in ranks:
                self.group = g
        if self.group is None:
            raise ValueError(f"rank {rank} is in none of the plan's TP groups {plan.tp_groups}")

        # where every rank of the group runs, and its GPU memory now (the pre-flight's readings)
        from rlkit.addresses import free_port, format_host_port  # pure stdlib

        host = _host_address()
        me = {"rank": rank, "node": info["node"], "host": host, "gpu": gpu_id,
              "snapshot": memory_lib.snapshot(rank=self.tp_rank, phase="engine_preflight", event="start").to_dict()}
        self.peers: list[dict] = [None] * len(self.tp_ranks)  # type: ignore[list-item]
        dist.all_gather_object(self.peers, me, group=self.group)
        self.preflight_snapshots = [p["snapshot"] for p in self.peers]
        mode = engine_cls.tp_memory_mode(cfg)
        if len(self.tp_ranks) > 1 and all(s["gpus"] for s in self.preflight_snapshots):
            check_before_engine(self.preflight_snapshots, mode, config=cfg)  # the same verdict on every rank

        nodes = list(dict.fromkeys(p["node"] for p in self.peers))  # in TP order
        launchers = {p["node"]: p["rank"] for p in reversed(self.peers)}  # first rank of each node
        self.nnodes = len(nodes)
        addr = [format_host_port(host, free_port(host)) if self.is_leader and self.nnodes > 1 else None]
        dist.broadcast_object_list(addr, src=self.leader, group=self.group)
        self.dist_init_addr = addr[0]
        if launchers[info["node"]] == rank:
            with _environ(CUDA_VISIBLE_DEVICES=visible_devices_for(self.peers, info["node"])):
                self.engine = engine_cls.from_config(cfg, model_dir, tp_size=len(self.tp_ranks), nnodes=self.nnodes,
                                                     node_rank=nodes.index(info["node"]),
                                                     dist_init_addr=self.dist_init_addr, preflight=False,
                                                     tp_memory_check=mode)
        dist.barrier(group=self.group)  # every part is up before anyone talks to the engine

    # ------------------------------------------------------------------ generation and memory
    def generate(self, prompt_ids: list[list[int]], sampling: SamplingParams) -> GenerationOutput:
        """The leader generates; other ranks of the group get no prompts and return nothing."""
        if not self.is_leader:
            if prompt_ids:
                raise ValueError(f"rank {self.rank} is not its TP group's leader (rank {self.leader}); "
                                 "prompts go to the leader")
            return GenerationOutput([], [], [])
        return self.engine.generate(prompt_ids, sampling)

    def sleep(self) -> None:
        """Free the engine's KV cache and weights (leader's call reaches every engine process)."""
        if self.is_leader:
            self.engine.sleep()
        self.awake = False

    def wake_up(self, model) -> None:
        """verl's order: resume weights -> push the actor's weights -> resume the KV cache. Collective.
        An engine that kept its memory (``free_cache_engine=False``) only gets the new weights."""
        resumed = self.is_leader and not self.engine.awake
        if resumed:
            self.engine.resume_weights()
        self.awake = True
        self.push_weights(model)
        if resumed:
            self.engine.resume_kv_cache()

    def push_weights(self, model) -> int:
        """Every parameter of ``model`` (FSDP2 shards or a plain module) into the engine, bucket by
        bucket. Collective over all ranks (the unsharding) and each TP group (the gather). Returns the
        number of buckets."""
        import torch.distributed as dist

        device = "cuda" if torch.cuda.is_available() and _on_gpu(model) else "cpu"
        n = 0
        for bucket in weight_buckets(fsdp.full_tensors(model.named_parameters(), self.dtype), self.bucket_bytes,
                                     self.dtype, device):
            payload = self.engine_cls.serialize_bucket(bucket)
            gathered = [None] * len(self.tp_ranks) if self.is_leader else None
            dist.gather_object(payload, gathered, dst=self.leader, group=self.group)
            if self.is_leader:
                self.engine.load_rank_payloads(gathered)
            dist.barrier(group=self.group)  # the engine has copied the values: the bucket may go
            del bucket, payload, gathered
            n += 1
        if self.is_leader:
            self.engine.flush_cache()
        return n

    def shutdown(self) -> None:
        engine, self.engine = self.engine, None
        if engine is not None:
            engine.shutdown()


def _on_gpu(model) -> bool:
    from torch.distributed.tensor import DTensor

    p = next(model.parameters())
    return (p.device_mesh.device_type if isinstance(p, DTensor) else p.device.type) == "cuda"


def _host_address() -> str:
    """This node's address as Ray knows it (else the hostname's)."""
    try:
        import ray

        if ray.is_initialized():
            return ray.util.get_node_ip_address()
    except Exception:
        pass
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"
