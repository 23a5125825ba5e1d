"""Checkpoint folders: layout and size, retention, damage detection, old format, config changes on resume."""
from __future__ import annotations

import json

import pytest
import torch

from tiny import char_tokenizer, make_tiny_model, toy_parquet

from rlkit import Experiment, PPOConfig
from rlkit import checkpoint as ck
from test_experiment import _comparable, digit_fraction, toy_overrides


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("m"), char_tokenizer()), toy_parquet(tmp_path_factory.mktemp("d"))


def make(toy, **extra):
    return Experiment(PPOConfig.from_overrides(toy_overrides(*toy, **extra)), reward_fn=digit_fraction)


def n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())  # tied weights once


def test_layout_and_size_follow_the_model(toy, tmp_path):
    exp = make(toy)
    exp.step()
    path = exp.save(tmp_path / "c")
    meta = json.loads((path / ck.MARKER).read_text())
    assert meta["format"] == 2 and meta["global_step"] == 1
    assert set(meta["files"]) == {"actor/model.pt", "actor/optim.pt", "critic/model.pt", "critic/optim.pt",
                                  "extra.pt", "config.yaml"}
    # 4 bytes per weight, 8 more per weight of AdamW moments, per trained model
    actor, critic = n_params(exp.worker.actor), n_params(exp.worker.critic)
    weights = meta["files"]["actor/model.pt"] + meta["files"]["critic/model.pt"]
    optim = meta["files"]["actor/optim.pt"] + meta["files"]["critic/optim.pt"]
    assert weights == pytest.approx(4 * (actor + critic), rel=0.05, abs=60_000)
    assert optim == pytest.approx(8 * (actor + critic), rel=0.05, abs=60_000)
    assert "actor/model.pt" in ck.inspect(path).describe()


def test_model_only_checkpoint_resumes_with_fresh_optimizer(toy, tmp_path):
    exp = make(toy, **{"actor_rollout_ref.actor.checkpoint.save_contents": "[model,extra]"})
    exp.step()
    path = exp.save(tmp_path / "c")
    assert not (path / "actor" / "optim.pt").exists() and (path / "actor" / "model.pt").exists()
    lines = []
    resumed = Experiment.resume(path, reward_fn=digit_fraction, log=lines.append)
    assert any("no optimizer state saved for actor, critic" in line for line in lines)
    assert not resumed.worker.actor_optim.state  # fresh AdamW
    assert torch.equal(ck.load_weights(path)["model.embed_tokens.weight"],
                       resumed.worker.actor.state_dict()["model.embed_tokens.weight"])
    resumed.step()


def test_prune_keeps_the_newest_and_touches_only_rlkit_folders(toy, tmp_path):
    exp = make(toy)
    for step in range(1, 6):
        exp.global_step = step
        exp.save(tmp_path / f"global_step_{step}")
    foreign = tmp_path / "global_step_0"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    gone = ck.prune(tmp_path, max_actor=3, max_critic=2)  # one folder holds both: the smaller limit wins
    assert [p.name for p in gone] == ["global_step_1", "global_step_2", "global_step_3"]
    assert [p.name for p in ck.step_folders(tmp_path)] == ["global_step_4", "global_step_5"]
    assert (foreign / "notes.txt").read_text() == "mine"
    assert ck.prune(tmp_path, None, None) == [] and len(ck.step_folders(tmp_path)) == 2


def test_damaged_checkpoint_is_refused_before_models_load(toy, tmp_path, monkeypatch):
    exp = make(toy)
    exp.step()
    path = exp.save(tmp_path / "c")
    size = (path / "actor" / "optim.pt").stat().st_size
    with open(path / "actor" / "optim.pt", "r+b") as f:  # a copy cut short
        f.truncate(size // 2)
    from rlkit.training import worker

    monkeypatch.setattr(worker.PPOWorker, "__init__", lambda *a, **k: pytest.fail("models loaded"))
    with pytest.raises(ck.CheckpointError, match=rf"is damaged: actor/optim.pt is {size // 2} bytes, {size} were written"):
        Experiment.resume(path, reward_fn=digit_fraction)
    (path / "extra.pt").unlink()
    with pytest.raises(ck.CheckpointError, match="extra.pt is missing"):
        ck.inspect(path)


def test_format_1_checkpoints_still_resume(toy, tmp_path):
    """Checkpoints of the single-file layout (format 1) resume to the same next step."""
    from omegaconf import OmegaConf

    straight = make(toy)
    straight.run(2, progress=False)
    expected = _comparable(straight.history.iloc[-1].to_dict())

    first = make(toy)
    first.step()
    w = first.worker
    old = tmp_path / "old"
    old.mkdir()
    torch.save({"worker": {"actor": w.actor.state_dict(), "actor_optim": w.actor_optim.state_dict(),
                           "actor_sched": w.actor_sched.state_dict(), "critic": w.critic.state_dict(),
                           "critic_optim": w.critic_optim.state_dict(), "critic_sched": w.critic_sched.state_dict()},
                "sampler": first.sampler.state_dict(), "kl_ctrl": first.kl_ctrl.state_dict(), "global_step": 1,
                "history": first._history, "val_history": [], "memory": [],
                "rng": {"torch": torch.get_rng_state(), "python": None, "numpy": None, "cuda": None}}, old / "state.pt")
    OmegaConf.save(first.config, old / "config.yaml")
    (old / ck.MARKER).write_text(json.dumps({"format": 1, "global_step": 1}))
    resumed = Experiment.resume(old, reward_fn=digit_fraction, log=lambda line: None)
    resumed.worker._rng = first.worker._rng  # format 1 kept the random state globally
    resumed.step()
    assert _comparable(resumed.history.iloc[-1].to_dict()) == pytest.approx(expected)


def test_resume_applies_new_steps_warns_on_lr_and_refuses_batch_shape(toy, tmp_path):
    exp = make(toy, **{"trainer.total_training_steps": 2})
    exp.step()
    path = exp.save(tmp_path / "c")
    lines = []
    more = toy_overrides(*toy, **{"trainer.total_training_steps": 5, "actor_rollout_ref.actor.optim.lr": 1e-3})
    resumed = Experiment.resume(path, reward_fn=digit_fraction, config=more, log=lines.append)
    text = "\n".join(lines)
    assert "at step 1 of 5" in text
    assert "trainer.total_training_steps: 2 -> 5" in text
    assert "actor_rollout_ref.actor.optim.lr: 0.003 -> 0.001 (warning:" in text
    assert resumed.total_training_steps == 5
    assert resumed.worker.actor_optim.param_groups[0]["lr"] == pytest.approx(1e-3)
    assert resumed.worker.actor_sched.last_epoch == exp.worker.actor_sched.last_epoch  # the schedule goes on
    assert resumed.worker.critic_optim.param_groups[0]["lr"] == pytest.approx(3e-3)

    other = toy_overrides(*toy, **{"data.train_batch_size": 4, "actor_rollout_ref.rollout.n": 2})
    with pytest.raises(ck.CheckpointError) as info:
        Experiment.resume(path, reward_fn=digit_fraction, config=other)
    msg = str(info.value)
    assert "data.train_batch_size: saved 8, now 4" in msg and "actor_rollout_ref.rollout.n: saved 4, now 2" in msg
    assert "cannot change on resume" in msg


def test_compare_configs_classifies_keys():
    base = PPOConfig.from_overrides(["data.train_batch_size=8", "actor_rollout_ref.actor.ppo_mini_batch_size=4"])
    new = PPOConfig.from_overrides(["data.train_batch_size=8", "actor_rollout_ref.actor.ppo_mini_batch_size=4",
                                    "trainer.save_freq=5", "actor_rollout_ref.actor.entropy_coeff=0.01",
                                    "actor_rollout_ref.model.path=/somewhere/else"])
    c = ck.compare_configs(base, new)
    assert c.applied["trainer.save_freq"] == (-1, 5)
    assert set(c.applied) <= {"trainer.save_freq", "reward_model.model.input_tokenizer"}  # unused by rlkit
    assert c.warned == {"actor_rollout_ref.actor.entropy_coeff": (0.0, 0.01)}
    # the critic's model path follows the actor's by interpolation: both are refused
    assert set(c.refused) == {"actor_rollout_ref.model.path", "critic.model.path"}


def test_save_is_atomic_and_never_overwrites_foreign_folders(toy, tmp_path):
    exp = make(toy)
    target = tmp_path / "mine"
    target.mkdir()
    (target / "a.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="not an rlkit checkpoint"):
        exp.save(target)
    assert (target / "a.txt").read_text() == "keep"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def fake_shards(world: int, fail_after: int | None = None):
    """A write_worker like WorkerGroup's: per-rank files under <tmp>/actor/dcp and <tmp>/ranks."""
    def write_worker(tmp, contents):
        assert tmp.is_absolute() and tmp.name.startswith(".") and tmp.is_dir()
        (tmp / "actor" / "dcp").mkdir(parents=True)
        (tmp / "ranks").mkdir()
        (tmp / "actor" / "dcp" / ".metadata").write_bytes(b"m" * 7)
        for r in range(world):
            if fail_after is not None and r == fail_after:
                raise RuntimeError(f"rank {r} died while writing")
            (tmp / "actor" / "dcp" / f"__{r}_0.distcp").write_bytes(b"x" * (100 + r))
            torch.save({"rank": r, "world_size": world}, tmp / "ranks" / f"rank_{r}.pt")
        return {"layout": "sharded", "world_size": world}
    return write_worker


def write_sharded(target, world=2, step=1, **kw):
    return ck.write(target, extra={"global_step": step}, config_yaml="x: 1\n", global_step=step,
                    write_worker=fake_shards(world, **kw))


def test_sharded_layout_is_recorded_size_checked_and_refused_into_other_sizes(tmp_path):
    path = write_sharded(tmp_path / "c")
    meta = json.loads((path / ck.MARKER).read_text())
    assert (meta["layout"], meta["world_size"]) == ("sharded", 2)
    assert meta["files"]["actor/dcp/__1_0.distcp"] == 101 and "ranks/rank_1.pt" in meta["files"]
    c = ck.inspect(path)
    assert (c.layout, c.world_size) == ("sharded", 2) and c.has_role("actor") and not c.has_role("critic")
    state = c.load_worker_state(["actor", "critic"])
    assert state == ck.ShardedState(path, 2, ["actor"], True)
    assert torch.load(path / "extra.pt")["worker_rng"] is None  # the ranks keep their own random state
    c.require_layout(2, sharded=True)
    with pytest.raises(ck.CheckpointError, match=r"saved by 2 ranks \(sharded layout\) and this run has 4 ranks "
                                                 r"\(sharded layout\): saved world size 2, this run's world size 4\. "
                                                 r"Loading .*\(resharding N -> M\) is not supported yet"):
        c.require_layout(4, sharded=True)
    with pytest.raises(ck.CheckpointError, match=r"this run has 1 rank \(one process.*world size 1"):
        c.require_layout(1, sharded=False)
    with pytest.raises(ck.CheckpointError, match=r"is sharded over 2 ranks"):
        ck.load_weights(path)
    with open(path / "actor" / "dcp" / "__0_0.distcp", "r+b") as f:
        f.truncate(50)
    with pytest.raises(ck.CheckpointError, match=r"damaged: actor/dcp/__0_0.distcp is 50 bytes, 100 were written"):
        ck.inspect(path)


def test_single_layout_is_recorded_and_refused_into_several_ranks(tmp_path):
    path = ck.write(tmp_path / "c", worker_state={"actor": {"model": {"w": torch.ones(2)}, "optimizer": {}}},
                    extra={}, config_yaml="", global_step=3)
    c = ck.inspect(path)
    assert json.loads((path / ck.MARKER).read_text())["layout"] == "single" and (c.layout, c.world_size) == ("single", 1)
    c.require_layout(1, sharded=False)
    c.require_layout(2, sharded=False)  # the layout check itself: one process may drive several GPUs
    with pytest.raises(ck.CheckpointError, match=r"saved by one process \(single-process layout\) and this run has 2 "
                                                 r"ranks \(sharded layout\): saved world size 1, this run's world size 2"):
        c.require_layout(2, sharded=True)
    with pytest.raises(TypeError, match="exactly one of worker_state and write_worker"):
        ck.write(tmp_path / "d", worker_state={}, write_worker=fake_shards(1), extra={}, config_yaml="", global_step=0)


def test_sharded_writes_are_atomic_and_pruned_like_any_checkpoint(tmp_path):
    for step in (1, 2, 3):
        write_sharded(tmp_path / f"global_step_{step}", step=step)
    before = (tmp_path / "global_step_3" / ck.MARKER).read_text()
    with pytest.raises(RuntimeError, match="rank 1 died while writing"):  # a rank fails halfway: nothing changes
        write_sharded(tmp_path / "global_step_3", step=3, fail_after=1)
    assert (tmp_path / "global_step_3" / ck.MARKER).read_text() == before
    ck.inspect(tmp_path / "global_step_3")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["global_step_1", "global_step_2", "global_step_3"]
    write_sharded(tmp_path / "global_step_3", step=3, world=4)  # replaced whole, no shard of the old one left
    assert ck.inspect(tmp_path / "global_step_3").world_size == 4
    assert sorted(p.name for p in (tmp_path / "global_step_3" / "ranks").iterdir()) == [f"rank_{r}.pt" for r in range(4)]
    gone = ck.prune(tmp_path, max_actor=1, max_critic=None)
    assert [p.name for p in gone] == ["global_step_1", "global_step_2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["global_step_3"]
