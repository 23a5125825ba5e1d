"""End-to-end PPO throughput: ``python -m rlkit.main_ppo``'s code path timed step by step.

    python -m rlkit.bench.e2e --out data/gpu/e2e.json

Default: PPO with GAE and a critic on GSM8K, a Qwen2.5-0.5B shape with random weights (no download;
random weights rarely emit EOS, so responses run to full length), 256 prompts per step, prompts up to
512 tokens, responses of 512, ``ppo_mini_batch_size=64``, ``ppo_micro_batch_size_per_gpu=8``,
``log_prob_micro_batch_size_per_gpu=16``, SGLang rollout, 5 steps, eager training (``--engine padded``).
``--engine packed`` runs the same step with ``use_remove_padding`` (sequences packed without padding)
and ``use_dynamic_bsz`` (micro-batches by token budget: ``--max-token-len`` for the updates,
``--forward-max-token-len`` for the forward passes) for actor and critic; ``--engine compiled`` adds
``use_torch_compile`` (each decoder layer compiled). The run goes through
:func:`rlkit.main_ppo.run` with a ``jsonl`` logger; the benchmark reads the metrics it wrote and adds,
per training phase, the model FLOPs and the MFU:

* model FLOPs as :mod:`rlkit.diagnostics.flops` counts them (``2 * N * T`` per forward pass plus
  attention; an update is 3x);
* MFU = FLOPs / seconds / peak, against the card's dense bf16 peak from its data sheet where known
  (``--peak-tflops`` overrides) and against the rate a large bf16 matmul reaches on it, measured first.

Writes JSON (card, versions, date, config, per-step ``perf/throughput``, per-phase seconds, MFU per
training phase, peak memory) and a phase-breakdown figure (``--figure``). ``--device cpu --rollout hf
--shape tiny`` runs the same path on a CPU (tests do), where MFU is left out.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

from rlkit.diagnostics.flops import peak_flops, phase_mfu, weights_per_token

GIB = 2**30
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=128)

def matmul_peak(n: int = 8192, reps: int = 20) -> float:
    """bf16 FLOP/s of an ``n x n`` matmul on the current GPU (the best of ``reps`` timed runs)."""
    import torch

    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        torch.cuda.synchronize()
        best = min(best, start.elapsed_time(end) / 1000)
    del a, b
    torch.cuda.empty_cache()
    return 2 * n**3 / best


def make_model(shape: str, tokenizer_dir: str, out_dir: Path) -> tuple[Path, dict]:
    """A random-weight Qwen2 of ``shape`` (a Qwen2.5 size, or ``tiny``) with the tokenizer saved beside it."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from rlkit.bench.rollout import SHAPES

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    dims = dict(SHAPES[shape]) if shape in SHAPES else dict(TINY, vocab_size=len(tok), tie_word_embeddings=True)
    cfg = Qwen2Config(max_position_embeddings=4096, rope_theta=1e6, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id, **dims)
    torch.manual_seed(0)
    Qwen2ForCausalLM(cfg).to(torch.bfloat16).save_pretrained(out_dir)  # built on the CPU
    tok.save_pretrained(out_dir)
    return out_dir, {k: dims[k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                          "num_key_value_heads", "intermediate_size", "vocab_size")}


def overrides(args, model: Path, data: dict, out: Path) -> list[str]:
    """The run's config: the benchmark's settings as verl-style overrides, then ``--override`` ones."""
    o = [
        f"data.train_files={data['train']}", f"data.val_files={data['test']}",
        f"data.train_batch_size={args.prompts}", f"data.max_prompt_length={args.prompt_len}",
        f"data.max_response_length={args.response_len}", f"actor_rollout_ref.model.path={model}",
        f"critic.model.path={model}", f"algorithm.adv_estimator={args.estimator}",
        f"actor_rollout_ref.rollout.name={args.rollout}", f"actor_rollout_ref.rollout.n={args.n}",
        "actor_rollout_ref.rollout.tensor_model_parallel_size=1",
        f"actor_rollout_ref.rollout.gpu_memory_utilization={args.gpu_memory_utilization}",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={args.mini_batch}",
        f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={args.micro_batch}",
        f"critic.ppo_micro_batch_size_per_gpu={args.micro_batch}",
        f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={args.log_prob_micro_batch}",
        f"trainer.total_training_steps={args.steps}", f"trainer.device={args.device}",
        "trainer.logger=['jsonl']", f"trainer.default_local_dir={out}", "trainer.val_before_train=False",
        "trainer.test_freq=-1", "trainer.save_freq=-1",
    ]
    return o + engine_overrides(args.engine, args.max_token_len, args.forward_max_token_len,
                                getattr(args, "critic_max_token_len", None)) + list(args.override)


ENGINES = ("padded", "packed", "compiled")


def add_engine_arguments(p: argparse.ArgumentParser, default: str = "padded", several: bool = False) -> None:
    """``--engine`` (and the packed engines' token budgets) for the benchmarks that compare training engines;
    with ``several`` it takes a comma-separated list (``padded,packed,compiled``; ``all`` for every one)."""
    help_ = ("padded: fixed micro-batches of padded rows, eager; packed: use_remove_padding and use_dynamic_bsz with "
             "the token budgets below, eager; compiled: packed with use_torch_compile (each decoder layer compiled)")
    if several:
        p.add_argument("--engine", default=default, type=_engine_list, help=help_ + " - a comma-separated list, or all")
    else:
        p.add_argument("--engine", default=default, choices=ENGINES, help=help_)
    p.add_argument("--max-token-len", type=int, default=16384, help="packed: the actor's ppo_max_token_len_per_gpu")
    p.add_argument("--critic-max-token-len", type=int, default=32768,
                   help="packed: the critic's ppo_max_token_len_per_gpu (verl's and rlkit's default: 32768)")
    p.add_argument("--forward-max-token-len", type=int, default=32768,
                   help="packed: log_prob_max_token_len_per_gpu and critic.forward_max_token_len_per_gpu")


def _engine_list(text: str) -> list[str]:
    names = list(ENGINES) if text == "all" else [t.strip() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in ENGINES]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown engine(s) {bad or text!r}: choose from {', '.join(ENGINES)} or all")
    return names


def engine_overrides(engine: str, max_token_len: int, forward_max_token_len: int,
                     critic_max_token_len: int | None = None) -> list[str]:
    """The config keys of ``--engine``: ``use_torch_compile`` off for ``padded`` and ``packed``, on for
    ``compiled``; for ``packed`` and ``compiled`` also ``use_remove_padding`` and ``use_dynamic_bsz``
    for actor and critic with the update token budgets (the critic's ``critic_max_token_len``, by default
    the actor's ``max_token_len``) and the forward token budget.

    >>> from rlkit.bench.e2e import engine_overrides
    >>> engine_overrides("padded", 16384, 32768)
    ['actor_rollout_ref.actor.use_torch_compile=False']
    >>> engine_overrides("compiled", 16384, 32768)[:3]
    ['actor_rollout_ref.actor.use_torch_compile=True', 'actor_rollout_ref.model.use_remove_padding=True', 'critic.model.use_remove_padding=True']
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}: choose from {', '.join(ENGINES)}")
    A, C = "actor_rollout_ref.actor", "critic"
    keys = [f"{A}.use_torch_compile={engine == 'compiled'}"]
    if engine == "padded":
        return keys
    return keys + ["actor_rollout_ref.model.use_remove_padding=True", "critic.model.use_remove_padding=True",
                   f"{A}.use_dynamic_bsz=True", f"{A}.ppo_max_token_len_per_gpu={max_token_len}",
                   f"{C}.ppo_max_token_len_per_gpu={critic_max_token_len or max_token_len}",
                   f"actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu={forward_max_token_len}",
                   f"{C}.forward_max_token_len_per_gpu={forward_max_token_len}"]


def read_jsonl(path) -> list[dict]:
    """The JSON object of each non-empty line of a UTF-8 ``.jsonl`` file (metrics, generation dumps). Lines end at
    ``\\n`` only: a generated text may hold U+2028 or U+0085 unescaped (``json.dumps(..., ensure_ascii=False)``),
    which ``str.splitlines`` would take for line ends."""
    text = Path(path).read_text(encoding="utf-8")
    return [json.loads(line) for line in text.split("\n") if line.strip()]


def machine_record(device: str | None = None, peak_tflops: float | None = None) -> tuple[dict, float | None]:
    """``({"date", "card", "versions"}, peak bf16 FLOP/s or None)`` of the machine a benchmark runs on:
    the card's data-sheet peak (``peak_tflops`` overrides) on a GPU, None on a CPU. ``device`` None: the GPU
    when there is one."""
    import torch
    import transformers

    import rlkit  # its version also from a source tree on the path, not installed

    on_gpu = device == "cuda" or (device is None and torch.cuda.is_available())
    card = torch.cuda.get_device_name() if on_gpu else platform.processor() or platform.machine()
    record = {"date": datetime.date.today().isoformat(), "card": card,
              "versions": {"torch": torch.__version__, "cuda": torch.version.cuda,
                           "transformers": transformers.__version__, "python": platform.python_version(),
                           "rlkit": _version("rlkit") or rlkit.__version__, "sglang": _version("sglang"),
                           "ray": _version("ray")}}
    peak = None
    if on_gpu:
        peak = peak_tflops * 1e12 if peak_tflops else peak_flops(card)
    return record, peak


def summarize(rows: list[dict], model_cfg: dict, rows_per_step: int, peak: float | None, measured: float | None,
              skip: int = 1, epochs: int = 1) -> dict:
    """Per-step throughput and per-phase seconds, and their medians over the steps after the first
    ``skip`` (warm-up); MFU per training phase against ``peak`` and ``measured`` FLOP/s."""
    timed = rows[skip:] or rows
    phases = sorted({k.split("/", 1)[1] for r in rows for k in r if k.startswith("timing_s/")} - {"step"})
    median = {p: statistics.median(r.get(f"timing_s/{p}", 0.0) for r in timed) for p in phases}
    out = {
        "throughput_per_step": [r["perf/throughput"] for r in rows],
        "throughput_median": statistics.median(r["perf/throughput"] for r in timed),
        "step_s_median": statistics.median(r["timing_s/step"] for r in timed),
        "phase_s_median": median,
        "peak_memory_allocated_gib": max(r.get("perf/max_memory_allocated_gb", 0.0) for r in rows),
        "steps_in_median": [int(r["step"]) for r in timed],
    }
    mid = dict(timed[len(timed) // 2], **{f"timing_s/{p}": s for p, s in median.items()})
    mid["perf/total_num_tokens"] = statistics.median(r["perf/total_num_tokens"] for r in timed)
    out["mfu"] = phase_mfu(mid, model_cfg, rows_per_step, peak or 0.0, epochs)
    if measured:
        for p, v in out["mfu"].items():
            v["mfu_of_measured_matmul"] = v["tflops_per_s"] * 1e12 / measured
    return out


def data_files(folder, check: bool = True) -> dict[str, str]:
    """``{"train", "test"}`` parquet paths (verl's GSM8K schema) in ``folder``; with ``check`` a missing one
    stops the benchmark with how to make it."""
    d = Path(folder).expanduser().resolve()
    data = {"train": str(d / "train.parquet"), "test": str(d / "test.parquet")}
    for f in data.values():
        if check and not Path(f).exists():
            raise SystemExit(f"{f} not found: prepare GSM8K first (python -m rlkit.datasets.gsm8k) or pass --data")
    return data


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="0.5b", help="0.5b | 1.5b | tiny (Qwen2.5 shapes, random weights)")
    p.add_argument("--tokenizer", default="Qwen/Qwen2.5-0.5B", help="tokenizer folder or hub id (Qwen2.5's)")
    p.add_argument("--data", default="~/data/gsm8k", help="folder with GSM8K train/test.parquet (verl schema)")
    p.add_argument("--prompts", type=int, default=256)
    p.add_argument("--n", type=int, default=1, help="responses per prompt (rollout.n)")
    p.add_argument("--prompt-len", type=int, default=512)
    p.add_argument("--response-len", type=int, default=512)
    p.add_argument("--estimator", default="gae", help="algorithm.adv_estimator (gae trains a critic)")
    p.add_argument("--rollout", default="sglang", choices=["sglang", "hf"])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--mini-batch", type=int, default=64)
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--log-prob-micro-batch", type=int, default=16)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.5)
    add_engine_arguments(p)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--peak-tflops", type=float, default=None, help="the card's dense bf16 peak (default: data sheet)")
    p.add_argument("--override", action="append", default=[], help="extra key=value (repeatable)")
    p.add_argument("--out", default="e2e_bench.json")
    p.add_argument("--figure", default=None, help="phase-breakdown PNG (default: next to --out)")
    args = p.parse_args(argv)

    from rlkit.diagnostics.memory import sanitize
    from rlkit.main_ppo import run
    from rlkit.viz.plots import plot_phase_breakdown

    data = data_files(args.data)
    machine, peak = machine_record(args.device, args.peak_tflops)
    card = machine["card"]
    res = dict(machine, setup=vars(args))
    if args.device == "cuda":
        res["peak_bf16_tflops_datasheet"] = peak / 1e12 if peak else None
        res["matmul_bf16_tflops_measured"] = matmul_peak() / 1e12
    with tempfile.TemporaryDirectory(prefix="rlkit-e2e-") as tmp:
        model, model_cfg = make_model(args.shape, args.tokenizer, Path(tmp) / "model")
        out = Path(tmp) / "run"
        res["config_overrides"] = [o.replace(str(model), "<model>").replace(str(Path(data["train"]).parent), "<data>")
                                   .replace(str(out), "<out>") for o in overrides(args, model, data, out)]
        res["model"] = dict(model_cfg, shape=args.shape, weights_per_token_actor=weights_per_token(model_cfg),
                            weights_per_token_critic=weights_per_token(model_cfg, "value"))
        t0 = time.time()
        status = run(overrides(args, model, data, out))
        res["wall_s"] = time.time() - t0
        if status != 0:
            raise SystemExit(f"the run failed (exit status {status})")
        rows = read_jsonl(out / "metrics.jsonl")
    res["steps"] = rows
    measured = res.get("matmul_bf16_tflops_measured", 0) * 1e12 or None
    res["summary"] = summarize(rows, model_cfg, args.prompts * args.n, peak, measured, skip=1 if len(rows) > 1 else 0)
    res = sanitize(json.loads(json.dumps(res, default=float)))  # shareable: no local paths or addresses
    Path(args.out).write_text(json.dumps(res, indent=1))
    fig = plot_phase_breakdown(res["summary"]["phase_s_median"],
                               {p: v["mfu"] for p, v in res["summary"]["mfu"].items()},
                               title=f"{args.shape}, {args.prompts} prompts x {args.n}, {args.prompt_len}/"
                                     f"{args.response_len} tokens, {card}")
    fig.savefig(args.figure or str(Path(args.out).with_suffix(".png")), dpi=100, bbox_inches="tight")
    s = res["summary"]
    print(f"rlkit e2e: {s['throughput_median']:.0f} tokens/s/GPU, {s['step_s_median']:.1f} s/step (median of steps "
          f"{s['steps_in_median']}); " + ", ".join(f"{p} {v:.2f} s" for p, v in s["phase_s_median"].items()))
    return res


def _version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    main()
