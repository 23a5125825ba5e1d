"""Training-phase benchmark: the four PPO training phases on synthetic rows, no rollout engine.

    python -m rlkit.bench.train --engine all --profile --out data/gpu/train_phases.json

A one-rank worker group (the code ``Experiment`` trains with) holds a random-weight model of a Qwen2.5
shape (actor and critic); a batch of ``--rows`` rows with prompt lengths drawn uniformly from
``[--prompt-min, --prompt-max]`` and responses of ``--response-len`` tokens (GSM8K-like by default)
goes through ``compute_log_prob``, ``compute_values``, ``update_critic`` and ``update_actor``, one
warm-up round and then ``--reps`` timed ones, for each engine asked for: ``padded`` (fixed
micro-batches of padded rows: ``--micro-batch`` for updates, ``--log-prob-micro-batch`` for forward
passes), ``packed`` (``use_remove_padding`` and ``use_dynamic_bsz`` with ``--max-token-len`` /
``--forward-max-token-len``) and ``compiled`` (packed, each decoder layer compiled:
``use_torch_compile``; the warm-up round includes the compilation, timed separately as
``warmup_seconds``), side by side in one process. MFU as in :mod:`rlkit.bench.e2e`.
``--profile`` records each update once more under ``torch.profiler`` and keeps the operators
with the most GPU time, so what holds a phase back is on record.

Writes JSON (card, versions, date, setup, per engine and phase: seconds, TFLOP/s, MFU; profiles).
``--device cpu --shape tiny`` runs on a CPU (the tests do).
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

PHASES = ("old_log_prob", "values", "update_critic", "update_actor")


def synthetic_batch(rows: int, prompt_min: int, prompt_max: int, response_len: int, vocab: int, seed: int = 0):
    """``rows`` rows of random token ids: prompts of uniform length in [prompt_min, prompt_max], full-length
    responses, and the tensors the updates read (old log-probs, advantages, values, returns) filled with
    small random numbers (the speed does not depend on them)."""
    import torch

    from rlkit.datasets import RolloutBatch

    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(prompt_min, prompt_max + 1, (rows,), generator=g).tolist()
    prompts = [torch.randint(10, vocab, (n,), generator=g).tolist() for n in lengths]
    responses = [torch.randint(10, vocab, (response_len,), generator=g).tolist() for _ in range(rows)]
    b = RolloutBatch.from_generation(prompts, responses, None, pad_id=0,
                                     columns={"uid": [str(i) for i in range(rows)]})
    B, R = b["responses"].shape
    b["old_log_probs"] = -12.0 + 0.1 * torch.randn(B, R, generator=g)
    b["advantages"] = torch.randn(B, R, generator=g) * b["response_mask"]
    b["values"] = 0.1 * torch.randn(B, R, generator=g)
    b["returns"] = torch.randn(B, R, generator=g)
    return b


def config(args, model: Path, engine: str):
    from rlkit import PPOConfig
    from rlkit.bench.e2e import engine_overrides

    A, C = "actor_rollout_ref.actor", "critic"
    o = [f"data.train_files={model}", f"data.val_files={model}", f"data.train_batch_size={args.rows}",
         f"data.max_prompt_length={args.prompt_max}", f"data.max_response_length={args.response_len}",
         f"actor_rollout_ref.model.path={model}", f"critic.model.path={model}", "algorithm.adv_estimator=gae",
         "actor_rollout_ref.rollout.name=hf", f"{A}.ppo_mini_batch_size={args.mini_batch}",
         f"{A}.ppo_micro_batch_size_per_gpu={args.micro_batch}", f"{C}.ppo_micro_batch_size_per_gpu={args.micro_batch}",
         f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={args.log_prob_micro_batch}",
         f"trainer.device={args.device}"]
    o += engine_overrides(engine, args.max_token_len, args.forward_max_token_len)
    return PPOConfig.from_overrides(o + list(args.override))


def _profile(fn, rows: int = 15) -> list[dict]:
    """Run ``fn`` under torch.profiler; the ``rows`` operators with the most device (else CPU) time of their
    own (the kernels they launched), with their share of all operators' time."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=acts) as prof:
        fn()
    from torch.autograd import DeviceType

    # operator rows only: a kernel's time is also listed under the operator that launched it
    events = [e for e in prof.key_averages() if getattr(e, "device_type", DeviceType.CPU) == DeviceType.CPU]
    dev = "device_time_total" if torch.cuda.is_available() else "cpu_time_total"
    total = sum(getattr(e, "self_" + dev, 0.0) for e in events) or 1.0
    top = sorted(events, key=lambda e: getattr(e, "self_" + dev, 0.0), reverse=True)[:rows]
    return [{"op": e.key, "self_ms": getattr(e, "self_" + dev, 0.0) / 1e3, "share": getattr(e, "self_" + dev, 0.0) / total,
             "calls": e.count} for e in top]


def run_engine(args, model: Path, engine: str, batch, model_cfg: dict, peak: float | None) -> dict:
    import torch

    from rlkit.bench.e2e import phase_mfu
    from rlkit.distributed.group import WorkerGroup

    group = WorkerGroup(config(args, model, engine), local=True)
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    calls = {"old_log_prob": lambda: group.compute_log_prob(batch), "values": lambda: group.compute_values(batch),
             "update_critic": lambda: group.update_critic(batch, step=1),
             "update_actor": lambda: group.update_actor(batch, step=1)}
    times: dict[str, list[float]] = {p: [] for p in PHASES}
    warmup: dict[str, float] = {}
    try:
        for rep in range(args.reps + 1):  # the first round warms up (and compiles)
            for phase in PHASES:
                sync()
                t0 = time.perf_counter()
                calls[phase]()
                sync()
                seconds = time.perf_counter() - t0
                if rep:
                    times[phase].append(seconds)
                else:
                    warmup[phase] = seconds
        profiles = {p: _profile(calls[p]) for p in ("update_critic", "update_actor")} if args.profile else {}
        peak_mem = torch.cuda.max_memory_allocated() / 2**30 if args.device == "cuda" else None
    finally:
        group.shutdown()
    row = {f"timing_s/{p}": statistics.median(v) for p, v in times.items()}
    row["perf/total_num_tokens"] = float(batch["attention_mask"].sum())
    out = {"seconds": {p: row[f"timing_s/{p}"] for p in PHASES}, "all_seconds": times, "warmup_seconds": warmup,
           "mfu": phase_mfu(row, model_cfg, len(batch), peak or 0.0), "peak_memory_allocated_gib": peak_mem}
    if profiles:
        out["profile_top_ops"] = profiles
    return out


def main(argv=None) -> dict:
    from rlkit.bench.e2e import add_engine_arguments

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="0.5b", help="0.5b | 1.5b | tiny (Qwen2.5 shapes, random weights)")
    p.add_argument("--tokenizer", default="Qwen/Qwen2.5-0.5B", help="tokenizer folder or hub id (Qwen2.5's)")
    p.add_argument("--rows", type=int, default=256)
    p.add_argument("--prompt-min", type=int, default=100)
    p.add_argument("--prompt-max", type=int, default=250)
    p.add_argument("--response-len", type=int, default=512)
    p.add_argument("--mini-batch", type=int, default=64)
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--log-prob-micro-batch", type=int, default=16)
    add_engine_arguments(p, default="padded,packed", several=True)
    p.add_argument("--reps", type=int, default=2, help="timed rounds after the warm-up (median reported)")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--profile", action="store_true", help="keep the top operators of each update")
    p.add_argument("--override", action="append", default=[], help="extra key=value (repeatable)")
    p.add_argument("--out", default="train_bench.json")
    args = p.parse_args(argv)

    from rlkit.bench.e2e import make_model, machine_record

    machine, peak = machine_record(args.device)
    res = dict(machine, setup=vars(args), peak_bf16_tflops_datasheet=peak / 1e12 if peak else None, engines={})
    with tempfile.TemporaryDirectory(prefix="rlkit-train-bench-") as tmp:
        model, model_cfg = make_model(args.shape, args.tokenizer, Path(tmp) / "model")
        res["model"] = dict(model_cfg, shape=args.shape)
        batch = synthetic_batch(args.rows, args.prompt_min, args.prompt_max, args.response_len, model_cfg["vocab_size"])
        res["tokens"] = {"real": int(batch["attention_mask"].sum()), "padded": int(batch["attention_mask"].numel())}
        for engine in args.engine:
            res["engines"][engine] = run_engine(args, model, engine, batch, model_cfg, peak)
            s = res["engines"][engine]["seconds"]
            print(f"{engine}: " + ", ".join(f"{ph} {v:.2f} s" for ph, v in s.items()), flush=True)
    from rlkit.diagnostics.memory import sanitize

    res = sanitize(json.loads(json.dumps(res, default=float)))
    Path(args.out).write_text(json.dumps(res, indent=1))
    for engine, r in res["engines"].items():
        for phase, top in r.get("profile_top_ops", {}).items():
            print(f"\n{engine} {phase}: top operators by GPU time")
            for op in top:
                print(f"  {op['share']:6.1%} {op['self_ms']:9.1f} ms {op['calls']:6d}x  {op['op'][:90]}")
    return res


if __name__ == "__main__":
    main()
