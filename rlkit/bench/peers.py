"""Side by side on one GPU: rlkit vs verl 0.9.1 vs TRL 1.12.0, each run as its own command.

    python -m rlkit.bench.peers --sides rlkit,verl --estimator gae --out data/gpu/peers --dry-run

Every side gets the same verl-style keys (:func:`common_overrides`: :mod:`rlkit.bench.e2e`'s throughput
configuration, 7 steps = 2 warm-up + 5 measured; ``gae`` trains a critic, ``grpo`` samples 5 responses per prompt
with the KL loss) and runs as a subprocess (rlkit imports neither verl nor TRL), in turn, in ``<out>/<side>/``,
output to ``<out>/<side>.log``. TRL's side runs :mod:`rlkit.bench.peer_trl` on the same keys (it needs
``pip install trl==1.12.0`` in this interpreter) and writes rlkit-style jsonl rows. :func:`side_summary` and
:func:`compare` go to ``<out>/peers.json``, and the sides' step phases and tokens/s/GPU to ``<out>/peers.png``
(:func:`rlkit.viz.plots.plot_peers`).
``--dry-run`` prints the exact commands with their environment and runs nothing. Sides run one per command
(``--sides verl``, then ``--sides rlkit`` with the same ``--out``) are compared afterwards with ``--from-logs``,
which runs nothing and summarizes the metrics they left.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

from rlkit.bench import e2e, peer_trl

SIDES = ("rlkit", "verl", "trl")
TRL_DRIVER = "rlkit.bench.peer_trl"
TRL_PACKAGE = "trl"  # what the trl side's driver imports (peer_trl.INSTALL)
MEM = "perf/max_memory_allocated_gb"
# keys whose rlkit and verl defaults differ (gradient checkpointing: rlkit off, verl on; remove-padding: rlkit
# off, verl on; max_num_seqs: verl 256, passed to SGLang as max_running_requests), set for every side
SHARED = ["actor_rollout_ref.actor.optim.lr=1e-6", "critic.optim.lr=1e-5", "algorithm.kl_ctrl.kl_coef=0.001",
          "trainer.n_gpus_per_node=1", "trainer.nnodes=1", "trainer.resume_mode=disable",
          "actor_rollout_ref.model.use_remove_padding=False", "critic.model.use_remove_padding=False",
          "actor_rollout_ref.model.enable_gradient_checkpointing=False",
          "critic.model.enable_gradient_checkpointing=False", "actor_rollout_ref.rollout.max_num_seqs=1024"]
# what verl 0.9.1 needs on the GPU host (no flash-attn wheel: SDPA, no remove-padding, SGLang's triton attention
# and pytorch sampling) and its file logger; its fused log-prob path (chunked, plain torch: no flash-attn needed),
# which made its GRPO old/reference/actor phases 3.3-3.8x faster on an H100 than its default per-token loop
# (README, "Compared with verl and TRL"); the critic's part only with a critic
VERL_EXTRAS = ["+actor_rollout_ref.model.override_config.attn_implementation=sdpa",
               "actor_rollout_ref.model.use_remove_padding=False", "actor_rollout_ref.model.use_fused_kernels=True",
               "+actor_rollout_ref.rollout.engine_kwargs.sglang.attention_backend=triton",
               "+actor_rollout_ref.rollout.engine_kwargs.sglang.sampling_backend=pytorch", "trainer.logger=['file']"]
VERL_CRITIC_EXTRAS = ["+critic.model.override_config.attn_implementation=sdpa", "critic.model.use_remove_padding=False"]
# rlkit key -> the verl 0.9.1 keys its engine reads for the same switch (verl keeps the rlkit key, unread
# by its engine workers: their torch.compile switch is fsdp_config's, which compiles the entropy)
VERL_ALSO = {"actor_rollout_ref.actor.use_torch_compile": ("actor_rollout_ref.actor.fsdp_config.use_torch_compile",
                                                           "actor_rollout_ref.ref.fsdp_config.use_torch_compile",
                                                           "critic.fsdp.use_torch_compile")}
RUN_RECORD = "run.json"  # in each side's folder: the machine that ran it and how it ended (run_plan)
RUNNING = "still running when its files were read (run.json is rewritten when the side ends)"
MIN_PHASE_S = 0.05  # seconds: shorter phases get no ratio in compare's table
CONTINUED = " \\\n    "  # a shell line continued on the next
PHASES = ("gen", "reward", "old_log_prob", "ref", "values", "adv", "update_critic", "update_actor", "update_weights")


def key(override: str) -> str:
    """The config key of a ``key=value`` override, without a leading ``+``."""
    return override.split("=", 1)[0].lstrip("+")


def merge(overrides: list[str], extra: list[str]) -> list[str]:
    """``overrides`` then ``extra``, one entry per key: an ``extra`` entry replaces an earlier one of its key.

    >>> from rlkit.bench.peers import merge
    >>> merge(["a=1", "b=2"], ["a=3", "+c=4"])
    ['b=2', 'a=3', '+c=4']
    """
    keys = {key(x) for x in extra}
    return [x for x in overrides if key(x) not in keys] + list(extra)


def responses_per_prompt(args) -> int:
    """``--n``, else 5 for GRPO and 1 for GAE."""
    return args.n or (5 if args.estimator == "grpo" else 1)


def common_overrides(args, model, data: dict, out) -> list[str]:
    """The keys every side runs with (``args``: :func:`build_parser`'s), ``out`` the side's folder."""
    e = argparse.Namespace(**dict(vars(args), n=responses_per_prompt(args), rollout="sglang", device="cuda", engine="padded", max_token_len=0,
                                  forward_max_token_len=0, override=[]))
    o = merge([x for x in e2e.overrides(e, model, data, out) if key(x) != "trainer.logger"], SHARED)
    if args.estimator == "grpo":
        o = [x for x in o if not key(x).startswith("critic.")] + ["actor_rollout_ref.actor.use_kl_loss=True",
             f"actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu={args.log_prob_micro_batch}"]
    return merge(o, list(args.override))


def verl_command(overrides: list[str], log_path, with_trl_on_path: bool = False, trl_site: str = "/tmp/site-trl",
                 v1: bool = False) -> tuple[list[str], dict]:
    """``(argv, environment)`` of verl's PPO on the shared ``overrides`` with :data:`VERL_EXTRAS`, :data:`VERL_ALSO`
    and the legacy trainer unless ``v1``, metrics to ``log_path``. ``with_trl_on_path`` (for a critic): TRL 1.12.0
    unpacked in ``trl_site`` (from ``.gpu-trl/trl.tar.xz``, apart from the other bundles) first on ``PYTHONPATH``
    for verl's value-head fallback - which, like its first attempt, asks for ``flash_attention_2``
    (``verl/utils/model.py``, ``load_valuehead_model``): a verl critic is expected to fail without flash-attn.

    >>> from rlkit.bench.peers import verl_command
    >>> argv, env = verl_command(["actor_rollout_ref.actor.use_torch_compile=False"], "/o/metrics.jsonl")
    >>> argv[1:3], argv[-1], env["VERL_FILE_LOGGER_PATH"], "PYTHONPATH" in env
    (['-m', 'verl.trainer.main_ppo'], 'trainer.use_v1=False', '/o/metrics.jsonl', False)
    >>> argv[4]  # the switch verl's engine reads
    'actor_rollout_ref.actor.fsdp_config.use_torch_compile=False'
    """
    critic = any(key(x).startswith("critic.") for x in overrides)
    also = [f"{t}={x.split('=', 1)[1]}" for x in overrides for t in VERL_ALSO.get(key(x), ())
            if critic or not t.startswith("critic.")]
    extras = VERL_EXTRAS + (VERL_CRITIC_EXTRAS if critic else []) + ([] if v1 else ["trainer.use_v1=False"])
    env = {"VERL_FILE_LOGGER_PATH": str(log_path), "SGLANG_ENABLE_TP_MEMORY_INBALANCE_CHECK": "false",
           "HYDRA_FULL_ERROR": "1"}
    if with_trl_on_path:
        env["PYTHONPATH"] = f"{trl_site}:$PYTHONPATH"
    return [sys.executable, "-m", "verl.trainer.main_ppo", *merge(overrides, also + extras)], env


def rlkit_command(overrides: list[str]) -> tuple[list[str], dict]:
    """``(argv, environment)`` of ``python -m rlkit.main_ppo``; metrics to ``<default_local_dir>/metrics.jsonl``."""
    return [sys.executable, "-m", "rlkit.main_ppo", *merge(overrides, ["trainer.logger=['jsonl']"])], {}


def read_rlkit_metrics(path) -> list[dict]:
    """rlkit's ``jsonl`` rows (``{"step": N, metric: value, ...}``), one per logged step."""
    return e2e.read_jsonl(path)


def read_verl_metrics(path) -> list[dict]:
    """verl's file-logger rows ``{"step": N, "data": {...}}`` made flat; verl 0.9.1 logs the memory peak per
    worker (``actor/perf/max_memory_allocated_gb``, ``critic/...``): the largest becomes ``perf/...``."""
    rows = []
    for r in read_rlkit_metrics(path):
        row = {"step": r["step"], **r["data"]}
        mem = [v for k, v in row.items() if k.endswith("/" + MEM) and v is not None]
        rows.append(dict(row, **{MEM: max(mem)}) if mem and MEM not in row else row)
    return rows


def side_summary(rows: list[dict], warmup: int = 2, model_cfg: dict | None = None, sequences: int = 256,
                 peak: float | None = None) -> dict:
    """:func:`rlkit.bench.e2e.summarize` of the steps (rows with ``timing_s/step``) after ``warmup``: medians of
    ``perf/throughput``, ``timing_s/step``, each ``timing_s/<phase>``; the largest ``perf/max_memory_allocated_gb``
    of all steps (peak counters); FLOPs and MFU per training phase (``model_cfg``: Qwen2.5-0.5B's)."""
    steps = [r for r in rows if "timing_s/step" in r]
    if len(steps) <= warmup:
        raise ValueError(f"{len(steps)} step(s) logged: the summary needs more than the {warmup} warm-up steps")
    if model_cfg is None:
        from rlkit.bench.rollout import SHAPES

        model_cfg = {k: v for k, v in SHAPES["0.5b"].items() if k != "tie_word_embeddings"}
    return e2e.summarize(steps, model_cfg, sequences, peak, None, skip=warmup)


def compare(sides: dict[str, dict], base: str = "rlkit") -> dict:
    """``{"ratios": {peer: {row: base/peer}}, "table": markdown}`` over :func:`side_summary` results: tokens/s/GPU
    (a ratio above 1: ``base`` faster), seconds per step and per phase, peak memory (below 1: ``base`` faster or
    smaller); a phase one side lacks shows ``-``. Timers inside a phase (``agent_loop/...``: verl's inside
    generation) stay in the summaries, out of the table; a phase ratio needs both sides at :data:`MIN_PHASE_S` or
    more (a ratio of two near-zero timers says nothing)."""
    found = {p for s in sides.values() for p in s["phase_s_median"] if "/" not in p}
    rows = [("tokens/s/GPU", lambda s: s["throughput_median"], "{:,.0f}"),
            ("s/step", lambda s: s["step_s_median"], "{:.2f}")]
    rows += [(f"{p} s", lambda s, p=p: s["phase_s_median"].get(p), "{:.2f}")
             for p in [p for p in PHASES if p in found] + sorted(found - set(PHASES))]
    rows += [("peak allocated GiB", lambda s: s.get("peak_memory_allocated_gib"), "{:.1f}")]
    others, cols = [n for n in sides if n != base], list(sides) + [f"{base}/{n}" for n in sides if n != base]
    ratios, table = {o: {} for o in others}, ["| | " + " | ".join(cols) + " |", "| --- |" + " ---: |" * len(cols)]
    for label, get, fmt in rows:
        cells = [fmt.format(get(s)) if get(s) is not None else "-" for s in sides.values()]
        for o in others:
            a, b = get(sides[base]), get(sides[o])
            small = label.endswith(" s") and min(a or 0, b or 0) < MIN_PHASE_S
            if a is not None and b and not small:
                ratios[o][label] = a / b
            cells.append(f"{ratios[o][label]:.2f}" if label in ratios[o] else "-")
        table.append(f"| {label} | " + " | ".join(cells) + " |")
    return {"ratios": ratios, "table": "\n".join(table)}


def shell_line(argv: list[str], env: dict, sep: str = " ") -> str:
    """The command as typed in a shell (``python`` for this interpreter), its environment first; ``sep`` between
    the arguments after the module.

    >>> import sys
    >>> from rlkit.bench.peers import CONTINUED, shell_line
    >>> print(shell_line([sys.executable, "-m", "m", "trainer.logger=['file']", "a=b c"], {"X": "1"}, CONTINUED))
    X=1 python -m m \\
        "trainer.logger=['file']" \\
        'a=b c'
    """
    def q(a: str) -> str:
        return f'"{a}"' if "'" in a and not any(c in a for c in '"$`\\') else shlex.quote(a)

    words = [f"{k}={v if k == 'PYTHONPATH' else q(v)}" for k, v in env.items()]
    head = words + ["python" if a == sys.executable else q(a) for a in argv[:3]]
    return sep.join([" ".join(head)] + [q(a) for a in argv[3:]])


class SidesFailed(SystemExit):
    """:func:`run_plan`'s exit when a side failed: the message names each failed side with its log's last lines;
    ``done`` holds the summaries of the sides that finished, ``failed`` the message per failed side."""

    def __init__(self, done: dict, failed: dict):
        super().__init__("\n\n".join(failed.values()) + (f"\n\nfinished: {', '.join(done)}" if done else ""))
        self.done, self.failed = done, failed


def _run_side(name: str, side: dict, timeout: float | None):
    """Run one side's command in its folder, output to its log; its exit status, or why it was stopped."""
    print(f"peers: running {name}, output in {side['log']}", file=sys.stderr, flush=True)
    env = dict(os.environ, **{k: v.replace(f"${k}", os.environ.get(k, "")).strip(os.pathsep)
                              if f"${k}" in v else v for k, v in side["env"].items()})
    side["cwd"].mkdir(parents=True, exist_ok=True)
    Path(side["metrics"]).unlink(missing_ok=True)  # rlkit's jsonl logger appends: no rows of an earlier run
    with open(side["log"], "w") as f:
        proc = subprocess.Popen(side["argv"], cwd=side["cwd"], env=env, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the process group this side's command leads
            return f"timed out after {timeout} s, exit status {proc.wait()}"


def _write_run_record(side: dict, record: dict, status) -> None:
    """``<side folder>/run.json``: the machine ``record``, the side's command and ``status``."""
    side["cwd"].mkdir(parents=True, exist_ok=True)
    run_record = dict(record, status=status, command=shell_line(side["argv"], side["env"]))
    (side["cwd"] / RUN_RECORD).write_text(json.dumps(run_record, indent=1))


def run_plan(plan: dict[str, dict], warmup: int = 2, timeout: float | None = None, summarize=None, run: bool = True,
             record: dict | None = None, **summary_kw) -> dict[str, dict]:
    """Run the sides of ``plan`` (:func:`plan_sides`) one after another, each in its folder with its output in its
    log, and summarize each: ``summarize(rows)`` of its metric rows, by default :func:`side_summary` with
    ``warmup`` and ``summary_kw``. A side stopped by ``timeout`` after logging more than ``warmup`` steps is
    summarized from those, with ``partial`` saying why. A side that fails, times out sooner or logs too few
    steps does not stop the next; then
    :class:`SidesFailed` (a SystemExit) names each failed side with its log's last lines and keeps the finished
    sides' summaries. ``$K`` in the value of ``K``: its current value. ``run=False`` runs nothing and summarizes
    the metrics the sides left earlier (a side without them is named, with its log's last lines if it ran).
    ``record``: the machine (:func:`run_machine`); each side that runs leaves it in ``<folder>/run.json`` with
    its ``command`` and how it ended (``status``: its exit status or why it was stopped), and ``run=False`` reads
    that status back, so a side that timed out is summarized as ``partial`` and one that failed fails again.
    The record is written when the side starts, with :data:`RUNNING` as its status: files copied off a machine
    before the side ended still name the machine, and read back they are summarized as ``partial``."""
    if summarize is None:
        def summarize(rows):
            return side_summary(rows, warmup, **summary_kw)
    done, failed = {}, {}
    for name, side in plan.items():
        if run:
            if record is not None:
                _write_run_record(side, record, RUNNING)
            status = _run_side(name, side, timeout)
            if record is not None:
                _write_run_record(side, record, status)
        else:
            status = _side_run(side["cwd"]).get("status", 0)
        has_log = Path(side["log"]).exists()  # it ran (now, or earlier for run=False): its log says why it failed
        try:
            if isinstance(status, str) and Path(side["metrics"]).exists():  # timed out: keep its measured steps
                try:
                    summary = summarize(side["read"](side["metrics"]))
                except ValueError as e:  # too few steps: the timeout is the failure
                    status = f"{status}; {e}"
                else:
                    if isinstance(summary, dict):  # a summary says it is partial; bare rows (learning) cannot
                        done[name] = dict(summary, partial=status)
                        print(f"peers: side {name} {status}; summarized from the steps it logged", file=sys.stderr)
                        continue
            if status != 0:
                raise RuntimeError(f"exit status {status}" if isinstance(status, int) else status)
            if not Path(side["metrics"]).exists():
                first = "" if run or has_log else ": run this side first"
                raise RuntimeError(f"no metrics at {side['metrics']}{first}")
            done[name] = summarize(side["read"](side["metrics"]))
        except (RuntimeError, ValueError, KeyError) as e:
            failed[name] = f"side {name} failed ({e})"
            if has_log:
                tail = "\n".join(Path(side["log"]).read_text(errors="replace").splitlines()[-25:])
                failed[name] += f"; last lines of {side['log']}:\n{tail}"
    if failed:
        raise SidesFailed(done, failed)
    return done


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m rlkit.bench.peers", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sides", default="rlkit,verl", help="comma-separated, run in this order: rlkit, verl, trl")
    p.add_argument("--estimator", default="gae", choices=["gae", "grpo"], help="gae: PPO with a critic; grpo: n=5")
    p.add_argument("--out", default="peers", help="folder for the model, each side's run and log, and peers.json")
    p.add_argument("--dry-run", action="store_true", help="print the commands with their environment; run nothing")
    p.add_argument("--data", default="~/data/gsm8k", help="folder with GSM8K train/test.parquet (verl schema)")
    p.add_argument("--tokenizer", default="Qwen/Qwen2.5-0.5B", help="tokenizer folder or hub id (Qwen2.5's)")
    p.add_argument("--prompts", type=int, default=256)
    p.add_argument("--n", type=int, default=None, help="responses per prompt (default: 1 for gae, 5 for grpo)")
    p.add_argument("--steps", type=int, default=7, help="steps per side: --warmup ones, then the measured ones")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--override", action="append", default=[], help="extra key=value for every side (repeatable)")
    p.add_argument("--side-override", action="append", default=[], metavar="SIDE:KEY=VALUE",
                   help="extra key=value for one side, after --override (repeatable; e.g. an rlkit-only key)")
    p.add_argument("--trl-site", default="/tmp/site-trl", help="TRL 1.12.0 unpacked here: on verl's path with a critic")
    p.add_argument("--timeout", type=float, default=None, help="seconds per side (default: none)")
    p.add_argument("--from-logs", action="store_true",
                   help="run nothing: summarize the metrics the sides left in --out earlier (e.g. one side per run)")
    p.set_defaults(shape="0.5b", prompt_len=512, response_len=512, mini_batch=64, micro_batch=8,  # e2e's settings
                   log_prob_micro_batch=16, gpu_memory_utilization=0.5)  # (--override changes them)
    return p


def _side_run(folder) -> dict:
    """What :func:`run_plan` recorded in a side's folder when it ran it (``{}`` for none)."""
    path = Path(folder) / RUN_RECORD
    return json.loads(path.read_text()) if path.exists() else {}


def run_machine(result_file, from_logs: bool, peers=("verl", "trl"), folders=None) -> tuple[dict, float | None]:
    """``(record, peak bf16 FLOP/s)`` of the machine the sides ran on, as :func:`rlkit.bench.e2e.machine_record`
    gives it, with the ``peers``' versions as this interpreter sees them. ``from_logs``: the sides ran earlier,
    maybe elsewhere, so the record is the one their earlier ``result_file`` holds (this machine's would be wrong);
    without that file, a record that says so and no peak. ``folders`` (side -> folder): with ``from_logs``, the
    machines each side's own run recorded (:func:`run_plan`) go under ``side_runs``, and fill the versions the
    earlier file lacks (sides run one per command each see only their own peer: a verl-only run records no TRL)."""
    if not from_logs:
        record, peak = e2e.machine_record()
        record["versions"].update({name: e2e._version(name) for name in peers})
        return record, peak
    path = Path(result_file)
    runs = {name: _side_run(folder) for name, folder in (folders or {}).items()}
    runs = {name: r for name, r in runs.items() if r}  # the sides that left a run.json
    if path.exists():
        res = json.loads(path.read_text())
    elif runs:  # the first side's machine
        res = next(iter(runs.values()))
    else:
        return dict(date=None, card=f"not recorded (--from-logs without an earlier {path.name})", versions={}), None
    record = {k: res[k] for k in ("date", "card", "versions") if k in res}
    if runs:
        versions = record.setdefault("versions", {})
        for r in runs.values():
            versions.update({k: v for k, v in r.get("versions", {}).items() if versions.get(k) is None})
        record["side_runs"] = {n: {k: r.get(k) for k in ("date", "card", "status")} for n, r in runs.items()}
    from rlkit.diagnostics.flops import peak_flops

    return record, peak_flops(record.get("card"))


def side_overrides(entries: list[str], sides: list[str]) -> dict[str, list[str]]:
    """``--side-override`` entries (``SIDE:key=value``) as ``{side: [key=value, ...]}``; a SystemExit naming the
    entry when its side is not one of ``sides`` or it is no ``key=value``.

    >>> from rlkit.bench.peers import side_overrides
    >>> side_overrides(["rlkit:actor_rollout_ref.actor.recompute_old_log_prob=False"], ["rlkit", "trl"])
    {'rlkit': ['actor_rollout_ref.actor.recompute_old_log_prob=False']}
    """
    out: dict[str, list[str]] = {}
    for entry in entries:
        side, _, kv = entry.partition(":")
        if side not in sides or "=" not in kv:
            raise SystemExit(f"--side-override {entry!r}: write SIDE:key=value with SIDE one of the sides run here "
                             f"({', '.join(sides)}), e.g. rlkit:actor_rollout_ref.model.use_remove_padding=True")
        out.setdefault(side, []).append(kv)
    return out


def plan_sides(args, sides: list[str], model=None, side_keys=None) -> dict[str, dict]:
    """Per side: argv, environment, folder, log, metrics file and its reader. ``model``: the checkpoint folder
    (default ``<out>/model``); ``side_keys(folder)``: more keys for the side run in ``folder``."""
    out, data = Path(args.out).expanduser().resolve(), e2e.data_files(args.data, check=False)
    own = side_overrides(getattr(args, "side_override", []), sides)  # learning's arguments have none
    plan = {}
    for name in sides:
        o, metrics = common_overrides(args, model or out / "model", data, out / name), out / name / "metrics.jsonl"
        o = merge(o, side_keys(out / name)) if side_keys else o
        o = merge(o, own.get(name, []))
        if name == "verl":
            (argv, env), read = verl_command(o, metrics, args.estimator == "gae", args.trl_site), read_verl_metrics
        elif name == "trl":  # the driver takes the same keys and writes rlkit-style rows
            (argv, env), read = ([sys.executable, "-m", TRL_DRIVER, f"--metrics={metrics}", *o], {}), read_rlkit_metrics
        else:
            (argv, env), read = rlkit_command(o), read_rlkit_metrics
        plan[name] = dict(argv=argv, env=env, cwd=out / name, log=out / f"{name}.log", metrics=metrics, read=read)
    return plan


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    if not sides or any(s not in SIDES for s in sides):
        raise SystemExit(f"--sides {args.sides!r}: choose from {', '.join(SIDES)}")
    plan, out = plan_sides(args, sides), Path(args.out).expanduser().resolve()
    trl_missing = importlib.util.find_spec(TRL_PACKAGE) is None
    if args.dry_run:
        print(f"# {args.estimator}, {args.steps} steps per side ({args.warmup} warm-up), from the project root after "
              f"`source .gpu/setup.sh`; the run first writes a random-weight Qwen2.5 {args.shape} shape with the "
              f"{args.tokenizer} tokenizer to {out / 'model'} (rlkit.bench.e2e.make_model)")
        for name, side in plan.items():
            skip = "# " if name == "trl" and trl_missing else ""
            note = f" - needs TRL {peer_trl.TRL_VERSION} here ({peer_trl.INSTALL})" if skip else ""
            print(f"\n# {name}{note}: output to "
                  f"{side['log']}, metrics to {side['metrics']}" + ("\n# expected to fail without flash-attn: verl's "
                  "critic loader asks for flash_attention_2" if name == "verl" and "PYTHONPATH" in side["env"] else ""))
            line = f"cd {shlex.quote(str(side['cwd']))} && {shell_line(side['argv'], side['env'], CONTINUED)}"
            print("\n".join(skip + x for x in line.splitlines()))
        return {name: {k: side[k] for k in ("argv", "env")} for name, side in plan.items()}
    if "trl" in plan and trl_missing:
        raise SystemExit(f"the trl side's driver {TRL_DRIVER} needs TRL {peer_trl.TRL_VERSION} in {sys.executable}: "
                         f"{peer_trl.INSTALL}; or run --sides rlkit,verl, or --dry-run to see the command it will take")
    if args.from_logs:  # the model's dimensions are the shape's; nothing is written but peers.json
        from rlkit.bench.rollout import SHAPES

        model_cfg = {k: v for k, v in SHAPES[args.shape].items() if k != "tie_word_embeddings"}
    else:
        e2e.data_files(args.data)  # stops here when GSM8K is not prepared
        _, model_cfg = e2e.make_model(args.shape, args.tokenizer, out / "model")
    machine, peak = run_machine(out / "peers.json", args.from_logs, folders={n: s["cwd"] for n, s in plan.items()})
    failure, kw = None, dict(model_cfg=model_cfg, peak=peak, sequences=args.prompts * responses_per_prompt(args))
    try:
        summaries = run_plan(plan, args.warmup, args.timeout, run=not args.from_logs, record=machine, **kw)
    except SidesFailed as e:  # keep what the finished sides measured; exit non-zero after writing it
        summaries, failure = e.done, e
    # the command each side ran: as its run.json recorded it (--from-logs), else as planned now
    commands = {n: _side_run(s["cwd"]).get("command") or shell_line(s["argv"], s["env"]) for n, s in plan.items()}
    res = dict(machine, setup=vars(args), summary=summaries, commands=commands)
    if failure is not None:
        res["failed"] = failure.failed
    if "rlkit" in summaries and len(summaries) > 1:
        res["comparison"] = compare(summaries)
    from rlkit.diagnostics.memory import sanitize

    res = sanitize(json.loads(json.dumps(res, default=float)))  # shareable: no local paths or addresses
    (out / "peers.json").write_text(json.dumps(res, indent=1))
    if summaries:
        from rlkit.viz.plots import plot_peers

        title = (f"{args.estimator}, {args.prompts} prompts x {responses_per_prompt(args)}, "
                 f"{args.prompt_len}/{args.response_len} tokens, {res.get('card') or 'card not recorded'}")
        plot_peers(res["summary"], PHASES, title=title).savefig(out / "peers.png", dpi=120, bbox_inches="tight")
    print(res.get("comparison", {}).get("table") or json.dumps(res["summary"], indent=1))
    if failure is not None:
        raise failure
    return res


if __name__ == "__main__":
    main()
