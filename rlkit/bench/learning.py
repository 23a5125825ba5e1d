"""Learning side by side: one GRPO run in rlkit and the same run in verl, with reward and format-rate curves.

    python -m rlkit.bench.learning --model SmolLM2-135M-Instruct.Q4_1.gguf --data ~/data/gsm8k --out learning

Both sides get :mod:`rlkit.bench.peers`' shared keys plus :func:`learning_keys` (GRPO, ``--prompts`` x ``--n``
responses per step, ``--steps`` steps, the same seed, validation on the whole test set before training and after
the last step) and score with the same file, :func:`write_reward_file`: rlkit's GSM8K scorer with
``format_score`` (0.1 by default: a readable ``#### <number>`` earns 0.1, a right one 1), loaded by each side
as its ``custom_reward_function``. Each side dumps every step's responses (``trainer.rollout_data_dir``) and
each validation pass (``trainer.validation_data_dir``) as jsonl; :func:`curves` reads them back and scores them
once more with one scorer, so the numbers of the two sides are counted the same way:

* ``score``: the step's mean reward (``critic/score/mean`` of its metrics),
* ``format``: the share of the step's responses with a strict ``#### <number>`` answer,
* validation accuracy, strict and flexible (the last number in the response), before and after training,
* ``logged``: what each side logged that can explain a gap between curves (:data:`LOGGED`: response length,
  gradient norm, entropy, KL loss, clipped fraction, the same keys in both frameworks; and rlkit's alone, how far
  each optimizer step moved the weights, ``actor/update_norm``, and AdamW's step count, ``actor/optimizer_steps``).

``--model`` takes a Hugging Face folder or a ``.gguf`` file (de-quantised once into rlkit's cache; verl gets that
folder). ``--dry-run`` prints the two commands and runs nothing; ``--from-logs`` runs nothing and reads what the
sides left in ``--out``; ``--save-freq N`` checkpoints every N steps, and a rerun resumes a side stopped early.
``--recorded rlkit=<earlier learning.json>`` takes a side's curves from an earlier run with the same settings
(:func:`recorded_sides`) and runs only the other side; the checks of prompts and rewards cover it as well.
Results go to ``<out>/learning.json`` and the figure to ``<out>/learning.png``
(:func:`rlkit.viz.plots.plot_learning`).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from rlkit.bench import peers

SIDES = ("rlkit", "verl")
LOGGED = ("response_length/mean", "actor/grad_norm", "actor/entropy", "actor/kl_loss", "actor/pg_clipfrac",
          "actor/update_norm", "actor/optimizer_steps")
EARLIER = "metrics.earlier.jsonl"  # a resumed side's rows from before (keep_earlier)
REWARD_FILE = "gsm8k_reward.py"
REWARD_SOURCE = '''"""Written by rlkit.bench.learning: the reward both sides load (custom_reward_function)."""
from rlkit.rewards.gsm8k import compute_score as _gsm8k


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **reward_kwargs):
    return _gsm8k(solution_str, ground_truth, **reward_kwargs)
'''


def write_reward_file(folder) -> Path:
    """``<folder>/gsm8k_reward.py``: ``compute_score(data_source, solution_str, ground_truth, extra_info=None,
    **reward_kwargs)`` (verl's custom reward signature) calling :func:`rlkit.rewards.gsm8k.compute_score`.

    >>> import tempfile, importlib.util
    >>> from rlkit.bench.learning import write_reward_file
    >>> path = write_reward_file(tempfile.mkdtemp())
    >>> spec = importlib.util.spec_from_file_location("reward", path); mod = importlib.util.module_from_spec(spec)
    >>> spec.loader.exec_module(mod)
    >>> [mod.compute_score("openai/gsm8k", text, "72", format_score=0.1) for text in ("#### 72", "#### 7", "72")]
    [1.0, 0.1, 0.0]
    """
    path = Path(folder).expanduser().resolve() / REWARD_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(REWARD_SOURCE)
    return path


def learning_keys(args, reward_file) -> list[str]:
    """The keys of the learning run, on top of :func:`rlkit.bench.peers.common_overrides` (``args``:
    :func:`build_parser`'s): optimiser, sampling, seed, validation schedule and the shared reward."""
    return [f"actor_rollout_ref.actor.optim.lr={args.lr}", f"data.seed={args.seed}",
            f"actor_rollout_ref.rollout.temperature={args.temperature}",
            f"actor_rollout_ref.actor.kl_loss_coef={args.kl_coef}", "actor_rollout_ref.actor.kl_loss_type=low_var_kl",
            "algorithm.use_kl_in_reward=False", "trainer.val_before_train=True", f"trainer.test_freq={args.steps}",
            "data.dataloader_num_workers=0",  # verl's prompt order without loader workers (rlkit follows either)
            # verl 0.9's main_ppo reads the reward function from its `reward` group only (rlkit reads both spellings)
            f"reward.custom_reward_function.path={reward_file}", "reward.custom_reward_function.name=compute_score",
            f"+reward.custom_reward_function.reward_kwargs.format_score={args.format_score}"]


def dump_keys(folder) -> list[str]:
    """Per side: its rollouts and validation generations as jsonl in ``<folder>/rollouts`` and ``<folder>/val``."""
    folder = Path(folder)
    return [f"trainer.rollout_data_dir={folder / 'rollouts'}", f"trainer.validation_data_dir={folder / 'val'}"]


def resume_keys(args, folder) -> list[str]:
    """With ``--save-freq N``: the side checkpoints every N steps in its ``folder`` (the newest kept) and a rerun
    resumes from there (``trainer.resume_mode=auto``); a side that holds a checkpoint already validated before
    training, so it does not again.

    >>> import argparse, tempfile
    >>> from pathlib import Path
    >>> from rlkit.bench.learning import resume_keys
    >>> folder = Path(tempfile.mkdtemp())
    >>> resume_keys(argparse.Namespace(save_freq=0), folder)
    []
    >>> resume_keys(argparse.Namespace(save_freq=10), folder)
    ['trainer.save_freq=10', 'trainer.resume_mode=auto', 'trainer.max_actor_ckpt_to_keep=1']
    >>> (folder / "global_step_10").mkdir()
    >>> resume_keys(argparse.Namespace(save_freq=10), folder)[-1]
    'trainer.val_before_train=False'
    """
    if not args.save_freq:
        return []
    keys = [f"trainer.save_freq={args.save_freq}", "trainer.resume_mode=auto", "trainer.max_actor_ckpt_to_keep=1"]
    return keys + (["trainer.val_before_train=False"] if _checkpoints(folder) else [])


def _checkpoints(folder) -> list[Path]:
    return sorted(Path(folder).glob("global_step_*"))


def keep_earlier(side: dict, resumes: bool) -> None:
    """Before a side runs: if it ``resumes`` from a checkpoint in its folder, its metric rows and log so far move to
    ``metrics.earlier.jsonl`` and ``<name>.earlier.log`` (appended: a side can resume many times), since the run
    truncates both; otherwise it starts afresh and earlier rows are dropped."""
    metrics, log = Path(side["metrics"]), Path(side["log"])
    earlier = metrics.with_name(EARLIER)
    if not (resumes and _checkpoints(side["cwd"])):
        earlier.unlink(missing_ok=True)
        return
    for path, to in ((metrics, earlier), (log, log.with_name(log.stem + ".earlier.log"))):
        if path.exists():
            with open(to, "a") as f:
                f.write(path.read_text(errors="replace"))
            path.unlink()


def with_earlier(read):
    """``read`` (a side's metric reader) that also returns the rows of ``metrics.earlier.jsonl`` beside the file,
    the newest row of a step winning (a resumed side repeats the steps after its checkpoint)."""
    def read_all(path):
        rows = {}
        for f in (Path(path).with_name(EARLIER), Path(path)):
            for r in read(f) if f.exists() else []:
                rows[r["step"]] = r
        return [rows[s] for s in sorted(rows)]

    return read_all


def _step_files(folder: Path) -> dict[int, Path]:
    """``{step: path}`` of the ``<step>.jsonl`` files in ``folder`` (verl's and rlkit's dump names)."""
    return {int(p.stem): p for p in folder.glob("*.jsonl") if p.stem.isdigit()} if folder.is_dir() else {}


def format_rate(outputs: list[str]) -> float:
    """The share of ``outputs`` that hold a strict GSM8K answer (``#### <number>``).

    >>> from rlkit.bench.learning import format_rate
    >>> format_rate(["so #### 12", "12", "#### 1,000", "####"])
    0.5
    """
    from rlkit.rewards.gsm8k import extract_solution

    return sum(extract_solution(o, "strict") is not None for o in outputs) / len(outputs) if outputs else float("nan")


def accuracy(rows: list[dict], method: str) -> float:
    """The share of dumped validation ``rows`` (``output``, ``gts``) right under ``method`` (strict | flexible).

    >>> from rlkit.bench.learning import accuracy
    >>> rows = [{"output": "#### 3", "gts": "3"}, {"output": "it is 3", "gts": "3"}, {"output": "#### 4", "gts": "3"}]
    >>> accuracy(rows, "strict"), accuracy(rows, "flexible")
    (0.3333333333333333, 0.6666666666666666)
    """
    from rlkit.rewards.gsm8k import compute_score

    if not rows:
        return float("nan")
    return sum(compute_score(r["output"], str(r["gts"]), method=method) == 1.0 for r in rows) / len(rows)


def prompts_digest(rows: list[dict]) -> str:
    """A short digest of the multiset of ground truths in a step's dumped ``rows``: equal on two sides when they
    drew the same prompts (each side decodes its prompts its own way; the ground truths are the data's).

    >>> from rlkit.bench.learning import prompts_digest
    >>> prompts_digest([{"gts": "3"}, {"gts": "72"}]) == prompts_digest([{"gts": "72"}, {"gts": 3}])
    True
    """
    import hashlib

    return hashlib.sha1("\n".join(sorted(str(r["gts"]) for r in rows)).encode()).hexdigest()[:12]


def inputs_digest(rows: list[dict]) -> str:
    """A short digest of the multiset of prompt texts (``input``) in a step's dumped ``rows``. verl and rlkit both
    dump a prompt as its tokens decoded without padding or special tokens, so equal digests mean both sides
    rendered the same prompts into the same tokens (chat template, system prompt, truncation).

    >>> from rlkit.bench.learning import inputs_digest
    >>> inputs_digest([{"input": "a"}, {"input": "b"}]) == inputs_digest([{"input": "b"}, {"input": "a"}])
    True
    >>> inputs_digest([{"input": "user\\nq"}]) == inputs_digest([{"input": "system\\nbe brief\\nuser\\nq"}])
    False
    """
    import hashlib

    return hashlib.sha1("\x00".join(sorted(str(r.get("input")) for r in rows)).encode()).hexdigest()[:12]


def same_inputs(sides: dict[str, dict]) -> dict:
    """Over the steps every side dumped with the same prompts (:func:`same_prompts`) and an ``inputs`` digest (a
    record from before that digest has none): how many show the same prompt texts on all sides.

    >>> from rlkit.bench.learning import same_inputs
    >>> a = {"steps": [{"step": 1, "prompts": "x", "inputs": "i"}, {"step": 2, "prompts": "y", "inputs": "j"}]}
    >>> same_inputs({"rlkit": a, "verl": {"steps": [{"step": 1, "prompts": "x", "inputs": "k"},
    ...                                               {"step": 2, "prompts": "z", "inputs": "j"}]}})
    {'steps': 1, 'same': 0, 'first_different': 1}
    """
    return _agreement(sides, "inputs", among="prompts")


def same_prompts(sides: dict[str, dict]) -> dict:
    """Over the steps every side dumped: how many drew the same prompts on all sides (``prompts`` digests).

    >>> from rlkit.bench.learning import same_prompts
    >>> a = {"steps": [{"step": 1, "prompts": "x"}, {"step": 2, "prompts": "y"}]}
    >>> same_prompts({"rlkit": a, "verl": {"steps": [{"step": 1, "prompts": "x"}, {"step": 2, "prompts": "z"}]}})
    {'steps': 2, 'same': 1, 'first_different': 2}
    """
    return _agreement(sides, "prompts")


def _agreement(sides: dict[str, dict], field: str, among: str | None = None) -> dict:
    """``{"steps", "same", "first_different"}`` of ``field`` over the steps every side recorded it for (and, with
    ``among``, where the sides agree on ``among``)."""
    by_side = [{s["step"]: (s.get(among), s[field]) for s in side["steps"] if s.get(field)} for side in sides.values()]
    common = sorted(set.intersection(*(set(d) for d in by_side))) if by_side else []
    common = [step for step in common if len({d[step][0] for d in by_side}) == 1]  # (always one without among)
    differ = [step for step in common if len({d[step][1] for d in by_side}) > 1]
    return dict(steps=len(common), same=len(common) - len(differ), first_different=differ[0] if differ else None)


def curves(folder, metric_rows: list[dict], format_score: float = 0.1) -> dict:
    """One side's learning record from its folder's dumps and its metric rows: per step ``score`` (the logged
    ``critic/score/mean``), ``score_dumped`` (the mean of the dumped scores), ``score_shared`` (the same responses
    scored again with the shared reward, ``format_score`` included), ``format``, ``responses``, ``prompts``
    (:func:`prompts_digest`), ``inputs`` (:func:`inputs_digest`), ``logged`` (the step's metrics named in
    :data:`LOGGED` that the side wrote); and validation accuracy ``{step: {"strict", "flexible", "n"}}`` for each validation pass."""
    from rlkit.rewards.gsm8k import compute_score

    folder = Path(folder)
    by_step = {r["step"]: r for r in metric_rows if "step" in r}
    steps = []
    for step, path in sorted(_step_files(folder / "rollouts").items()):
        rows = peers.e2e.read_jsonl(path)
        mean = statistics.fmean if rows else (lambda _: None)
        row = by_step.get(step, {})
        steps.append(dict(step=step, score=row.get("critic/score/mean"), responses=len(rows),
                          score_dumped=mean(float(r["score"]) for r in rows),
                          score_shared=mean(compute_score(r["output"], str(r["gts"]), format_score=format_score)
                                            for r in rows),
                          format=format_rate([r["output"] for r in rows]), prompts=prompts_digest(rows),
                          inputs=inputs_digest(rows), logged={k: row[k] for k in LOGGED if k in row}))
    val = {}
    for step, path in sorted(_step_files(folder / "val").items()):
        rows = peers.e2e.read_jsonl(path)
        val[step] = dict(strict=accuracy(rows, "strict"), flexible=accuracy(rows, "flexible"), n=len(rows),
                         format=format_rate([r["output"] for r in rows]))
    return dict(steps=steps, val=val)


def comparison_problems(sides: dict[str, dict]) -> list[str]:
    """Why ``sides`` (:func:`curves` records) are not the same run in two frameworks, each with the step it shows
    first: a side whose dumped rewards differ from the shared reward (it scored with another function), steps
    whose prompts differ between the sides, or steps with the same prompts whose texts differ
    (:func:`same_inputs`). Empty when the comparison holds.

    >>> from rlkit.bench.learning import comparison_problems
    >>> ok = {"steps": [{"step": 1, "score_dumped": 0.1, "score_shared": 0.1, "prompts": "x"}]}
    >>> comparison_problems({"rlkit": ok, "verl": ok})
    []
    >>> off = {"steps": [{"step": 1, "score_dumped": 0.0, "score_shared": 0.1, "prompts": "y"}]}
    >>> for p in comparison_problems({"rlkit": ok, "verl": off}): print(p)
    verl: the dumped rewards differ from the shared reward at 1 of 1 steps (first: step 1, 0 vs 0.1): it did not score with the shared reward file
    the sides drew different prompts at 1 of 1 steps (first: step 1): the same data.seed and data.dataloader_num_workers give the same prompts
    """
    problems = []
    for name, side in sides.items():
        off = [s for s in side["steps"] if s.get("score_dumped") is not None and s.get("score_shared") is not None
               and abs(s["score_dumped"] - s["score_shared"]) > 1e-6]
        if off:
            problems.append(f"{name}: the dumped rewards differ from the shared reward at {len(off)} of "
                            f"{len(side['steps'])} steps (first: step {off[0]['step']}, {off[0]['score_dumped']:.4g} "
                            f"vs {off[0]['score_shared']:.4g}): it did not score with the shared reward file")
    if len(sides) > 1:
        same = same_prompts(sides)
        if same["first_different"] is not None:
            problems.append(f"the sides drew different prompts at {same['steps'] - same['same']} of {same['steps']} "
                            f"steps (first: step {same['first_different']}): the same data.seed and "
                            "data.dataloader_num_workers give the same prompts")
        texts = same_inputs(sides)
        if texts["first_different"] is not None:
            problems.append(f"the sides turned the same prompts into different texts at {texts['steps'] - texts['same']}"
                            f" of {texts['steps']} steps (first: step {texts['first_different']}): compare the "
                            "dumped inputs (chat template, system prompt, truncation)")
    return problems


# What makes two learning runs the same run (besides the extra --override keys): build_parser's settings
RUN_SETTINGS = ("estimator", "prompts", "n", "steps", "lr", "kl_coef", "temperature", "format_score", "seed",
                "prompt_len", "response_len", "mini_batch")


def run_keys(overrides: list[str]) -> list[str]:
    """The extra ``--override`` keys that change what a run computes: keys rlkit accepts without reading (speed,
    memory or I/O only, :data:`rlkit.config.ACCEPTED_UNREAD_KEYS`) are left out, the rest sorted.

    >>> from rlkit.bench.learning import run_keys
    >>> run_keys(["actor_rollout_ref.model.use_fused_kernels=True", "actor_rollout_ref.actor.clip_ratio=0.3"])
    ['actor_rollout_ref.actor.clip_ratio=0.3']
    """
    from rlkit.config import ACCEPTED_UNREAD_KEYS

    return sorted(o for o in overrides if peers.key(o) not in ACCEPTED_UNREAD_KEYS)


def setting_differences(then: dict, now: dict, ignore: tuple[str, ...] = ()) -> list[tuple[str, object, object]]:
    """``(key, then's value, now's value)`` for each setting two runs' ``setup`` records differently: the
    :data:`RUN_SETTINGS` not in ``ignore``, and the ``--override`` keys that change the run (:func:`run_keys`).

    >>> from rlkit.bench.learning import setting_differences
    >>> setting_differences({"lr": 1e-5, "seed": 1, "extra_overrides": ["actor_rollout_ref.model.use_fused_kernels=True"]},
    ...                     {"lr": 2e-5, "seed": 2, "extra_overrides": []}, ignore=("seed",))
    [('lr', 1e-05, 2e-05)]
    """
    a, b = ({**x, "extra_overrides": run_keys(x.get("extra_overrides", []))} for x in (then, now))
    return [(k, a.get(k), b.get(k)) for k in RUN_SETTINGS + ("extra_overrides",)
            if k not in ignore and a.get(k) != b.get(k)]


def recorded_sides(specs: list[str], setup: dict, running: list[str]) -> dict[str, dict]:
    """``--recorded SIDE=learning.json``: SIDE's curves as an earlier run recorded them, for a comparison that runs
    only the other side. Each record is ``{"curves", "from", "date", "card", "versions", "command"}``; refused
    with the difference when the recorded run had other settings (:data:`RUN_SETTINGS`, :func:`run_keys`) than
    ``setup`` (this run's), and when SIDE also runs now or the file holds no SIDE."""
    records = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or name not in SIDES or not path:
            raise SystemExit(f"--recorded {spec!r}: write SIDE=PATH, SIDE one of {', '.join(SIDES)} and PATH a "
                             "learning.json an earlier run wrote")
        if name in running or name in records:
            raise SystemExit(f"--recorded {spec!r}: {name} is already in this comparison (--sides or another "
                             f"--recorded); drop one of the two")
        file = Path(path).expanduser()
        try:
            res = json.loads(file.read_text())
        except (OSError, ValueError) as e:
            raise SystemExit(f"--recorded {spec!r}: cannot read {file} ({e}): give a learning.json an earlier run "
                             "wrote") from None
        if name not in res.get("sides", {}):
            raise SystemExit(f"--recorded {spec!r}: {file} holds no {name} side (it has: "
                             f"{', '.join(res.get('sides', {})) or 'none'})")
        differ = [f"{k}: recorded {a!r}, now {b!r}" for k, a, b in setting_differences(res.get("setup", {}), setup)]
        if differ:
            raise SystemExit(f"--recorded {spec!r}: that {name} run had other settings, so its curves would not "
                             "compare:\n  " + "\n  ".join(differ) + f"\nRun {name} again with --sides, or give "
                             "this run the recorded settings.")
        records[name] = {"curves": res["sides"][name], "from": str(file),
                         **{k: res.get(k) for k in ("date", "card", "versions")},
                         "command": res.get("commands", {}).get(name)}
    return records


def _in_side_order(by_side: dict) -> dict:
    """``by_side`` with its sides in :data:`SIDES` order (run now or recorded, rlkit first)."""
    return {n: by_side[n] for n in SIDES if n in by_side}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m rlkit.bench.learning", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="Hugging Face folder, or a .gguf file (SmolLM2-135M-Instruct's)")
    p.add_argument("--sides", default="rlkit,verl", help="comma-separated, run in this order: rlkit, verl")
    p.add_argument("--out", default="learning", help="folder for the reward file, each side's run, log and dumps")
    p.add_argument("--data", default="~/data/gsm8k", help="folder with GSM8K train/test.parquet (verl schema)")
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--n", type=int, default=4, help="responses per prompt")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--kl-coef", type=float, default=0.001, help="actor_rollout_ref.actor.kl_loss_coef")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--format-score", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=1, help="data.seed (prompt order)")
    p.add_argument("--override", action="append", default=[], help="extra key=value for both sides (repeatable)")
    p.add_argument("--timeout", type=float, default=None, help="seconds per side (default: none)")
    p.add_argument("--save-freq", type=int, default=0,
                   help="checkpoint every N steps; rerun with the same --out to resume a side stopped by --timeout")
    p.add_argument("--dry-run", action="store_true", help="print the commands with their environment; run nothing")
    p.add_argument("--from-logs", action="store_true",
                   help="run nothing: the curves and figure again from the dumps and metrics the sides left in --out")
    p.add_argument("--recorded", action="append", default=[], metavar="SIDE=PATH",
                   help="compare with SIDE as the learning.json at PATH recorded it (the same settings), instead of "
                        "running it again (repeatable)")
    p.set_defaults(estimator="grpo", prompt_len=512, response_len=512, mini_batch=None, micro_batch=16,
                   log_prob_micro_batch=32, gpu_memory_utilization=0.4, trl_site=None, warmup=0)
    return p


def resolve_model(path: str) -> str:
    """A Hugging Face folder for ``path`` (a ``.gguf`` file is de-quantised once into rlkit's cache)."""
    from rlkit.training.models import resolve_model_path

    p = Path(path).expanduser()
    if not p.exists():
        raise SystemExit(f"--model {path}: no such file or folder")
    return resolve_model_path(str(p.resolve()))


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    if not sides or any(s not in SIDES for s in sides):
        raise SystemExit(f"--sides {args.sides!r}: choose from {', '.join(SIDES)}")
    args.mini_batch = args.mini_batch or args.prompts  # one update per step: on-policy GRPO
    out = Path(args.out).expanduser().resolve()
    setup = dict({k: v for k, v in vars(args).items() if k != "override"}, extra_overrides=list(args.override))
    recorded = recorded_sides(args.recorded, setup, sides)  # refused before anything runs
    model = args.model if args.dry_run or args.from_logs else resolve_model(args.model)
    args.override = learning_keys(args, out / REWARD_FILE) + list(args.override)
    plan = peers.plan_sides(args, sides, model=model,
                            side_keys=lambda folder: dump_keys(folder) + resume_keys(args, folder))
    if args.dry_run:
        for name, side in plan.items():
            print(f"\n# {name}: output to {side['log']}\ncd {side['cwd']} && "
                  f"{peers.shell_line(side['argv'], side['env'], peers.CONTINUED)}")
        return {name: {k: side[k] for k in ("argv", "env")} for name, side in plan.items()}
    if not args.from_logs:
        peers.e2e.data_files(args.data)  # stops here when GSM8K is not prepared
        write_reward_file(out)
    machine, _ = peers.run_machine(out / "learning.json", args.from_logs, peers=("verl",),
                                   folders={n: s["cwd"] for n, s in plan.items()})
    for side in plan.values():
        if not args.from_logs:
            keep_earlier(side, resumes=bool(args.save_freq))
        side["read"] = with_earlier(side["read"])
    failure = None
    try:
        rows = peers.run_plan(plan, timeout=args.timeout, summarize=lambda r: r, run=not args.from_logs,
                              record=machine)
    except peers.SidesFailed as e:  # keep the finished side's curves; exit non-zero after writing them
        rows, failure = e.done, e
    sides = {n: r["curves"] for n, r in recorded.items()} | {
        n: curves(plan[n]["cwd"], rows[n], args.format_score) for n in rows}
    commands = {n: r["command"] for n, r in recorded.items()} | {
        n: peers.shell_line(s["argv"], s["env"]) for n, s in plan.items()}
    res = dict(machine, setup=setup, overrides=args.override, sides=_in_side_order(sides),
               commands=_in_side_order(commands))
    if recorded:  # where those curves come from: the machine above ran only the other sides
        res["recorded"] = {n: {k: v for k, v in r.items() if k not in ("curves", "command")}
                           for n, r in recorded.items()}
    if len(res["sides"]) > 1:  # a per-step comparison needs the same prompts at each step (verl and rlkit: the same
        res["same_prompts"] = same_prompts(res["sides"])  # seeded randperm in the first epoch)
        res["same_inputs"] = same_inputs(res["sides"])
    if failure is not None:
        res["failed"] = failure.failed
    res["problems"] = comparison_problems(res["sides"])
    from rlkit.diagnostics.memory import sanitize
    from rlkit.viz.plots import plot_learning

    res = sanitize(json.loads(json.dumps(res, default=float)))
    (out / "learning.json").write_text(json.dumps(res, indent=1))
    plot_learning(res["sides"]).savefig(out / "learning.png", dpi=120, bbox_inches="tight")
    print(json.dumps({n: s["val"] for n, s in res["sides"].items()}, indent=1), file=sys.stderr)
    if failure is not None:
        raise failure
    if res["problems"]:  # written down, and the run says so: these curves do not compare one setting
        raise SystemExit("learning: not a like-for-like comparison:\n  " + "\n  ".join(res["problems"]))
    return res


if __name__ == "__main__":
    main()
