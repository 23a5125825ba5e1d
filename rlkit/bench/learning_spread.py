"""Learning runs across seeds: how far apart the sides' curves fall from one seed to the next.

    python -m rlkit.bench.learning_spread data/gpu/learning_verl_h100/learning.json \\
        data/gpu/learning_seed2_h100/learning.json --out learning_spread

One :mod:`rlkit.bench.learning` run compares rlkit and verl on one seed, and the two sides draw different samples
from the same prompts, so one run cannot tell a lead of a few steps from chance. This reads any number of such
runs (one ``learning.json`` each, with the same settings and any seeds) and gives, per run and side:

* ``milestones``: the first step whose format rate reaches 50% and 95% (``None`` if it never does),
* ``reward``: the mean training reward over steps 1-10, 11-30 and 31-60 (``None`` where the run is shorter),
* ``first_step_format``: how many of step 1's responses had the format. Both sides sample the same weights at
  step 1, before any update, so this count differs by sampling alone.

Across runs, per side: the values of each milestone and their mean, min and max; and paired per run, the
milestone's step in rlkit minus verl's (positive: verl got there first), how often each side was first (a side
that got there when the other never did counts as first), and the exact two-sided sign-test p-value of those
counts (ties left out). Runs with a recorded problem, without both
sides, or with other settings are refused, naming the run and the setting. Results go to
``<out>/learning_spread.json`` and the figure to ``<out>/learning_spread.png``
(:func:`rlkit.viz.plots.plot_learning_spread`).
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

from rlkit.bench import learning

LEVELS = (0.5, 0.95)
WINDOWS = ((1, 10), (11, 30), (31, 60))
FREE = ("seed", "steps")  # the settings runs may differ in (rlkit.bench.learning.RUN_SETTINGS: all the others)


def milestones(steps: list[dict], levels=LEVELS) -> dict[str, int | None]:
    """The first step whose format rate reaches each level (``None``: never in these steps).

    >>> from rlkit.bench.learning_spread import milestones
    >>> milestones([{"step": 1, "format": 0.2}, {"step": 2, "format": 0.6}, {"step": 3, "format": 0.96}])
    {'0.5': 2, '0.95': 3}
    >>> milestones([{"step": 1, "format": 0.2}])
    {'0.5': None, '0.95': None}
    """
    return {str(level): next((r["step"] for r in steps if r["format"] >= level), None) for level in levels}


def window_means(steps: list[dict], windows=WINDOWS) -> dict[str, float | None]:
    """The mean reward (``score``) over each window of steps ``(first, last)``, both included; ``None`` where
    the run lacks a step of the window.

    >>> from rlkit.bench.learning_spread import window_means
    >>> window_means([{"step": s, "score": s / 4} for s in (1, 2, 3)], windows=((1, 2), (2, 4)))
    {'1-2': 0.375, '2-4': None}
    """
    by_step = {r["step"]: r["score"] for r in steps}
    out = {}
    for first, last in windows:
        wanted = range(first, last + 1)
        scores = [by_step.get(s) for s in wanted]
        out[f"{first}-{last}"] = None if any(v is None for v in scores) else statistics.mean(scores)
    return out


def sign_test(wins: int, losses: int) -> float:
    """Exact two-sided sign-test p-value for ``wins`` against ``losses`` (ties left out before): the chance,
    if either side were equally likely to come first, of counts at least this uneven.

    >>> from rlkit.bench.learning_spread import sign_test
    >>> sign_test(2, 0), sign_test(0, 0), round(sign_test(9, 1), 4)
    (0.5, 1.0, 0.0215)
    """
    n = wins + losses
    tail = sum(math.comb(n, i) for i in range(min(wins, losses) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def run_summary(res: dict) -> dict[str, dict]:
    """Per side of one ``learning.json``: its milestones, reward windows and step-1 format count."""
    out = {}
    for side in learning.SIDES:
        steps = res["sides"][side]["steps"]
        first = steps[0]
        out[side] = {"milestones": milestones(steps), "reward": window_means(steps),
                     "first_step_format": round(first["format"] * first["responses"]) if first["step"] == 1 else None}
    return out


def check_runs(runs: dict[str, dict]) -> None:
    """SystemExit naming the run and the reason when a run cannot join the others: a side missing, a problem
    the learning harness recorded, or a setting other than the first run's
    (:func:`rlkit.bench.learning.setting_differences`, all but :data:`FREE`)."""
    first_label, first = next(iter(runs.items()))
    for label, res in runs.items():
        missing = [s for s in learning.SIDES if s not in res.get("sides", {})]
        if missing:
            raise SystemExit(f"{label}: no {', '.join(missing)} side; each run needs both sides "
                             f"(python -m rlkit.bench.learning --sides rlkit,verl)")
        if res.get("problems"):
            raise SystemExit(f"{label}: the learning harness recorded problems, so its sides do not compare one "
                             f"setting: {'; '.join(res['problems'])}")
        differ = learning.setting_differences(res["setup"], first["setup"], ignore=FREE)
        if differ:
            raise SystemExit(f"{label}: other settings than {first_label}'s (" + ", ".join(
                f"{k}={mine!r} against {theirs!r}" for k, mine, theirs in differ) + "); the spread needs runs of one "
                "setting (only the seed and the number of steps may differ)")


def spread(runs: dict[str, dict]) -> dict:
    """The spread of :func:`run_summary` over ``runs`` (label -> a ``learning.json``'s content), per side and
    paired per run (rlkit's milestone step minus verl's)."""
    check_runs(runs)
    per_run = {label: {"seed": res["setup"].get("seed"), "steps": res["setup"].get("steps"),
                       "sides": run_summary(res)} for label, res in runs.items()}
    sides, paired = {}, {}
    for level in map(str, LEVELS):
        for side in learning.SIDES:
            values = [r["sides"][side]["milestones"][level] for r in per_run.values()]
            reached = [v for v in values if v is not None]
            sides.setdefault(side, {})[level] = {
                "values": values, "mean": statistics.mean(reached) if reached else None,
                "min": min(reached, default=None), "max": max(reached, default=None)}
        pairs = [(r["sides"]["rlkit"]["milestones"][level], r["sides"]["verl"]["milestones"][level])
                 for r in per_run.values()]
        diffs = [None if None in pair else pair[0] - pair[1] for pair in pairs]
        # who got there first: the earlier step, or the only side that got there at all in that run
        verl_first = sum(1 for a, b in pairs if b is not None and (a is None or a > b))
        rlkit_first = sum(1 for a, b in pairs if a is not None and (b is None or a < b))
        paired[level] = {"rlkit_minus_verl": diffs, "verl_first": verl_first, "rlkit_first": rlkit_first,
                         "ties": sum(1 for d in diffs if d == 0), "sign_test_p": sign_test(verl_first, rlkit_first)}
    return {"runs": per_run, "sides": sides, "paired": paired}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m rlkit.bench.learning_spread", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="learning.json files of rlkit.bench.learning runs, one per seed")
    p.add_argument("--out", default="learning_spread", help="folder for learning_spread.json and .png")
    return p


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    runs = {}
    for path in map(Path, args.runs):
        if not path.is_file():
            raise SystemExit(f"{path}: no such file; pass the learning.json that rlkit.bench.learning wrote")
        label = path.parent.name or str(path)
        if label in runs:
            raise SystemExit(f"{path}: two runs in folders named {label!r}; the folder name labels a run")
        runs[label] = json.loads(path.read_text())
    res = spread(runs)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "learning_spread.json").write_text(json.dumps(res, indent=1))
    from rlkit.viz.plots import plot_learning_spread

    plot_learning_spread({label: r["sides"] for label, r in runs.items()}).savefig(
        out / "learning_spread.png", dpi=120, bbox_inches="tight")
    for level, p in res["paired"].items():
        print(f"format rate {float(level):.0%}: rlkit minus verl, in steps: {p['rlkit_minus_verl']} "
              f"(verl first {p['verl_first']}, rlkit first {p['rlkit_first']}, ties {p['ties']}; "
              f"sign test p={p['sign_test_p']:.3g})")
    return res


if __name__ == "__main__":
    main()
