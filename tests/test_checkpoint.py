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
