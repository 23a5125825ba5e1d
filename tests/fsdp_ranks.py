"""Rank functions for tests that spawn gloo process groups (a plain module: spawn pickles by name)."""
from __future__ import annotations

import datetime
import os

import torch


def init(rank: int, world: int, port: int) -> None:
    import torch.distributed as dist

    from rlkit.addresses import tcp_init_method

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=tcp_init_method("127.0.0.1", port), rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=120))


def finish() -> None:
    import torch.distributed as dist

    dist.barrier()  # no rank tears gloo down while another still talks to it
    dist.destroy_process_group()


def token_losses(model, ids: torch.Tensor) -> torch.Tensor:
    """(B, T-1) next-token NLL; the test's stand-in for a PPO loss."""
    logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()
    return torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")


def fsdp_step(rank: int, world: int, port: int, model_dir: str, ids: torch.Tensor, mask: torch.Tensor,
              max_norm: float, out_dir: str) -> None:
    """Shard the model (without and with CPU offload), take one AdamW step on this rank's rows with
    the loss normalised by the global token count, and save what the test compares."""
    from transformers import AutoModelForCausalLM

    from rlkit.training import fsdp

    init(rank, world, port)
    mesh = fsdp.device_mesh(world, -1, "cpu")
    results = {}
    for offload in (False, True):
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        fsdp.shard_model(model, mesh, param_dtype=None, reduce_dtype=torch.float32, offload=offload)
        before = fsdp.full_state_dict(model)
        optim = torch.optim.AdamW(model.parameters(), lr=1e-2)
        rows = ids.chunk(world)[rank], mask.chunk(world)[rank]
        global_tokens = mask.sum()
        loss = (token_losses(model, rows[0]) * rows[1]).sum() / global_tokens * world  # FSDP averages over ranks
        loss.backward()
        norm = fsdp.clip_grad_norm(model.parameters(), max_norm)
        optim.step()
        fsdp.offload_optimizer(optim)
        where = fsdp.optimizer_state_device(optim)
        fsdp.load_optimizer(optim, "cpu")
        results[offload] = {"before": before, "after": fsdp.full_state_dict(model), "norm": norm, "optim": where,
                            "rank0_only": list(fsdp.full_state_dict(model, rank0_only=True))}
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finish()


def fsdp_load_full_step(rank: int, world: int, port: int, model_dir: str, ids: torch.Tensor, mask: torch.Tensor,
                        state: dict, out_dir: str) -> None:
    """Load one process's model and AdamW state (``state``: ``{"model", "optim"}``) into the shards with
    ``fsdp.load_full``, take one AdamW step on this rank's rows, save the full weights and the step count."""
    from transformers import AutoModelForCausalLM

    from rlkit.training import fsdp

    init(rank, world, port)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    fsdp.shard_model(model, fsdp.device_mesh(world, -1, "cpu"), param_dtype=None, reduce_dtype=torch.float32)
    optim = torch.optim.AdamW(model.parameters(), lr=1e-2)
    fsdp.load_full(model, state["model"], optim, state["optim"])
    loaded = fsdp.full_state_dict(model)
    rows = ids.chunk(world)[rank], mask.chunk(world)[rank]
    ((token_losses(model, rows[0]) * rows[1]).sum() / mask.sum() * world).backward()
    optim.step()
    steps = sorted({float(s["step"]) for s in optim.state.values()})
    torch.save({"loaded": loaded, "after": fsdp.full_state_dict(model), "steps": steps},
               os.path.join(out_dir, f"rank{rank}.pt"))
    finish()


class RecordingEngine:
    """A CPU stand-in for :class:`rlkit.rollout.sglang.SGLangRollout` in a rank group: the same
    classmethods and methods, recording what the group asks of it. ``serialize_bucket`` copies the
    values (SGLang's are IPC handles to them), so the leader sees every TP rank's tensors."""

    def __init__(self, kwargs: dict):
        self.kwargs = kwargs
        self.visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        self.events: list[str] = []
        self.loaded: dict[str, torch.Tensor] = {}
        self.buckets: list[tuple[int, int]] = []  # (tensors, bytes) per load
        self.rank_copies_equal = True
        self.awake = True

    @classmethod
    def from_config(cls, cfg, model_dir: str, **overrides) -> "RecordingEngine":
        return cls(dict(overrides, model_dir=model_dir))

    @classmethod
    def tp_memory_mode(cls, cfg) -> str:
        return str(cfg.actor_rollout_ref.rollout.get("tp_memory_check", "error"))

    @classmethod
    def serialize_bucket(cls, bucket):
        return [(name, t.clone()) for name, t in bucket]

    def load_rank_payloads(self, payloads) -> None:
        assert self.awake, "weights pushed into a sleeping engine"
        self.events.append("load")
        for rows in zip(*payloads):
            names = {name for name, _ in rows}
            assert len(names) == 1, names
            first = rows[0][1]
            self.rank_copies_equal &= all(torch.equal(first, t) for _, t in rows)
            self.loaded[rows[0][0]] = first
        self.buckets.append((len(payloads[0]), sum(t.numel() * t.element_size() for _, t in payloads[0])))

    def flush_cache(self) -> None:
        self.events.append("flush_cache")

    def resume_weights(self) -> None:
        self.events.append("resume_weights")
        self.awake = True

    def resume_kv_cache(self) -> None:
        self.events.append("resume_kv_cache")

    def sleep(self) -> None:
        self.events.append("sleep")
        self.awake = False

    def generate(self, prompt_ids, sampling):
        from rlkit.rollout.base import GenerationOutput

        self.events.append(f"generate:{len(prompt_ids)}")
        k = len(prompt_ids) * sampling.n
        return GenerationOutput([[1, 2]] * k, [[0.0, 0.0]] * k, ["stop"] * k)

    def shutdown(self) -> None:
        self.events.append("shutdown")


def engine_group_run(rank: int, world: int, port: int, model_dir: str, nnodes: int, tp: int, offload: bool,
                     bucket_bytes: int, out_dir: str) -> None:
    """Shard the tiny model over every rank, build an :class:`EngineGroup` with :class:`RecordingEngine`,
    push the weights, sleep, wake up (push again), generate; save what each rank saw."""
    from omegaconf import OmegaConf
    from transformers import AutoModelForCausalLM

    from rlkit.parallel import ParallelPlan
    from rlkit.rollout.base import SamplingParams
    from rlkit.training import fsdp
    from rlkit.training.engine_group import EngineGroup

    init(rank, world, port)
    cfg = OmegaConf.create({"actor_rollout_ref": {"rollout": {"dtype": "float32", "tp_memory_check": "error",
                                                              "update_weights_bucket_megabytes": 1}}})
    plan = ParallelPlan.build(nnodes=nnodes, gpus_per_node=world // nnodes, tp=tp, train_batch_size=world * 2)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    fsdp.shard_model(model, fsdp.device_mesh(world, -1, "cpu"), param_dtype=None, reduce_dtype=torch.float32,
                     offload=offload)
    group = EngineGroup(cfg, plan, rank, model_dir, RecordingEngine, gpu_id=str(10 + rank), timeout_s=60,
                        bucket_bytes=bucket_bytes)
    n_first = group.push_weights(model)
    group.sleep()
    group.wake_up(model)
    refused = None
    if group.is_leader:
        out = group.generate([[5, 6], [7]], SamplingParams(max_new_tokens=2))
        n_out = len(out.response_ids)
    else:
        n_out = len(group.generate([], SamplingParams(max_new_tokens=2)).response_ids)
        try:
            group.generate([[5]], SamplingParams(max_new_tokens=2))
        except ValueError as e:
            refused = str(e)
    engine = group.engine
    group.shutdown()
    result = {"leader": group.leader, "is_leader": group.is_leader, "n_buckets": n_first, "n_out": n_out,
              "refused": refused, "launched": engine is not None}
    if engine is not None:
        result.update(kwargs=engine.kwargs, visible=engine.visible, events=engine.events,
                      loaded=engine.loaded if group.is_leader else None, buckets=engine.buckets,
                      rank_copies_equal=engine.rank_copies_equal)
    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finish()


def engine_preflight_run(rank: int, world: int, port: int, free_gib: list[float], mode: str, out_dir: str) -> None:
    """An :class:`EngineGroup` of ``world`` ranks (one TP group) whose GPU readings say ``free_gib[rank]``
    GiB free of 80: the pre-flight's verdict on every rank (the error text, the warning, whether an
    engine part launched, the readings it kept)."""
    import warnings

    from omegaconf import OmegaConf

    from rlkit.diagnostics import memory as memory_lib
    from rlkit.parallel import ParallelPlan
    from rlkit.training import engine_group

    GiB = 2**30

    def fake_snapshot(rank=0, step=None, phase=None, event=None, devices=None):
        free = int(free_gib[dist_rank] * GiB)
        gpu = memory_lib.GPUMemory(index=0, name="NVIDIA H100 80GB HBM3", uuid=f"GPU-{dist_rank}", total=80 * GiB,
                                   used=80 * GiB - free, free=free)
        return memory_lib.MemorySnapshot(time=0.0, node="n0", rank=rank, pid=os.getpid(), host_rss=0, gpus=[gpu],
                                         source="nvml", notes=[], step=step, phase=phase, event=event)

    dist_rank = rank
    init(rank, world, port)
    engine_group.memory_lib.snapshot = fake_snapshot
    cfg = OmegaConf.create({"actor_rollout_ref": {"rollout": {"dtype": "float32", "tp_memory_check": mode,
                                                              "gpu_memory_utilization": 0.9,
                                                              "tensor_model_parallel_size": world}}})
    plan = ParallelPlan.build(nnodes=1, gpus_per_node=world, tp=world, train_batch_size=world * 2)
    result = {"error": None, "warnings": [], "launched": False}
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            group = engine_group.EngineGroup(cfg, plan, rank, "unused", RecordingEngine, gpu_id=str(rank), timeout_s=60)
        result["warnings"] = [f"{type(w.message).__name__}: {w.message}" for w in caught]
        result["launched"] = group.engine is not None
        result["readings"] = [round(s["gpus"][0]["free"] / GiB, 2) for s in group.preflight_snapshots]
        group.shutdown()
    except Exception as e:
        result["error"] = f"{type(e).__name__}: {e}"
    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finish()


def rank_worker_engine_run(rank: int, world: int, port: int, cfg, out_dir: str) -> None:
    """A :class:`RankWorker` with ``rollout.name=sglang`` served by :class:`RecordingEngine`: wake (push),
    generate, change the actor, sync while awake, sleep, sync while asleep (nothing), wake (push)."""
    from rlkit.rollout import base
    from rlkit.training import fsdp
    from rlkit.training.rank_worker import RankWorker

    base.ROLLOUT_ENGINES["sglang"] = f"{__name__}:RecordingEngine"  # the CPU stand-in for SGLang
    torch.set_num_threads(1)
    w = RankWorker(cfg, 2, rank=rank, world_size=world, master_addr="127.0.0.1", master_port=port, timeout_s=60)
    group = w.engine_group
    engine = group.engine
    result = {"is_leader": group.is_leader, "events": [], "loaded": []}

    def full():
        return {name: t.clone() for name, t in fsdp.full_tensors(w.actor.named_parameters())}

    def seen():  # what the leader's engine holds now
        return {k: v.clone() for k, v in engine.loaded.items()} if group.is_leader else None

    try:
        w.generate_tokens([[5, 6]] if group.is_leader else [])
    except RuntimeError as e:
        result["asleep_refusal"] = str(e)
    w.wake_rollout()
    result["loaded"].append((full(), seen()))
    result["generated"] = w.generate_tokens([[5, 6, 7], [8, 9]] if group.is_leader else [])
    with torch.no_grad():
        for p in w.actor.parameters():
            p.to_local().add_(0.25)
    w.sync_rollout_weights()  # awake: pushed now
    result["loaded"].append((full(), seen()))
    w.sleep_rollout()
    with torch.no_grad():
        for p in w.actor.parameters():
            p.to_local().mul_(2.0)
    w.sync_rollout_weights()  # asleep: nothing moves
    result["loaded"].append((full(), seen()))
    w.wake_rollout()
    result["loaded"].append((full(), seen()))
    result["snapshots"] = [(s["phase"], s["event"]) for s in w.take_snapshots()]
    result["gen_model"] = w.gen_model is not None
    w.shutdown()
    if engine is not None:
        result["events"] = engine.events
    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))


def packed_rows(lengths: list[list[int]], vocab: int, seed: int = 0):
    """One packed row per entry of ``lengths``: (input_ids (1, N), position_ids (1, N), cu_seqlens, max length)."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for lens in lengths:
        ids = torch.randint(5, vocab, (1, sum(lens)), generator=g)
        pos = torch.cat([torch.arange(n) for n in lens])[None]
        cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32)
        rows.append((ids, pos, cu, max(lens)))
    return rows


def compiled_step(rank: int, world: int, port: int, model_dir: str, lengths: list[list[int]], backend: str,
                  out_dir: str) -> None:
    """Shard a packed-attention model, eager and with :func:`rlkit.training.fsdp.compile_layers`; run each
    packed row of ``lengths`` forward and backward (the rows' lengths differ), then one AdamW step; save
    logits, gradients, weights and how many graphs were compiled."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    from fsdp_ranks import packed_rows
    from rlkit.training import fsdp, models
    from rlkit.training.packed_attention import packed_forward_kwargs

    init(rank, world, port)
    mesh = fsdp.device_mesh(world, -1, "cpu")
    results = {}
    for compiled in (False, True):
        torch._dynamo.reset()
        counters.clear()
        model = models.load_causal_lm(model_dir, torch.float32, packed=True)
        fsdp.shard_model(model, mesh)
        n_compiled = fsdp.compile_layers(model, backend=backend) if compiled else 0
        if compiled:
            assert fsdp.compile_layers(model, backend=backend) == n_compiled  # a second call does not re-wrap
        optim = torch.optim.AdamW(model.parameters(), lr=1e-2)
        logits = []
        for ids, pos, cu, longest in packed_rows(lengths, 90, seed=rank):
            out = model(input_ids=ids, position_ids=pos, use_cache=False, **packed_forward_kwargs(cu, longest)).logits
            (out.float().log_softmax(-1)[0, :-1].gather(-1, ids[0, 1:, None]).sum() / 100).backward()
            logits.append(out.detach())
        grads = {k: p.grad.full_tensor().clone() for k, p in model.named_parameters()}
        optim.step()
        results[compiled] = {"logits": logits, "grads": grads, "after": fsdp.full_state_dict(model),
                             "n_compiled": n_compiled, "graphs": int(counters["stats"]["unique_graphs"])}
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finish()


def fsdp_units(rank: int, world: int, port: int, model_dir: str, out_dir: str) -> None:
    """How many FSDP units :func:`rlkit.training.fsdp.shard_model` makes by default, with offload, and asked
    per layer; and whether one forward+backward through the default wrapping equals the per-layer one."""
    from torch.distributed.fsdp import FSDPModule
    from transformers import AutoModelForCausalLM

    from rlkit.training import fsdp

    init(rank, world, port)
    mesh = fsdp.device_mesh(world, -1, "cpu")
    ids = torch.randint(5, 90, (2, 10), generator=torch.Generator().manual_seed(rank))
    out = {}
    for name, kw in (("default", {}), ("offload", {"offload": True}), ("per_layer", {"per_layer": True})):
        model = fsdp.shard_model(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32), mesh, **kw)
        token_losses(model, ids).sum().backward()
        out[name] = {"units": sum(isinstance(m, FSDPModule) for m in model.modules()),
                     "grads": {k: p.grad.full_tensor().clone() for k, p in model.named_parameters()}}
    torch.save(out, os.path.join(out_dir, f"units{rank}.pt"))
    finish()
