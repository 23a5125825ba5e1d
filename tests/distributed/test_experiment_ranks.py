"""Experiment on 2 CPU ranks (trainer.n_gpus_per_node=2 trainer.device=cpu): a WorkerGroup behind step().

Whole-step equivalence: with generation fixed (the same responses whatever the ranks), one
Experiment.step() on a 2-rank group and on a 1-rank group gives the same metrics and parameters
within test_group_cpu's tolerance (max |param diff| < TOL = 1e-5; the reasoning is in that
module's docstring: only the order of float additions differs).

Sharded checkpoints: 1 step, save, resume in a new 2-rank Experiment, 1 step gives the step-2
metrics of a straight 2-step run within RESUME_TOL = 1e-6 (absolute and relative): the same ranks
run the same operations on the same shards, generation is seeded per rank (data.seed + rank) and
every rank's random state is restored, so the numbers are expected to be identical; anything
short of a full restore (optimizer moments, lr schedule, a rank's sampling stream, the data
position) moves them by far more (different responses, or updates of size ~lr = 3e-3).
"""
from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import pytest
import torch

ray = pytest.importorskip("ray")

from rlkit import Experiment, PPOConfig  # noqa: E402
from rlkit import checkpoint as ckpt_lib  # noqa: E402
from rlkit.checkpoint import CheckpointError  # noqa: E402
from rlkit.datasets import RolloutBatch  # noqa: E402
from rlkit.distributed.group import WorkerGroup  # noqa: E402
from rlkit.distributed.group import WorkerDiedError  # noqa: E402
from rlkit.training.rank_worker import update_shards  # noqa: E402

from test_experiment import digit_fraction, toy_overrides  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # this folder's helpers (pytest imports with importlib)
from test_group_cpu import TOL, max_diff  # noqa: E402

pytestmark = pytest.mark.usefixtures("ray_cluster")  # tests/distributed/conftest.py

BATCH, N = 8, 4  # toy_overrides: data.train_batch_size=8, rollout.n=4
RESUME_TOL = 1e-6
SHARD_FILES = {"actor/dcp/.metadata", "actor/dcp/__0_0.distcp", "actor/dcp/__1_0.distcp", "critic/dcp/.metadata",
               "critic/dcp/__0_0.distcp", "critic/dcp/__1_0.distcp", "ranks/rank_0.pt", "ranks/rank_1.pt",
               "extra.pt", "config.yaml"}


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
        # balance_batch (default on): each rank updates on its balanced partition's tokens
        shards = update_shards(res.batch, 2, 4 * N, 1, False, 0)  # ppo_mini_batch_size=4 prompts, no shuffle
        assert sorted(float(s["attention_mask"].sum()) for s in shards) == [
            res.metrics["global_seqlen/balanced_min"], res.metrics["global_seqlen/balanced_max"]]
    assert exp.global_step == 2 and len(exp.rollouts) == 2 * BATCH * N
    assert set(exp.memory["rank"]) == {0, 1}
    step_memory = exp.memory[exp.memory["step"] == 2]
    for rank in (0, 1):  # every rank recorded the step's phase boundaries
        phases = set(step_memory[step_memory["rank"] == rank]["phase"])
        assert {"step", "gen", "update_actor"} <= phases, (rank, phases)

    saved = exp.save(tmp_path / "ckpt")  # each rank writes its shards into the temporary folder, then one rename
    meta = json.loads((saved / ckpt_lib.MARKER).read_text())
    assert (meta["layout"], meta["world_size"], meta["global_step"]) == ("sharded", 2, 2)
    assert set(meta["files"]) == SHARD_FILES
    assert all(size > 0 for size in meta["files"].values())
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temporary folder left
    assert "ranks, sharded" in ckpt_lib.inspect(saved).describe()

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
    """Fixed generation, then old log-probs, values, GAE, critic and actor updates on 1 and 2 ranks.

    balance_batch off: on 2 ranks it reorders the rows (tokens balanced over the ranks, as verl), which
    puts other rows into each mini-batch than on 1 rank; the equivalence holds for the same row order."""
    runs = {}
    for world in (1, 2):
        cfg = ranks_config(toy, world, **{"trainer.balance_batch": False})
        group = WorkerGroup(cfg, timeout_s=60, grace_s=10)  # on Ray at 1 rank too (Experiment's is local)
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


def first_step_metrics(result) -> dict:
    return {k: v for k, v in result.metrics.items() if not k.startswith(("timing", "perf/", "memory"))}  # not clock readings


@pytest.fixture(scope="module")
def two_rank_checkpoint(toy, tmp_path_factory):
    """A 2-rank run's checkpoint after 1 step (and that step's metrics)."""
    exp = Experiment(ranks_config(toy, 2), reward_fn=digit_fraction)
    try:
        first = first_step_metrics(exp.step())
        path = exp.save(tmp_path_factory.mktemp("two") / "global_step_1")
    finally:
        exp.shutdown()
    return path, first


def test_resume_on_two_ranks_gives_the_straight_runs_next_step(toy, two_rank_checkpoint):
    path, first = two_rank_checkpoint
    straight = Experiment(ranks_config(toy, 2), reward_fn=digit_fraction)
    try:
        one = first_step_metrics(straight.step())
        two = first_step_metrics(straight.step())
        straight_rollouts = straight.rollouts
    finally:
        straight.shutdown()
    assert one == first  # the runs are reproducible: the same first step
    resumed = Experiment.resume(path, reward_fn=digit_fraction, log=lambda line: None)
    try:
        assert isinstance(resumed.worker, WorkerGroup) and resumed.global_step == 1
        again = resumed.step()
    finally:
        resumed.shutdown()
    got = first_step_metrics(again)
    assert resumed.global_step == 2 and set(got) == set(two)
    assert list(again.rollouts["response"]) == list(straight_rollouts[straight_rollouts["step"] == 2]["response"])
    worst = max(abs(got[k] - two[k]) for k in two if not (math.isnan(two[k]) and math.isnan(got[k])))
    print(f"resumed step 2 vs straight step 2 on 2 ranks: max |metric diff| = {worst:.2e} over {len(two)} metrics")
    for key in two:
        assert got[key] == pytest.approx(two[key], rel=RESUME_TOL, abs=RESUME_TOL, nan_ok=True), key
    assert got["actor/grad_norm"] > 0 and two["actor/lr"] == got["actor/lr"]


def test_damaged_shard_is_refused_before_ranks_start(two_rank_checkpoint, tmp_path, monkeypatch):
    path = Path(shutil.copytree(two_rank_checkpoint[0], tmp_path / "global_step_1"))
    shard = path / "critic" / "dcp" / "__1_0.distcp"
    size = shard.stat().st_size
    with open(shard, "r+b") as f:  # rank 1's critic shard cut short
        f.truncate(size - 10)
    monkeypatch.setattr(WorkerGroup, "__init__", lambda *a, **k: pytest.fail("the ranks started"))
    with pytest.raises(CheckpointError, match=rf"damaged: critic/dcp/__1_0.distcp is {size - 10} bytes, {size} were"):
        Experiment.resume(path, reward_fn=digit_fraction, log=lambda line: None)
    (path / "ranks" / "rank_0.pt").unlink()
    with pytest.raises(CheckpointError, match=r"ranks/rank_0.pt is missing"):
        ckpt_lib.inspect(path)


def test_other_world_sizes_are_refused_with_both_sizes(toy, two_rank_checkpoint, tmp_path, monkeypatch):
    one = Experiment(ranks_config(toy, 1), reward_fn=digit_fraction)  # one rank: a local group, sharded too
    try:
        one.step()
        single_rank = one.save(tmp_path / "one")
    finally:
        one.shutdown()
    assert (ckpt_lib.inspect(single_rank).layout, ckpt_lib.inspect(single_rank).world_size) == ("sharded", 1)
    monkeypatch.setattr(WorkerGroup, "__init__", lambda *a, **k: pytest.fail("the ranks started"))
    with pytest.raises(CheckpointError, match=r"saved by 2 ranks \(sharded layout\) and this run has 1 rank: "
                                              r"saved world size 2, this run's world size 1\. .*resharding N -> M\) "
                                              r"is not supported yet"):
        Experiment.resume(two_rank_checkpoint[0], reward_fn=digit_fraction, config=ranks_config(toy, 1),
                          log=lambda line: None)
    with pytest.raises(CheckpointError, match=r"saved by 1 rank \(sharded layout\) and this run has 2 ranks: saved "
                                              r"world size 1, this run's world size 2"):
        Experiment.resume(single_rank, reward_fn=digit_fraction, config=ranks_config(toy, 2), log=lambda line: None)
    monkeypatch.undo()
    group = WorkerGroup(ranks_config(toy, 2), ready_timeout_s=20)  # the group refuses too, and frees its ranks
    with pytest.raises(CheckpointError, match=r"saved by 1 rank \(sharded layout\) and this group has 2 ranks"):
        group.load_state_dict(ckpt_lib.inspect(single_rank).load_worker_state(["actor", "critic"]))
    assert group.actors == [] and group.placement_groups == []
    WorkerGroup(ranks_config(toy, 2), ready_timeout_s=20).shutdown()  # both CPUs are free again


def test_single_process_checkpoint_loads_into_two_ranks(toy, tmp_path):
    """The single-process layout of rlkit before the worker group holds whole state dicts: every rank of
    a 2-rank run cuts its shards from them; gathered again they are the saved weights exactly."""
    from omegaconf import OmegaConf

    from test_checkpoint import one_process_state

    one = Experiment(ranks_config(toy, 1), reward_fn=digit_fraction)
    try:
        one.step()
        state = one_process_state(one)
        extra = {"sampler": one.sampler.state_dict(), "kl_ctrl": one.kl_ctrl.state_dict(), "global_step": 1,
                 "history": one._history, "val_history": [], "memory": []}
        cfg = ranks_config(toy, 2)
        old = ckpt_lib.write(tmp_path / "old", worker_state=state, extra=extra, config_yaml=OmegaConf.to_yaml(cfg),
                             global_step=1)
    finally:
        one.shutdown()
    lines = []
    exp = Experiment.resume(old, reward_fn=digit_fraction, log=lines.append)
    try:
        assert any("single-process checkpoint (saved by an older rlkit) loaded into 2 rank(s)" in x for x in lines)
        got = exp.worker.call_rank0("full_state_dict")
        for role in ("actor", "critic"):
            assert max_diff(got[role], state[role]["model"]) == 0.0, role
        assert exp.step().step == 2
    finally:
        exp.shutdown()


def test_main_ppo_with_two_ranks_saves_then_resumes(toy, tmp_path, capsys):
    from rlkit import main_ppo

    run = tmp_path / "run"

    def argv(steps):
        return toy_overrides(*toy, **{"trainer.n_gpus_per_node": 2, "trainer.save_freq": 1,
                                      "trainer.default_local_dir": run, "trainer.total_training_steps": steps,
                                      "trainer.max_actor_ckpt_to_keep": 1, "trainer.test_freq": -1,
                                      "trainer.val_before_train": False,
                                      "custom_reward_function.path": Path(__file__).parents[1] / "rewards_for_tests.py",
                                      "custom_reward_function.name": "digit_fraction"})

    assert main_ppo.main(argv(1)) == 0
    assert [p.name for p in ckpt_lib.step_folders(run)] == ["global_step_1"]
    assert ckpt_lib.inspect(run / "global_step_1").world_size == 2
    capsys.readouterr()
    assert main_ppo.main(argv(2)) == 0  # resume_mode=auto: continues from global_step_1
    err = capsys.readouterr().err
    assert "resumed" in err and "global_step_1 at step 1 of 2" in err
    assert "removed old checkpoint global_step_1" in err  # retention works on sharded folders
    assert [p.name for p in ckpt_lib.step_folders(run)] == ["global_step_2"]
    ck = ckpt_lib.inspect(run / "global_step_2")
    assert (ck.layout, ck.world_size, ck.global_step) == ("sharded", 2, 2)
    assert not [p for p in run.iterdir() if p.name.startswith(".")]  # no temporary or old folder left
