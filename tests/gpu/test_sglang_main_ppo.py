"""`python -m rlkit.main_ppo` with rollout.name=sglang on one GPU, as a user runs it: a tiny model,
two steps with checkpoints, then a rerun with more steps that resumes (the RolloutBatch step, the
plan's batch sizes, the engine pre-flight and the split checkpoint layout on a real engine).

Set RLKIT_GPU_OUT=DIR to keep the console output and metrics.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tiny import char_tokenizer, make_tiny_model, toy_parquet

pytestmark = pytest.mark.gpu
REPO = Path(__file__).resolve().parents[2]


def run(argv, cwd):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               RLKIT_PROGRESS="0")
    return subprocess.run([sys.executable, "-m", "rlkit.main_ppo", *argv], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=900)


def test_main_ppo_with_sglang_steps_saves_and_resumes(tmp_path):
    pytest.importorskip("sglang")
    pytest.importorskip("ray")
    model = make_tiny_model(tmp_path / "model", char_tokenizer(), hidden=64, layers=2, heads=4, kv_heads=2,
                            intermediate=128)
    data = toy_parquet(tmp_path / "data")
    out = tmp_path / "run"
    base = [
        f"data.train_files={data}/train.parquet", f"data.val_files={data}/test.parquet",
        "data.train_batch_size=8", "data.max_prompt_length=32", "data.max_response_length=16",
        f"actor_rollout_ref.model.path={model}", "actor_rollout_ref.rollout.name=sglang",
        "actor_rollout_ref.rollout.tensor_model_parallel_size=1", "actor_rollout_ref.rollout.n=2",
        "actor_rollout_ref.rollout.gpu_memory_utilization=0.3", "actor_rollout_ref.rollout.enforce_eager=True",
        "actor_rollout_ref.actor.ppo_mini_batch_size=4", "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4",
        "critic.ppo_micro_batch_size_per_gpu=4", "trainer.logger=['console','jsonl']",
        f"trainer.default_local_dir={out}", "trainer.save_freq=1", "trainer.test_freq=-1",
        "trainer.val_before_train=False", "trainer.max_actor_ckpt_to_keep=2", "trainer.max_critic_ckpt_to_keep=2",
        "custom_reward_function.path=" + str(REPO / "tests" / "rewards_for_tests.py"),
        "custom_reward_function.name=digit_fraction",
    ]
    first = run(base + ["trainer.total_training_steps=2"], tmp_path)
    assert first.returncode == 0, first.stderr[-6000:]
    again = run(base + ["trainer.total_training_steps=3"], tmp_path)
    assert again.returncode == 0, again.stderr[-6000:]
    keep = os.environ.get("RLKIT_GPU_OUT")
    if keep:
        Path(keep, "sglang_main_ppo_stdout.txt").write_text(first.stdout + again.stdout)
        Path(keep, "sglang_main_ppo_stderr_tail.txt").write_text(first.stderr[-6000:] + "\n----\n" + again.stderr[-6000:])
        shutil.copy(out / "metrics.jsonl", Path(keep, "sglang_main_ppo_metrics.jsonl"))

    assert "global_step_2 at step 2 of 3" in again.stderr and "trainer.total_training_steps: 2 -> 3" in again.stderr
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:
        assert r["response_length/mean"] > 0 and r["timing_s/gen"] > 0
        assert r["perf/max_memory_allocated_gb"] > 0  # the GPU was used and snapshotted
        assert math.isfinite(r["actor/grad_norm"]) and math.isfinite(r["critic/vf_loss"])
    # the engine holds the actor's weights: both give the sampled tokens nearly the same probability
    assert max(r["training/rollout_probs_diff_mean"] for r in rows) < 0.05
    assert sorted(p.name for p in out.glob("global_step_*")) == ["global_step_2", "global_step_3"]
