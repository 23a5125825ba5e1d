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
``--profile`` runs each phase once more under ``torch.profiler`` and keeps what holds it back: how busy
the device was (the rest is host overhead), device seconds per kernel category (matrix multiplies,
attention, element-wise, optimizer, ...), the top kernels and operators, and the seconds of the
forward / backward / optimizer ranges the workers mark (:mod:`rlkit.diagnostics.kernels`).

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
    from rlkit.config import PPOConfig
    from rlkit.bench.e2e import engine_overrides

    A, C = "actor_rollout_ref.actor", "critic"
    o = [f"data.train_files={model}", f"data.val_files={model}", f"data.train_batch_size={args.rows}",
         f"data.max_prompt_length={args.prompt_max}", f"data.max_response_length={args.response_len}",
         f"actor_rollout_ref.model.path={model}", f"critic.model.path={model}", "algorithm.adv_estimator=gae",
         "actor_rollout_ref.rollout.name=hf", f"{A}.ppo_mini_batch_size={args.mini_batch}",
         f"{A}.ppo_micro_batch_size_per_gpu={args.micro_batch}", f"{C}.ppo_micro_batch_size_per_gpu={args.micro_batch}",
         f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={args.log_prob_micro_batch}",
         f"trainer.device={args.device}"]
    o += engine_overrides(engine, args.max_token_len, args.forward_max_token_len, args.critic_max_token_len)
    return PPOConfig.from_overrides(o + list(args.override))


def _profile(fn, sync, rows: int = 12) -> dict:
    """Run ``fn`` once under torch.profiler. Returns the device kernels' summary
    (:func:`rlkit.diagnostics.kernels.summarize`: busy fraction, seconds per kernel category, top kernels),
    ``regions`` (the ``rlkit/...`` ranges the workers mark - forward, backward, optimizer - with host
    seconds, device seconds where the profiler maps them onto the device, and counts) and ``top_ops``: the
    ``rows`` operators with the most device (else host) time of their own."""
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    from rlkit.diagnostics import kernels as kernels_lib

    cuda = torch.cuda.is_available()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        wall = time.perf_counter() - t0
    events = prof.events()
    kernels = [(e.name, e.time_range.start / 1e6, e.time_range.end / 1e6) for e in events
               if e.device_type != DeviceType.CPU and not e.is_user_annotation]
    out = kernels_lib.summarize(kernels, wall, rows)
    regions: dict[str, dict] = {}
    for e in events:
        if e.is_user_annotation and e.name.startswith("rlkit/"):
            r = regions.setdefault(e.name, {"host_s": 0.0, "device_s": 0.0, "count": 0})
            on_host = e.device_type == DeviceType.CPU
            r["host_s" if on_host else "device_s"] += (e.time_range.end - e.time_range.start) / 1e6
            r["count"] += on_host
    out["regions"] = regions
    # operator rows only: a kernel's time is also listed under the operator that launched it
    skip = {name for name, _, _ in kernels} | set(regions)
    ops = [e for e in prof.key_averages() if e.key not in skip]
    dev = "self_device_time_total" if cuda else "self_cpu_time_total"
    total = sum(getattr(e, dev, 0.0) for e in ops) or 1.0
    top = sorted(ops, key=lambda e: getattr(e, dev, 0.0), reverse=True)[:rows]
    out["top_ops"] = [{"op": e.key, "self_ms": getattr(e, dev, 0.0) / 1e3, "share": getattr(e, dev, 0.0) / total,
                       "calls": e.count} for e in top]
    return out


def run_engine(args, model: Path, engine: str, batch, model_cfg: dict, peak: float | None) -> dict:
    import torch

    from rlkit.diagnostics.flops import phase_mfu
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
        profiles = {p: _profile(calls[p], sync) for p in PHASES} if args.profile else {}
        peak_mem = torch.cuda.max_memory_allocated() / 2**30 if args.device == "cuda" else None
    finally:
        group.shutdown()
    row = {f"timing_s/{p}": statistics.median(v) for p, v in times.items()}
    row["perf/total_num_tokens"] = float(batch["attention_mask"].sum())
    out = {"seconds": {p: row[f"timing_s/{p}"] for p in PHASES}, "all_seconds": times, "warmup_seconds": warmup,
           "mfu": phase_mfu(row, model_cfg, len(batch), peak or 0.0), "peak_memory_allocated_gib": peak_mem}
    if profiles:
        out["profile"] = profiles
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
        for phase, prof in r.get("profile", {}).items():
            print(f"\n{engine} {phase}: wall {prof['wall_s']:.2f} s, device busy {prof['busy_s']:.2f} s "
                  f"({prof['busy_fraction']:.0%})")
            for cat, row in prof["by_category"].items():
                print(f"  {row['share']:6.1%} {row['s'] * 1e3:9.1f} ms {row['count']:7d}x  {cat}")
            for name, reg in prof["regions"].items():
                print(f"  region {name}: host {reg['host_s']:.3f} s, device {reg['device_s']:.3f} s, {reg['count']}x")
            for k in prof["top_kernels"][:6]:
                print(f"  kernel {k['share']:6.1%} {k['s'] * 1e3:8.1f} ms {k['count']:6d}x  {k['name'][:100]}")
    return res


if __name__ == "__main__":
    main()
