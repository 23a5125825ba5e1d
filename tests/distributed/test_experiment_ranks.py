"""Experiment on 2 CPU ranks (trainer.n_gpus_per_node=2 trainer.device=cpu): a WorkerGroup behind step().

Whole-step equivalence: with generation fixed (the same responses whatever the ranks), one
Experiment.step() on a 2-rank group and on a 1-rank group gives the same metrics and parameters
within test_group_cpu's tolerance (max |param diff| < TOL = 1e-5; the reasoning is in that
module's docstring: only the order of float additions differs).
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

ray = pytest.importorskip("ray")

from rlkit import Experiment, PPOConfig  # noqa: E402
from rlkit.checkpoint import CheckpointError  # noqa: E402
from rlkit.datasets import RolloutBatch  # noqa: E402
from rlkit.distributed.group import WorkerGroup  # noqa: E402
from rlkit.distributed.ray_worker import WorkerDiedError  # noqa: E402

from test_experiment import digit_fraction, toy_overrides  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # this folder's helpers (pytest imports with importlib)
from test_group_cpu import TOL, max_diff  # noqa: E402
from test_ray_worker import ray_cluster, toy  # noqa: E402,F401  fixtures: Ray with num_cpus=2; tiny model + toy parquet

BATCH, N = 8, 4  # toy_overrides: data.train_batch_size=8, rollout.n=4


def ranks_config(toy, world: int, **extra) -> PPOConfig:
    return PPOConfig.from_overrides(toy_overrides(*toy, **{"trainer.n_gpus_per_node": world, **extra}))


def fixed_generate(tokenizer):
    """generate() with fixed responses (of different lengths, some with digits): the same rows for
    any number of ranks, so the rest of the step can be compared."""
    def generate(prompt_ids, validate=False):
        prompts, responses = [], []
        for i, p in enumerate(prompt_ids):
            for j in range(N):
                length = 1 + (3 * i + j) % 8
                prompts.append(list(p))
                responses.append([5 + (7 * i + 3 * j + 11 * k) % 90 for k in range(length)])
        log_probs = [[-4.5] * len(r) for r in responses]
        return RolloutBatch.from_generation(prompts, responses, log_probs, tokenizer.pad_token_id,
                                            columns={"finish_reason": ["length"] * len(responses)})
    return generate


def test_two_ranks_step_and_a_killed_rank_is_named(toy, tmp_path):
    cfg = ranks_config(toy, 2)
    exp = Experiment(cfg, reward_fn=digit_fraction)
    assert isinstance(exp.worker, WorkerGroup) and exp.worker.world_size == 2
    for _ in range(2):
        res = exp.step()
        assert len(res.rollouts) == BATCH * N
        for key in ("critic/score/mean", "actor/pg_loss", "actor/grad_norm", "critic/vf_loss", "critic/grad_norm",
                    "actor/entropy", "response_length/mean", "timing_s/step"):
            assert math.isfinite(res.metrics[key]), key
    assert exp.global_step == 2 and len(exp.rollouts) == 2 * BATCH * N
    assert set(exp.memory["rank"]) == {0, 1}
    step_memory = exp.memory[exp.memory["step"] == 2]
    for rank in (0, 1):  # every rank recorded the step's phase boundaries
        phases = set(step_memory[step_memory["rank"] == rank]["phase"])
        assert {"step", "gen", "update_actor"} <= phases, (rank, phases)

    with pytest.raises(CheckpointError, match=r"2-rank run are not supported yet .*trainer.save_freq=-1"):
        exp.save(tmp_path / "ckpt")
    assert not (tmp_path / "ckpt").exists()

    ray.kill(exp.worker.actors[1])  # what the OOM killer does
    with pytest.raises(WorkerDiedError, match=r"rank 1 \(node .*, local rank 1, cpu\) died while"):
        exp.step()
    assert exp.global_step == 2 and len(exp.history) == 2  # the controller's state is intact
    with pytest.raises(RuntimeError, match="failed earlier"):
        exp.step()
    exp.shutdown()
    again = Experiment(cfg, reward_fn=digit_fraction)  # the ranks' resources were freed
    try:
        assert again.step().step == 1
    finally:
        again.shutdown()


def test_whole_step_on_two_ranks_equals_one_rank(toy):
    """Fixed generation, then old log-probs, values, GAE, critic and actor updates on 1 and 2 ranks."""
    runs = {}
    for world in (1, 2):
        cfg = ranks_config(toy, world)
        group = WorkerGroup(cfg, timeout_s=60, grace_s=10)  # a 1-rank group too (Experiment builds PPOWorker)
        exp = Experiment(cfg, reward_fn=digit_fraction, worker=group)
        try:
            group.generate = fixed_generate(exp.tokenizer)
            res = exp.step()
            runs[world] = {"metrics": res.metrics, "state": group.call_rank0("full_state_dict"), "batch": res.batch}
        finally:
            exp.shutdown()
    one, two = runs[1], runs[2]
    assert torch.equal(one["batch"]["responses"], two["batch"]["responses"])
    for role in ("actor", "critic"):
        diff = max_diff(one["state"][role], two["state"][role])
        print(f"whole step, 2 ranks vs 1: {role} max |param diff| = {diff:.2e}")
        assert diff < TOL, (role, diff)
    compared = [k for k in one["metrics"] if k.startswith(("actor/", "critic/")) and "clipfrac" not in k]
    assert "actor/pg_loss" in compared and "critic/vf_loss" in compared and "actor/grad_norm" in compared
    for key in compared:
        assert two["metrics"][key] == pytest.approx(one["metrics"][key], rel=1e-5, abs=1e-6), key
    assert one["metrics"]["actor/grad_norm"] > 0


def test_resume_on_two_ranks_is_refused_and_frees_the_ranks(toy, tmp_path):
    one = Experiment(ranks_config(toy, 1), reward_fn=digit_fraction)  # one rank: PPOWorker in this process
    try:
        one.step()
        saved = one.save(tmp_path / "ckpt")
    finally:
        one.shutdown()
    with pytest.raises(CheckpointError, match=r"resuming a 2-rank run from a checkpoint is not supported yet"):
        Experiment.resume(saved, reward_fn=digit_fraction, config=ranks_config(toy, 2), log=lambda line: None)
    group = WorkerGroup(ranks_config(toy, 2), ready_timeout_s=20)  # both CPUs are free again
    group.shutdown()


def test_main_ppo_with_two_ranks_and_checkpoints_fails_before_models_load(toy, tmp_path, monkeypatch, capsys):
    from rlkit import main_ppo

    def refuse(*a, **k):
        raise AssertionError("the worker group was built before the checkpoint settings were checked")

    monkeypatch.setattr(WorkerGroup, "__init__", refuse)
    argv = toy_overrides(*toy, **{"trainer.n_gpus_per_node": 2, "trainer.save_freq": 1,
                                  "trainer.default_local_dir": tmp_path / "run", "trainer.total_training_steps": 1})
    assert main_ppo.main(argv) == 2
    err = capsys.readouterr().err
    assert "trainer.save_freq=1 with trainer.nnodes * trainer.n_gpus_per_node = 1 * 2 = 2 ranks" in err
    assert "multi-rank checkpoints are not supported yet. Fix: trainer.save_freq=-1" in err
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())
