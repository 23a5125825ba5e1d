"""Rollout throughput: rlkit SGLangRollout vs sglang.Engine called directly vs rlkit's hf engine vs
the decode roofline; plus seconds per weight sync and per sleep/wake.

    python -m rlkit.bench.rollout --out rollout_bench.json
    python -m rlkit.bench.rollout --prompts 1024 --cuda-graph-max-bs 1024 --skip-hf   # verl-sized batches
    python -m rlkit.bench.rollout --prompts 1024 --cuda-graph-max-bs 1024 --sweep 128,256,512,1024 --profile-steps 20

The two SGLang sides run with the same engine arguments and requests, each in ``--rounds`` fresh engines,
one at a time, each engine in a new process (``--in-process``: all in this one), in alternating order; each
engine generates once to warm up and then ``--repeats`` timed times.

Models are random-weight checkpoints of Qwen2.5 shapes (no download). Every generation uses
``ignore_eos`` so each request decodes exactly ``--new-tokens`` tokens.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

SHAPES = {  # Qwen2.5 configs, random weights
    "0.5b": dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                 intermediate_size=4864, vocab_size=151936, tie_word_embeddings=True),
    "1.5b": dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                 intermediate_size=8960, vocab_size=151936, tie_word_embeddings=True),
}


def make_model(shape: str, out_dir: Path) -> Path:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(max_position_embeddings=4096, rope_theta=1e6, torch_dtype="bfloat16", **SHAPES[shape])
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Qwen2ForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(out_dir)
    del model
    torch.cuda.empty_cache()
    return out_dir


def device_bandwidth(gib: float = 4.0, reps: int = 10) -> float:
    """Device-to-device copy bandwidth in bytes/s (a copy reads and writes each byte)."""
    n = int(gib * 2**30)
    a = torch.empty(n, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    b.copy_(a)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        b.copy_(a)
    torch.cuda.synchronize()
    bw = 2 * n * reps / (time.perf_counter() - t)
    del a, b
    torch.cuda.empty_cache()
    return bw


def roofline(shape: str, batch: int, prompt_len: int, new_tokens: int, bandwidth: float) -> dict:
    """Decode tokens/s if every step only had to read the weights (and the KV cache) once."""
    s = SHAPES[shape]
    head_dim = s["hidden_size"] // s["num_attention_heads"]
    params = (s["vocab_size"] * s["hidden_size"] + s["num_hidden_layers"] * (
        s["hidden_size"] * head_dim * (s["num_attention_heads"] * 2 + s["num_key_value_heads"] * 2)
        + 3 * s["hidden_size"] * s["intermediate_size"]))
    weight_bytes = 2 * params  # bf16
    kv_per_token = 2 * s["num_hidden_layers"] * s["num_key_value_heads"] * head_dim * 2  # K and V, bf16
    avg_ctx = prompt_len + new_tokens / 2
    step_bytes = weight_bytes + batch * avg_ctx * kv_per_token
    return {"params": params, "weight_bytes": weight_bytes, "kv_bytes_per_token": kv_per_token,
            "tokens_per_s_weights_only": batch * bandwidth / weight_bytes,
            "tokens_per_s_weights_and_kv": batch * bandwidth / step_bytes}


def timed(fn, *a, **kw):
    torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn(*a, **kw)
    torch.cuda.synchronize()
    return out, time.perf_counter() - t


SIDES = ("direct_sglang", "rlkit_sglang")


def requests(args) -> tuple[list[list[int]], int]:
    """The benchmark's prompts (random token ids, the same in every process) and the new tokens per prompt."""
    gen = torch.Generator().manual_seed(0)
    vocab = SHAPES[args.shape]["vocab_size"]
    return torch.randint(100, vocab - 100, (args.prompts, args.prompt_len), generator=gen).tolist(), args.new_tokens


def engine_extra(args) -> dict:
    """Engine arguments beyond :meth:`SGLangRollout.engine_kwargs`' own (the decode CUDA-graph size)."""
    return {"cuda_graph_max_bs_decode": args.cuda_graph_max_bs} if args.cuda_graph_max_bs else {}


def engine_options(args) -> dict:
    """The keyword arguments every engine of the run gets (:class:`SGLangRollout` and its ``engine_kwargs``)."""
    return dict(gpu_memory_utilization=args.gpu_memory_utilization, enforce_eager=args.enforce_eager,
                load_format="auto", engine_kwargs=engine_extra(args))


def time_side(name: str, args, model_dir) -> dict:
    """A fresh engine of side ``name`` (``direct_sglang``: ``sglang.Engine`` with the arguments rlkit would pass;
    ``rlkit_sglang``: rlkit's :class:`SGLangRollout`): its start time, one warm-up generation, ``--repeats``
    timed generations of every prompt; the engine is shut down before returning."""
    from rlkit.rollout import SamplingParams
    from rlkit.rollout.sglang import SGLangRollout, import_sglang

    prompts, new_tokens = requests(args)
    kw, sweep = engine_options(args), sweep_batches(args)
    params = {"max_new_tokens": new_tokens, "temperature": 1.0, "top_p": 1.0, "top_k": -1, "ignore_eos": True,
              "skip_special_tokens": False}  # what SGLangRollout sends for `sampling` below

    def generate(engine, max_new_tokens: int, rows: list[list[int]] = prompts, logprob: bool = True) -> list[int]:
        """One batched generation of ``rows``; the response lengths."""
        if name == "direct_sglang":
            outs = engine.generate(input_ids=rows, sampling_params=dict(params, max_new_tokens=max_new_tokens),
                                   return_logprob=logprob)
            return [len(o["output_ids"]) for o in outs]
        sp = SamplingParams(max_new_tokens=max_new_tokens, temperature=1.0, ignore_eos=True)
        return [len(r) for r in engine.generate(rows, sp).response_ids]

    if name == "direct_sglang":
        engine_args = SGLangRollout.engine_kwargs(str(model_dir), **kw)
        engine, start = timed(lambda: import_sglang().Engine(**engine_args))
    else:
        engine, start = timed(lambda: SGLangRollout(str(model_dir), **kw))
    try:
        generate(engine, 16)
        rec = {"start_s": start, "seconds": []}
        for batch in sweep:  # with --sweep: one generation per batch size, log-probs on and off
            for logprob in (True, False):
                lengths, dt = timed(generate, engine, new_tokens, prompts[:batch], logprob)
                assert lengths == [new_tokens] * batch, "a request stopped early despite ignore_eos"
                rec.setdefault("sweep", []).append({"batch": batch, "logprob": logprob, "seconds": dt})
        if args.profile_steps:  # with --sweep: where the GPU time of a full-batch step goes
            rec["profile"] = profile_generation(engine, lambda: generate(engine, new_tokens), args.profile_steps)
        for _ in range(0 if sweep else args.repeats):
            lengths, dt = timed(generate, engine, new_tokens)
            assert lengths == [new_tokens] * len(prompts), "a request stopped early despite ignore_eos"
            rec["seconds"].append(dt)
            if name == "rlkit_sglang":
                rec.setdefault("inside", []).append(engine.last_timing)
    finally:
        engine.shutdown()
        torch.cuda.empty_cache()
    return rec


def profile_generation(engine, run, steps: int, top: int = 15) -> dict:
    """Call ``run`` (one generation on ``engine``, a ``sglang.Engine``) under SGLang's profiler, device
    kernels only, for the first ``steps`` prefill and the first ``steps`` decode steps; each stage's trace is
    read back and summarised (:func:`rlkit.diagnostics.kernels.summarize`: busy fraction, seconds per kernel
    category, top kernels) with ``ms_per_step``: the trace's span over ``steps``.

    Returns ``{"prefill": ..., "decode": ...}`` (a stage SGLang wrote no trace for is missing)."""
    from rlkit.diagnostics.kernels import read_chrome_trace, summarize

    out_dir = Path(tempfile.mkdtemp(prefix="rlkit-profile-"))
    engine.start_profile(output_dir=str(out_dir), num_steps=steps, profile_by_stage=True, activities=["GPU"])
    run()
    out = {}
    for f in sorted(out_dir.glob("*.trace.json*")):
        stage = "decode" if "-DECODE" in f.name else "prefill" if "-EXTEND" in f.name else f.name
        kernels, span = read_chrome_trace(f)
        out[stage] = dict(summarize(kernels, span, top), steps=steps, ms_per_step=1e3 * span / steps)
    if not out:
        raise RuntimeError(f"SGLang's profiler wrote no trace into {out_dir}")
    return out


def sweep_batches(args) -> list[int]:
    """``--sweep``'s batch sizes (none without it).

    >>> import argparse
    >>> from rlkit.bench.rollout import sweep_batches
    >>> sweep_batches(argparse.Namespace(sweep="256, 1024", prompts=1024)), sweep_batches(argparse.Namespace(sweep=""))
    ([256, 1024], [])
    """
    batches = [int(b) for b in (getattr(args, "sweep", "") or "").split(",") if b.strip()]
    if any(b < 1 or b > args.prompts for b in batches):
        raise SystemExit(f"--sweep {args.sweep}: every batch size must be between 1 and --prompts ({args.prompts})")
    return batches


def sweep_rows(sweep: list[dict], shape: str, prompt_len: int, new_tokens: int, bandwidth: float) -> list[dict]:
    """Each sweep record with its milliseconds per decode step (the whole generation over ``new_tokens`` steps,
    prefill included), tokens/s and share of the decode roofline at its batch size.

    >>> from rlkit.bench.rollout import sweep_rows
    >>> r, = sweep_rows([{"batch": 2, "logprob": True, "seconds": 0.5}], "0.5b", 100, 200, 1e12)
    >>> r["ms_per_step"], r["tokens_per_s"], round(r["of_roofline"], 4)
    (2.5, 800.0, 0.3971)
    """
    out = []
    for r in sweep:
        roof = roofline(shape, r["batch"], prompt_len, new_tokens, bandwidth)["tokens_per_s_weights_and_kv"]
        tps = r["batch"] * new_tokens / r["seconds"]
        out.append(dict(r, ms_per_step=1e3 * r["seconds"] / new_tokens, tokens_per_s=tps, of_roofline=tps / roof))
    return out


def side_command(argv: list[str], name: str, model_dir, out) -> list[str]:
    """The command that times side ``name`` alone in a new process: this run's flags plus ``--side``,
    ``--model-dir`` and its own ``--out``.

    >>> from rlkit.bench.rollout import side_command
    >>> side_command(["--prompts", "1024", "--out", "all.json"], "rlkit_sglang", "/m", "/t/r.json")[1:]
    ['-m', 'rlkit.bench.rollout', '--prompts', '1024', '--side', 'rlkit_sglang', '--model-dir', '/m', '--out', '/t/r.json']
    """
    rest, skip = [], False
    for a in argv:  # drop this run's --out (both spellings)
        if skip:
            skip = False
        elif a == "--out":
            skip = True
        elif not a.startswith("--out="):
            rest.append(a)
    return [sys.executable, "-m", "rlkit.bench.rollout", *rest, "--side", name, "--model-dir", str(model_dir),
            "--out", str(out)]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="0.5b", choices=sorted(SHAPES))
    p.add_argument("--prompts", type=int, default=256)
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=512)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.5)
    p.add_argument("--repeats", type=int, default=3, help="timed generations per engine start")
    p.add_argument("--rounds", type=int, default=2,
                   help="fresh engines per side; the order alternates (direct first in even rounds)")
    p.add_argument("--cuda-graph-max-bs", type=int, default=None,
                   help="sglang cuda_graph_max_bs_decode (decode CUDA graphs up to this many running requests; "
                        "default: sglang's)")
    p.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs (faster start, slower decode)")
    p.add_argument("--in-process", action="store_true",
                   help="start every engine in this process (by default each engine runs in a process of its own)")
    p.add_argument("--sweep", default="",
                   help="batch sizes, e.g. 128,256,512,1024: instead of the comparison, time sglang.Engine alone "
                        "(its own process) at each, with log-probs on and off: ms per decode step against the roofline")
    p.add_argument("--profile-steps", type=int, default=0,
                   help="with --sweep: then profile one generation of every prompt (SGLang's profiler, GPU kernels) "
                        "over this many prefill and decode steps: busy fraction, kernel categories, top kernels")
    p.add_argument("--sync-shapes", default="0.5b,1.5b", help="shapes to time weight sync on ('' to skip)")
    p.add_argument("--skip-hf", action="store_true")
    p.add_argument("--side", choices=SIDES, default=None, help=argparse.SUPPRESS)  # one side, in a child process
    p.add_argument("--model-dir", default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default="rollout_bench.json")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(argv)
    sweep_batches(args)  # bad --sweep sizes stop here, before any GPU work
    if args.profile_steps and not args.sweep:
        raise SystemExit("--profile-steps profiles the --sweep engine: give --sweep too (e.g. --sweep 1024)")
    if args.side:  # a child: time one side and leave its record in --out
        Path(args.out).write_text(json.dumps(time_side(args.side, args, args.model_dir)))
        return {}

    from rlkit.diagnostics.memory import sanitize, snapshot
    from rlkit.rollout import SamplingParams
    from rlkit.rollout.hf import HFRollout
    from rlkit.rollout.sglang import SGLangRollout, import_sglang

    sglang = import_sglang()
    import transformers

    tmp = Path(tempfile.mkdtemp(prefix="rlkit-bench-"))
    res = {
        "date": datetime.date.today().isoformat(), "gpu": torch.cuda.get_device_name(),
        "versions": {"torch": torch.__version__, "cuda": torch.version.cuda, "sglang": sglang.__version__,
                     "transformers": transformers.__version__, "python": platform.python_version()},
        "setup": vars(args),
    }
    def save():  # after every section, so a run cut short still leaves its numbers; shareable: no local paths
        Path(args.out).write_text(json.dumps(sanitize(res), indent=2))

    model_dir = make_model(args.shape, tmp / args.shape)
    prompts, _ = requests(args)
    sampling = SamplingParams(max_new_tokens=args.new_tokens, temperature=1.0, ignore_eos=True)
    warm = SamplingParams(max_new_tokens=16, temperature=1.0, ignore_eos=True)
    n_tokens = args.prompts * args.new_tokens

    res["bandwidth_gbps"] = device_bandwidth() / 1e9
    res["roofline"] = roofline(args.shape, args.prompts, args.prompt_len, args.new_tokens, res["bandwidth_gbps"] * 1e9)

    # (a) rlkit SGLangRollout and (b) sglang.Engine with the same engine arguments and requests. Fair
    # comparison: every round starts a fresh engine for each side, one engine at a time (two resident
    # engines disturb each other's timings), each in a new process unless --in-process (the engine that
    # ran second in one process was measured up to 1.3x faster or slower), and the order alternates
    # between rounds; medians over all runs.
    from transformers import AutoModelForCausalLM

    engine_args = SGLangRollout.engine_kwargs(str(model_dir), **engine_options(args))
    res["engine_args"] = {k: v for k, v in engine_args.items() if k != "model_path"}

    def run_side(name: str) -> dict:
        if args.in_process:
            return time_side(name, args, model_dir)
        out = tmp / f"{name}.json"
        out.unlink(missing_ok=True)
        subprocess.run(side_command(argv, name, model_dir, out), check=True)
        return json.loads(out.read_text())

    if sweep_batches(args):  # the decode step against batch size, one engine, then done
        rec = run_side("direct_sglang")
        res["sweep_start_s"] = rec["start_s"]
        res["sweep"] = sweep_rows(rec["sweep"], args.shape, args.prompt_len, args.new_tokens,
                                  res["bandwidth_gbps"] * 1e9)
        if "profile" in rec:
            res["profile"] = rec["profile"]
        save()
        print(json.dumps(res["sweep"], indent=2))
        for stage, prof in res.get("profile", {}).items():
            print(f"{stage}: {prof['ms_per_step']:.2f} ms/step, busy {prof['busy_fraction']:.2f}, "
                  + ", ".join(f"{c} {v['share']:.0%}" for c, v in prof["by_category"].items()))
        return res
    res["rounds"] = []
    for r in range(args.rounds):
        order = list(SIDES) if r % 2 == 0 else list(reversed(SIDES))
        rnd = {"order": order, "process": "shared" if args.in_process else "own"}
        for name in order:
            rnd[name] = run_side(name)
        rnd["rlkit_over_direct"] = statistics.median(rnd["direct_sglang"]["seconds"]) / statistics.median(
            rnd["rlkit_sglang"]["seconds"])
        res["rounds"].append(rnd)
        save()
    for name in SIDES:
        secs = [x for rnd in res["rounds"] for x in rnd[name]["seconds"]]
        res[name] = {"seconds": secs, "median_s": statistics.median(secs),
                     "tokens_per_s": n_tokens / statistics.median(secs)}
    save()
    eng = SGLangRollout(str(model_dir), **engine_options(args))
    # weight sync and sleep / wake with the actor's weights (fp32 on the GPU, as in training)
    actor = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).cuda()
    eng.update_weights(actor.named_parameters())  # first push allocates transfer buffers
    _, res["update_weights_s_" + args.shape] = timed(eng.update_weights, actor.named_parameters())

    def free_bytes() -> int:  # the current GPU's free memory
        return snapshot(devices=[torch.cuda.current_device()]).gpus[0].free

    free0 = free_bytes()
    _, res["sleep_s"] = timed(eng.sleep)
    res["sleep_freed_gib"] = (free_bytes() - free0) / 2**30
    _, res["wake_s"] = timed(eng.wake_up, actor.named_parameters())
    save()
    eng.shutdown()
    del actor
    torch.cuda.empty_cache()

    # (c) rlkit's hf engine (transformers generate, bf16)
    if not args.skip_hf:
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.bfloat16).cuda().eval()
        hf = HFRollout(model, pad_token_id=0, eos_token_ids=[])
        hf.generate(prompts[:8], warm)
        out, secs = timed(hf.generate, prompts, sampling)
        res["hf"] = {"seconds": secs, "tokens_per_s": n_tokens / secs}
        save()
        del model, hf
        torch.cuda.empty_cache()

    # weight sync on other shapes (dummy-weight engines, no CUDA graphs: only the push is timed)
    for shape in [s for s in args.sync_shapes.split(",") if s and s != args.shape]:
        d = make_model(shape, tmp / shape)
        e = SGLangRollout(str(d), gpu_memory_utilization=0.3, enforce_eager=True, load_format="dummy")
        actor = AutoModelForCausalLM.from_pretrained(str(d), dtype=torch.float32).cuda()
        e.update_weights(actor.named_parameters())  # first push allocates buffers
        _, res["update_weights_s_" + shape] = timed(e.update_weights, actor.named_parameters())
        save()
        e.shutdown()
        del actor
        torch.cuda.empty_cache()

    a = res["rlkit_sglang"]["tokens_per_s"]
    roof = res["roofline"]["tokens_per_s_weights_and_kv"]
    res["ratios"] = {"rlkit_over_direct": a / res["direct_sglang"]["tokens_per_s"],
                     "rlkit_over_direct_per_round": [rnd["rlkit_over_direct"] for rnd in res["rounds"]],
                     "rlkit_over_roofline_weights_and_kv": a / roof,
                     "direct_over_roofline_weights_and_kv": res["direct_sglang"]["tokens_per_s"] / roof}
    if "hf" in res:
        res["ratios"]["rlkit_over_hf"] = a / res["hf"]["tokens_per_s"]
    save()
    print(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
