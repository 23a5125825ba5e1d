"""rlkit.bench.peers: each side's command, verl's metrics file, the summary and the ratios by hand, the dry run and
the refusals, and running sides as subprocesses (small Python commands stand in for rlkit, verl and TRL: no GPU,
no verl or TRL needed). With RLKIT_VERL_SRC set to an unpacked verl 0.9.1, every key of the verl command is
checked against verl's own config and the whole command line composed by verl's Hydra."""
from __future__ import annotations

import json
import shlex
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from rlkit.bench import e2e, peers
from rlkit.diagnostics import flops
from rlkit.diagnostics.memory import sanitize

DATA = {"train": "/d/train.parquet", "test": "/d/test.parquet"}
SDPA = "+actor_rollout_ref.model.override_config.attn_implementation=sdpa"


def args(*argv):
    return peers.build_parser().parse_args(list(argv))


def as_dict(argv: list[str]) -> dict[str, str]:
    return {peers.key(a): a.split("=", 1)[1] for a in argv}


def test_verl_command_has_the_host_extras_and_every_key_of_the_rlkit_command():
    o = peers.common_overrides(args(), "/m", DATA, "/o/side")
    rl_argv, rl_env = peers.rlkit_command(o)
    v_argv, v_env = peers.verl_command(o, "/o/verl/metrics.jsonl", with_trl_on_path=True, trl_site="/t")
    assert rl_argv[:3] == [sys.executable, "-m", "rlkit.main_ppo"] and rl_env == {}
    assert v_argv[:3] == [sys.executable, "-m", "verl.trainer.main_ppo"]
    for extra in (SDPA, "actor_rollout_ref.model.use_remove_padding=False", "critic.model.use_remove_padding=False",
                  "+actor_rollout_ref.rollout.engine_kwargs.sglang.attention_backend=triton",
                  "+actor_rollout_ref.rollout.engine_kwargs.sglang.sampling_backend=pytorch",
                  "trainer.logger=['file']", "trainer.use_v1=False",
                  "actor_rollout_ref.model.use_fused_kernels=True"):  # verl's fastest log-prob path here
        assert extra in v_argv, extra
    assert not any(a.startswith("actor_rollout_ref.model.use_fused_kernels") for a in rl_argv)  # verl's only
    assert v_env == {"VERL_FILE_LOGGER_PATH": "/o/verl/metrics.jsonl", "SGLANG_ENABLE_TP_MEMORY_INBALANCE_CHECK": "false",
                     "HYDRA_FULL_ERROR": "1", "PYTHONPATH": "/t:$PYTHONPATH"}
    rl, v = as_dict(rl_argv[3:]), as_dict(v_argv[3:])
    assert len(rl) == len(rl_argv) - 3 and len(v) == len(v_argv) - 3  # one entry per key
    assert rl.pop("trainer.logger") == "['jsonl']"
    assert {k: v.get(k) for k in rl} == rl  # every rlkit key goes to verl with the same value
    # rlkit's torch.compile switch also as verl's engine reads it
    assert v["actor_rollout_ref.actor.fsdp_config.use_torch_compile"] == v["critic.fsdp.use_torch_compile"] == "False"
    want = {"data.train_batch_size": "256", "data.max_prompt_length": "512", "data.max_response_length": "512",
            "algorithm.adv_estimator": "gae", "actor_rollout_ref.rollout.n": "1", "actor_rollout_ref.actor.optim.lr": "1e-6",
            "critic.optim.lr": "1e-5", "algorithm.kl_ctrl.kl_coef": "0.001", "actor_rollout_ref.actor.ppo_mini_batch_size": "64",
            "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu": "8", "critic.ppo_micro_batch_size_per_gpu": "8",
            "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu": "16", "actor_rollout_ref.rollout.name": "sglang",
            "actor_rollout_ref.rollout.tensor_model_parallel_size": "1", "trainer.n_gpus_per_node": "1",
            "trainer.total_training_steps": "7", "trainer.val_before_train": "False", "trainer.test_freq": "-1",
            "trainer.save_freq": "-1", "actor_rollout_ref.model.path": "/m", "critic.model.path": "/m",
            "trainer.default_local_dir": "/o/side", "data.train_files": "/d/train.parquet"}
    assert {k: rl.get(k) for k in want} == want


@pytest.mark.parametrize("estimator", ["gae", "grpo"])
def test_rlkit_takes_every_key_of_its_command(estimator):
    from rlkit.config import PPOConfig

    argv, _ = peers.rlkit_command(peers.common_overrides(args("--estimator", estimator), "/m", DATA, "/o"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not even a note about an ignored key
        cfg = PPOConfig.from_overrides(argv[3:])
    assert cfg.actor_rollout_ref.rollout.n == (5 if estimator == "grpo" else 1) and cfg.trainer.logger == ["jsonl"]
    assert cfg.actor_rollout_ref.model.enable_gradient_checkpointing is False


def test_grpo_samples_five_with_the_kl_loss_and_no_critic():
    o = peers.common_overrides(args("--estimator", "grpo"), "/m", DATA, "/o")
    for argv, env in (peers.rlkit_command(o), peers.verl_command(o, "/o/m.jsonl")):
        d = as_dict(argv[3:])
        assert d["actor_rollout_ref.rollout.n"] == "5" and d["algorithm.adv_estimator"] == "grpo"
        assert d["actor_rollout_ref.actor.use_kl_loss"] == "True"
        assert d["actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu"] == "16"  # verl needs it for the reference
        assert [a for a in argv if "critic" in a] == [] and "PYTHONPATH" not in env
    assert SDPA in argv and "actor_rollout_ref.ref.fsdp_config.use_torch_compile=False" in argv
    # a shared --override replaces the key for every side
    o = peers.common_overrides(args("--estimator", "grpo", "--override", "actor_rollout_ref.rollout.n=8"), "/m", DATA, "/o")
    assert [a for a in o if "rollout.n=" in a] == ["actor_rollout_ref.rollout.n=8"]


def test_read_verl_metrics_flattens_the_file_loggers_rows(tmp_path):
    f = tmp_path / "verl.jsonl"
    rows = [{"step": 1, "data": {"perf/throughput": 1000.5, "timing_s/gen": 3.0, "critic/score/mean": 0.0,
                                 "actor/perf/max_memory_allocated_gb": 20.0, "critic/perf/max_memory_allocated_gb": 22.5}},
            {"step": 2, "data": {"perf/throughput": 900.0, "perf/max_memory_allocated_gb": 7.0,
                                 "actor/perf/max_memory_allocated_gb": 30.0, "val-core/openai/gsm8k/reward/mean@1": 0.25}}]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")
    assert peers.read_verl_metrics(f) == [
        {"step": 1, "perf/throughput": 1000.5, "timing_s/gen": 3.0, "critic/score/mean": 0.0,
         "actor/perf/max_memory_allocated_gb": 20.0, "critic/perf/max_memory_allocated_gb": 22.5,
         "perf/max_memory_allocated_gb": 22.5},  # the larger worker's
        {"step": 2, "perf/throughput": 900.0, "perf/max_memory_allocated_gb": 7.0,  # a plain one is kept as logged
         "actor/perf/max_memory_allocated_gb": 30.0, "val-core/openai/gsm8k/reward/mean@1": 0.25}]


def test_read_rlkit_metrics_reads_what_rlkits_jsonl_logger_writes(tmp_path):
    from rlkit.loggers import JsonlLogger

    log = JsonlLogger(tmp_path / "metrics.jsonl")
    log.log({"perf/throughput": 10.0, "timing_s/step": 2.0}, step=1)
    log.log({"perf/throughput": 12.0, "timing_s/step": float("nan")}, step=2)
    log.close()
    assert peers.read_rlkit_metrics(tmp_path / "metrics.jsonl") == [
        {"step": 1, "perf/throughput": 10.0, "timing_s/step": 2.0}, {"step": 2, "perf/throughput": 12.0, "timing_s/step": None}]


def test_side_summary_medians_of_the_five_measured_steps_by_hand():
    cfg = dict(hidden_size=2, num_hidden_layers=1, num_attention_heads=1, num_key_value_heads=1, intermediate_size=2,
               vocab_size=3)
    thr, step, gen, upd, mem = [100, 200, 50, 30, 40, 10, 20], [9, 8, 5, 7, 6, 4, 3], [5, 4, 2, 3, 1, 2.5, 4], \
        [2, 2, 1.5, 1, 2, 0.5, 3], [10, 13, 11, 12.5, 9, 8, 12]
    rows = [{"step": 0, "val-core/openai/gsm8k/reward/mean@1": 0.1}]  # a validation row: not a step
    rows += [{"step": i + 1, "perf/throughput": thr[i], "timing_s/step": step[i], "timing_s/gen": gen[i],
              "timing_s/update_actor": upd[i], "perf/total_num_tokens": 8, "perf/max_memory_allocated_gb": mem[i]}
             for i in range(7)]
    s = peers.side_summary(rows, warmup=2, model_cfg=cfg, sequences=2)
    assert s["steps_in_median"] == [3, 4, 5, 6, 7]
    assert s["throughput_median"] == 30  # of 50, 30, 40, 10, 20
    assert s["step_s_median"] == 5  # of 5, 7, 6, 4, 3
    assert s["phase_s_median"] == {"gen": 2.5, "update_actor": 1.5}  # of 2, 3, 1, 2.5, 4 and 1.5, 1, 2, 0.5, 3
    assert s["peak_memory_allocated_gib"] == 13  # peak counters: the largest of every step, warm-up included
    # update_actor: forward + backward = 3 x the 864 FLOPs of a forward pass over 8 tokens in 2 sequences
    assert s["mfu"]["update_actor"]["tflops"] == pytest.approx(3 * 864 / 1e12) and s["mfu"]["update_actor"]["mfu"] is None
    with pytest.raises(ValueError, match="2 step"):
        peers.side_summary(rows[:3], warmup=2, model_cfg=cfg)


def test_compare_ratios_and_table_by_hand():
    def side(t, step, phases, peak):
        return {"throughput_median": t, "step_s_median": step, "phase_s_median": phases, "peak_memory_allocated_gib": peak}

    c = peers.compare({"rlkit": side(300.0, 10.0, {"gen": 4.0, "update_actor": 2.0, "wake": 0.5, "adv": 0.03}, 20.0),
                       "verl": side(200.0, 15.0, {"gen": 8.0, "update_actor": 2.5, "reward": 1.0, "adv": 0.01,
                                                  "agent_loop/generate_sequences/mean": 7.5}, 25.0),
                       "trl": side(600.0, 5.0, {"gen": 1.0, "update_actor": 4.0}, 10.0)})
    assert c["ratios"]["verl"] == pytest.approx({"tokens/s/GPU": 1.5, "s/step": 10 / 15, "gen s": 0.5,
                                                 "update_actor s": 0.8, "peak allocated GiB": 0.8})
    assert c["ratios"]["trl"] == pytest.approx({"tokens/s/GPU": 0.5, "s/step": 2.0, "gen s": 4.0, "update_actor s": 0.5,
                                                "peak allocated GiB": 2.0})
    assert c["table"].splitlines() == [
        "| | rlkit | verl | trl | rlkit/verl | rlkit/trl |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        "| tokens/s/GPU | 300 | 200 | 600 | 1.50 | 0.50 |",
        "| s/step | 10.00 | 15.00 | 5.00 | 0.67 | 2.00 |",
        "| gen s | 4.00 | 8.00 | 1.00 | 0.50 | 4.00 |",
        "| reward s | - | 1.00 | - | - | - |",
        "| adv s | 0.03 | 0.01 | - | - | - |",  # both under 0.05 s: no ratio
        "| update_actor s | 2.00 | 2.50 | 4.00 | 0.80 | 0.50 |",
        "| wake s | 0.50 | - | - | - | - |",
        "| peak allocated GiB | 20.0 | 25.0 | 10.0 | 0.80 | 2.00 |"]


@pytest.fixture
def nothing_runs(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("nothing may run or be built here")

    monkeypatch.setattr(subprocess, "Popen", refuse)
    monkeypatch.setattr(e2e, "make_model", refuse)


@pytest.mark.parametrize("trl_here", [False, True], ids=["without-trl", "with-trl"])
def test_dry_run_prints_the_exact_commands_and_runs_nothing(tmp_path, capsys, nothing_runs, monkeypatch, trl_here):
    monkeypatch.setattr(peers, "TRL_PACKAGE", "json" if trl_here else "rlkit_no_such_package")
    out = tmp_path / "out"
    plan = peers.main(["--dry-run", "--sides", "rlkit,verl,trl", "--out", str(out), "--data", str(tmp_path / "d")])
    text = capsys.readouterr().out
    assert not out.exists()
    blocks = {b.split(":", 1)[0].lstrip("# ").split(" ")[0]: b for b in text.split("\n\n")[1:]}
    for name in ("rlkit", "verl", "trl") if trl_here else ("rlkit", "verl"):
        cmd = [ln for ln in blocks[name].splitlines() if not ln.startswith("#")]
        words = shlex.split(" ".join(ln.removesuffix(" \\") for ln in cmd))  # as a shell reads the lines
        env = [f"{k}={v}" for k, v in plan[name]["env"].items()]
        assert words == ["cd", str(out / name), "&&", *env, "python", *plan[name]["argv"][1:]]
    assert f"VERL_FILE_LOGGER_PATH={out}/verl/metrics.jsonl SGLANG_ENABLE_TP_MEMORY_INBALANCE_CHECK=false" in text
    assert "PYTHONPATH=/tmp/site-trl:$PYTHONPATH python -m verl.trainer.main_ppo" in text
    assert plan["trl"]["argv"][1:4] == ["-m", "rlkit.bench.peer_trl", f"--metrics={out}/trl/metrics.jsonl"]
    if trl_here:  # the driver's command, to run as printed
        assert "needs TRL" not in text
        assert f"python -m rlkit.bench.peer_trl \\\n    --metrics={out}/trl/metrics.jsonl" in blocks["trl"]
    else:  # printed commented out, with what it needs
        assert "needs TRL 1.12.0 here (pip install trl==1.12.0)" in blocks["trl"]
        assert all(ln.startswith("#") for ln in blocks["trl"].splitlines())
        assert f"python -m rlkit.bench.peer_trl \\\n#     --metrics={out}/trl/metrics.jsonl" in blocks["trl"]


def test_a_side_override_reaches_that_side_only(tmp_path, nothing_runs):
    """--side-override SIDE:key=value: after --override, for one side (an rlkit-only key verl would refuse)."""
    key = "actor_rollout_ref.actor.recompute_old_log_prob"
    argv = ["--dry-run", "--sides", "rlkit,verl", "--out", str(tmp_path / "out"), "--data", str(tmp_path / "d"),
            "--override", "actor_rollout_ref.model.use_remove_padding=False",
            "--side-override", f"rlkit:{key}=False",
            "--side-override", "rlkit:actor_rollout_ref.model.use_remove_padding=True"]
    plan = peers.main(argv)
    rl, v = as_dict(plan["rlkit"]["argv"][3:]), as_dict(plan["verl"]["argv"][3:])
    assert rl[key] == "False" and key not in v
    assert rl["actor_rollout_ref.model.use_remove_padding"] == "True"  # the side's value wins over --override
    assert v["actor_rollout_ref.model.use_remove_padding"] == "False"
    for bad in ("trl:a.b=1", "rlkit:no_value", "a.b=1"):
        with pytest.raises(SystemExit, match=r"--side-override .*: write SIDE:key=value with SIDE one of the sides "
                                             r"run here \(rlkit, verl\)"):
            peers.main(argv[:7] + ["--side-override", bad])


def test_trl_side_is_refused_before_anything_runs_without_trl(tmp_path, nothing_runs, monkeypatch):
    monkeypatch.setattr(peers, "TRL_PACKAGE", "rlkit_no_such_package")
    with pytest.raises(SystemExit, match=r"rlkit\.bench\.peer_trl needs TRL 1\.12\.0 .*pip install trl==1\.12\.0"):
        peers.main(["--sides", "rlkit,trl", "--out", str(tmp_path / "out"), "--data", str(tmp_path)])
    with pytest.raises(SystemExit, match="choose from rlkit, verl, trl"):
        peers.main(["--sides", "rlkit,vllm", "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_sides_run_in_turn_and_a_failed_side_is_named_with_its_logs_last_lines(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/old")
    write = ("import json, os; print('hello from a'); open('metrics.jsonl', 'a').write(''.join(json.dumps("
             "{'step': s, 'perf/throughput': 10.0 * s, 'timing_s/step': 1.0, 'perf/total_num_tokens': 8}) + '\\n' "
             "for s in (1, 2, 3))); open('env', 'w').write(os.environ['PYTHONPATH'] + ' ' + os.environ['X'])")
    sides = {"a": [sys.executable, "-c", write], "b": [sys.executable, "-c", "print('boom'); raise SystemExit(3)"],
             "c": [sys.executable, "-c", "import time; time.sleep(60)"]}
    plan = {n: dict(argv=argv, env={"PYTHONPATH": "/t:$PYTHONPATH", "X": "1"}, cwd=tmp_path / n,
                    log=tmp_path / f"{n}.log", metrics=tmp_path / n / "metrics.jsonl", read=peers.read_rlkit_metrics)
            for n, argv in sides.items()}
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "metrics.jsonl").write_text('{"step": 9, "perf/throughput": 1e9, "timing_s/step": 1.0}\n')
    with pytest.raises(SystemExit) as e:  # (a's rows of an earlier run above are dropped first)
        peers.run_plan(plan, warmup=1, timeout=3, model_cfg={}, sequences=1)
    msg = str(e.value)
    assert f"side b failed (exit status 3); last lines of {tmp_path / 'b.log'}:\nboom" in msg
    assert "side c failed (timed out after 3 s" in msg and msg.endswith("finished: a")
    assert set(e.value.failed) == {"b", "c"} and e.value.done["a"]["throughput_median"] == 25.0  # kept for peers.json
    assert (tmp_path / "a.log").read_text() == "hello from a\n"
    assert (tmp_path / "a" / "env").read_text() == "/t:/old 1"
    assert peers.run_plan({"a": plan["a"]}, warmup=1, model_cfg={}, sequences=1)["a"]["throughput_median"] == 25.0


def test_a_side_stopped_by_the_timeout_keeps_the_steps_it_logged(tmp_path):
    """verl's GRPO side logged 5 of 7 steps before its time ran out: steps 3-5 still measure it."""
    write = ("import json, time\n"
             "for s in (1, 2, 3, 4):\n"
             "    open('metrics.jsonl', 'a').write(json.dumps({'step': s, 'perf/throughput': 10.0 * s, "
             "'timing_s/step': 1.0 * s, 'perf/total_num_tokens': 8}) + '\\n')\n"
             "time.sleep(60)\n")
    one = [sys.executable, "-c", "import json, time; open('metrics.jsonl', 'a').write(json.dumps({'step': 1, "
           "'perf/throughput': 1.0, 'timing_s/step': 1.0}) + '\\n'); time.sleep(60)"]
    plan = {n: dict(argv=argv, env={}, cwd=tmp_path / n, log=tmp_path / f"{n}.log",
                    metrics=tmp_path / n / "metrics.jsonl", read=peers.read_rlkit_metrics)
            for n, argv in {"slow": [sys.executable, "-c", write], "early": one}.items()}
    machine = {"date": "2026-12-07", "card": "NVIDIA H100 80GB HBM3", "versions": {"trl": "1.12.0"}}
    with pytest.raises(SystemExit) as e:
        peers.run_plan(plan, warmup=2, timeout=4, model_cfg={}, sequences=1, record=machine)
    slow = e.value.done["slow"]
    assert slow["partial"] == "timed out after 4 s, exit status -9"
    assert slow["throughput_median"] == 35.0 and slow["steps_in_median"] == [3, 4]  # median of 30 and 40
    assert slow["step_s_median"] == 3.5
    assert set(e.value.failed) == {"early"}  # one step is not more than the two warm-up steps
    assert "timed out after 4 s" in e.value.failed["early"] and "1 step(s) logged" in e.value.failed["early"]
    # each side's folder keeps its machine and how it ended, so reading its logs back later says the same
    assert json.loads((tmp_path / "slow" / "run.json").read_text()) == dict(
        machine, status=slow["partial"], command=peers.shell_line(plan["slow"]["argv"], {}))
    with pytest.raises(SystemExit) as again:
        peers.run_plan(plan, warmup=2, model_cfg={}, sequences=1, run=False)
    assert again.value.done == e.value.done and set(again.value.failed) == {"early"}
    assert "timed out after 4 s" in again.value.failed["early"]
    # bare rows (the learning harness's summary) cannot say they are partial: the timeout is the failure
    with pytest.raises(SystemExit) as rows:
        peers.run_plan({"slow": plan["slow"]}, summarize=lambda r: r, run=False)
    assert rows.value.failed["slow"].startswith("side slow failed (timed out after 4 s, exit status -9)")


def test_a_sides_run_record_is_written_when_it_starts(tmp_path):
    """Files copied off the machine while a side still runs name its machine, and read back they are partial."""
    write = ("import json\n"
             "print(json.load(open('run.json'))['status'])\n"
             "for s in (1, 2, 3):\n"
             "    open('metrics.jsonl', 'a').write(json.dumps({'step': s, 'perf/throughput': 10.0 * s, "
             "'timing_s/step': 1.0, 'perf/total_num_tokens': 8}) + '\\n')\n")
    side = dict(argv=[sys.executable, "-c", write], env={}, cwd=tmp_path / "s", log=tmp_path / "s.log",
                metrics=tmp_path / "s" / "metrics.jsonl", read=peers.read_rlkit_metrics)
    machine = {"date": "2026-12-07", "card": "NVIDIA H100 80GB HBM3", "versions": {}}
    done = peers.run_plan({"s": side}, warmup=2, model_cfg={}, sequences=1, record=machine)
    assert (tmp_path / "s.log").read_text() == peers.RUNNING + "\n"  # what the side saw while it ran
    assert json.loads((tmp_path / "s" / "run.json").read_text())["status"] == 0 and "partial" not in done["s"]
    # as an early copy would hold it: the record of the start, and the steps logged so far
    (tmp_path / "s" / "run.json").write_text(json.dumps(dict(machine, status=peers.RUNNING)))
    early = peers.run_plan({"s": side}, warmup=2, model_cfg={}, sequences=1, run=False)["s"]
    assert early["partial"] == peers.RUNNING and early["throughput_median"] == 30.0
    record, _ = peers.run_machine(tmp_path / "peers.json", True, folders={"s": tmp_path / "s"})
    assert record["card"] == "NVIDIA H100 80GB HBM3" and record["side_runs"]["s"]["status"] == peers.RUNNING


def _lookup(tree: dict, dotted: str):
    for part in dotted.split(".") if dotted else []:
        if not isinstance(tree, dict) or part not in tree:
            return None
        tree = tree[part]
    return tree


@pytest.mark.parametrize("estimator", ["gae", "grpo", "learning", "learning-resumed"])
def test_every_key_of_the_verl_command_is_in_verl_091s_config(estimator, tmp_path, monkeypatch, verl_091_src,
                                                              verl_091_config):
    src, root, cfg = verl_091_src, Path(verl_091_src) / "verl", verl_091_config
    if estimator.startswith("learning"):  # rlkit.bench.learning's verl side; resumed: from a checkpoint it left
        from rlkit.bench import learning

        more = ["--save-freq", "10"] if estimator == "learning-resumed" else []
        if more:
            (tmp_path / "verl" / "global_step_10").mkdir(parents=True)
        argv = learning.main(["--model", "/m", "--out", str(tmp_path), "--sides", "verl", "--dry-run", *more])
        argv = argv["verl"]["argv"]
        assert ("trainer.val_before_train=False" in argv) == bool(more)
    else:
        o = peers.common_overrides(args("--estimator", estimator), "/m", DATA, "/o")
        argv, _ = peers.verl_command(o, "/o/m.jsonl", with_trl_on_path=estimator == "gae")
    for a in argv[3:]:
        parts = peers.key(a).split(".")
        if a.startswith("+"):  # Hydra's + adds a key that is not there yet (with any sections above it missing)
            have = max(i for i in range(len(parts)) if isinstance(_lookup(cfg, ".".join(parts[:i])), dict))
            assert have < len(parts) - 1 or parts[-1] not in _lookup(cfg, ".".join(parts[:-1])), \
                f"{a}: verl already has it: drop the +"
            assert _lookup(cfg, ".".join(parts[:have + 1])) is None, f"{a}: {'.'.join(parts[:have + 1])} is a value"
        else:
            parent, leaf = ".".join(parts[:-1]), parts[-1]
            node = _lookup(cfg, parent)
            assert isinstance(node, dict), f"{a}: verl has no section {parent}"
            assert leaf in node, f"{a}: verl 0.9.1 has no such key"
    # and verl's own Hydra composes the whole command line (its hydra ships beside it in the verl bundle)
    monkeypatch.syspath_prepend(src)
    hydra = pytest.importorskip("hydra")
    from omegaconf import OmegaConf

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with hydra.initialize_config_dir(config_dir=str(root / "trainer" / "config"), version_base=None):
            composed = hydra.compose(config_name="ppo_trainer", overrides=argv[3:])
    OmegaConf.resolve(composed)
    assert composed.algorithm.adv_estimator == ("grpo" if estimator != "gae" else "gae")
    if estimator.startswith("learning"):  # where verl 0.9.1's main_ppo reads the reward (trainer/ppo/reward.py:
        crf = composed.reward.custom_reward_function  # config.reward.custom_reward_function; the top-level
        assert crf.path == str(tmp_path / learning.REWARD_FILE)  # legacy keys exist but nothing reads them)
        assert crf.reward_kwargs.format_score == 0.1
        assert composed.data.dataloader_num_workers == 0  # the prompt order rlkit's recorded run drew


def test_from_logs_summarizes_sides_run_earlier_and_names_a_missing_one(tmp_path, capsys):
    """Sides run one per command (e.g. one per machine call) are compared afterwards with --from-logs."""
    def rows(throughput, step_s):
        return [{"step": s, "perf/throughput": throughput, "timing_s/step": step_s, "timing_s/gen": 1.0,
                 "perf/total_num_tokens": int(throughput * step_s)} for s in (1, 2, 3, 4)]

    (tmp_path / "rlkit").mkdir()
    (tmp_path / "rlkit" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows(3000.0, 2.0)))
    argv = ["--sides", "rlkit,verl", "--estimator", "grpo", "--out", str(tmp_path), "--from-logs", "--warmup", "2"]
    with pytest.raises(peers.SidesFailed) as e:
        peers.main(argv)
    assert "no metrics at" in e.value.failed["verl"] and "run this side first" in e.value.failed["verl"]
    saved = json.loads((tmp_path / "peers.json").read_text())
    assert saved["summary"]["rlkit"]["throughput_median"] == 3000.0 and "verl" in saved["failed"]
    (tmp_path / "verl.log").write_text("loading the critic\nImportError: flash_attn is not installed\n")
    with pytest.raises(peers.SidesFailed) as e:  # it ran earlier and failed: the comparison keeps why
        peers.main(argv)
    assert "run this side first" not in e.value.failed["verl"]
    assert e.value.failed["verl"].endswith("verl.log:\nloading the critic\nImportError: flash_attn is not installed")
    assert "ImportError: flash_attn" in json.loads((tmp_path / "peers.json").read_text())["failed"]["verl"]
    (tmp_path / "verl").mkdir()
    (tmp_path / "verl" / "metrics.jsonl").write_text("".join(json.dumps({"step": r.pop("step"), "data": r}) + "\n"
                                                             for r in rows(1000.0, 6.0)))
    res = peers.main(argv)
    assert res["summary"]["verl"]["throughput_median"] == 1000.0 and "failed" not in res
    assert res["comparison"]["ratios"]["verl"]["tokens/s/GPU"] == pytest.approx(3.0)
    assert not (tmp_path / "model").exists()  # nothing ran, nothing was written but peers.json and its figure
    assert (tmp_path / "peers.png").stat().st_size > 0
    planned = peers.shell_line(*peers.rlkit_command(peers.common_overrides(
        peers.build_parser().parse_args(argv), tmp_path / "model", e2e.data_files("~/data/gsm8k", check=False),
        tmp_path / "rlkit")))
    assert res["commands"]["rlkit"] == sanitize(planned)  # no run.json: the command as planned (shareable)
    # a side's run.json keeps the command it ran (here with a key given for that run only): read back, it wins
    ran = "python -m verl.trainer.main_ppo actor_rollout_ref.model.use_fused_kernels=False"  # no paths to hide
    (tmp_path / "verl" / "run.json").write_text(json.dumps({"status": 0, "command": ran}))
    assert peers.main(argv)["commands"]["verl"] == ran


def test_from_logs_takes_each_sides_versions_from_the_run_that_ran_it(tmp_path):
    """Sides run one per command each record only their own peer's version (a verl-only run sees no TRL): reading
    the logs back fills the versions the last peers.json lacks from each side's run.json and lists the runs."""
    run = {"rlkit": ("2026-12-07", {"torch": "2.11.0+cu130", "trl": None, "verl": "0.9.1"}, 0),
           "trl": ("2026-12-07", {"torch": "2.11.0+cu130", "trl": "1.12.0", "verl": "0.9.1"},
                   "timed out after 500.0 s, exit status -9"),
           "verl": ("2026-12-08", {"torch": "2.11.0+cu130", "trl": None, "verl": "0.9.1"}, 1)}
    folders = {}
    for side, (date, versions, status) in run.items():
        folders[side] = tmp_path / side
        folders[side].mkdir()
        (folders[side] / "run.json").write_text(json.dumps(
            {"date": date, "card": "NVIDIA H100 80GB HBM3", "versions": versions, "status": status}))
    last = {"date": "2026-12-08", "card": "NVIDIA H100 80GB HBM3", "versions": run["verl"][1], "summary": {}}
    (tmp_path / "peers.json").write_text(json.dumps(last))
    record, peak = peers.run_machine(tmp_path / "peers.json", True, folders=folders)
    assert record["versions"] == {"torch": "2.11.0+cu130", "trl": "1.12.0", "verl": "0.9.1"}
    assert (record["date"], record["card"]) == ("2026-12-08", "NVIDIA H100 80GB HBM3")
    assert record["side_runs"]["trl"] == {"date": "2026-12-07", "card": "NVIDIA H100 80GB HBM3",
                                          "status": "timed out after 500.0 s, exit status -9"}
    assert [record["side_runs"][s]["status"] for s in ("rlkit", "verl")] == [0, 1]
    assert peak == flops.PEAK_BF16_TFLOPS["H100 80GB HBM3"] * 1e12
    (tmp_path / "peers.json").unlink()  # without the last file: the first side's run
    record, _ = peers.run_machine(tmp_path / "peers.json", True, folders=folders)
    assert record["date"] == "2026-12-07" and record["versions"]["trl"] == "1.12.0"
    assert peers.run_machine(tmp_path / "peers.json", True)[0]["card"].startswith("not recorded")


def test_from_logs_keeps_the_machine_that_ran_the_sides(tmp_path):
    """Logs read back on another machine: peers.json keeps the card, date and versions the run recorded, and MFU
    is taken against that card's peak, not this machine's."""
    row = {"perf/throughput": 1000.0, "timing_s/step": 6.0, "timing_s/update_actor": 2.0,
           "perf/total_num_tokens": 6000}
    (tmp_path / "rlkit").mkdir()
    (tmp_path / "rlkit" / "metrics.jsonl").write_text("".join(json.dumps(dict(row, step=s)) + "\n" for s in (1, 2, 3)))
    argv = ["--sides", "rlkit", "--estimator", "grpo", "--out", str(tmp_path), "--from-logs", "--warmup", "2"]
    res = peers.main(argv)
    assert res["card"].startswith("not recorded") and res["summary"]["rlkit"]["mfu"]["update_actor"]["mfu"] is None
    recorded = dict(res, date="2026-12-07", card="NVIDIA H100 80GB HBM3", versions={"torch": "2.11.0+cu130"})
    (tmp_path / "peers.json").write_text(json.dumps(recorded))
    again = peers.main(argv)
    assert (again["date"], again["card"], again["versions"]) == ("2026-12-07", "NVIDIA H100 80GB HBM3",
                                                                  {"torch": "2.11.0+cu130"})
    mfu = again["summary"]["rlkit"]["mfu"]["update_actor"]
    assert mfu["mfu"] == pytest.approx(mfu["tflops_per_s"] / flops.PEAK_BF16_TFLOPS["H100 80GB HBM3"])
