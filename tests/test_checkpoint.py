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


def one_process_state(exp) -> dict:
    """What the in-process worker of rlkit before the worker group saved (the single-process layout):
    whole state dicts, the optimizer's keyed by parameter index, from the experiment's one local rank."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    from rlkit.training import fsdp

    rank = exp.worker.local
    out = {"rng": {"cpu": rank._torch_rng["cpu"], "cuda": []}}
    for role, model, optim, sched, *_ in rank._roles():
        names = [n for n, _ in model.named_parameters()]
        osd = get_optimizer_state_dict(model, optim, options=StateDictOptions(full_state_dict=True))
        osd = {"state": {names.index(k): v for k, v in osd["state"].items()},
               "param_groups": [dict(g, params=[names.index(k) for k in g["params"]]) for g in osd["param_groups"]]}
        out[role] = {"model": fsdp.full_state_dict(model), "optimizer": {"optim": osd, "sched": sched.state_dict()}}
    return out


def test_layout_and_size_follow_the_model(toy, tmp_path):
    exp = make(toy)
    exp.step()
    path = exp.save(tmp_path / "c")
    meta = json.loads((path / ck.MARKER).read_text())
    assert meta["format"] == 2 and meta["global_step"] == 1 and (meta["layout"], meta["world_size"]) == ("sharded", 1)
    assert set(meta["files"]) == {"actor/dcp/.metadata", "actor/dcp/__0_0.distcp", "critic/dcp/.metadata",
                                  "critic/dcp/__0_0.distcp", "ranks/rank_0.pt", "extra.pt", "config.yaml"}
    # per trained model (one rank holds every shard): 4 bytes per state-dict entry (the tied lm_head is
    # written under its own name too), 8 per trained weight of AdamW moments, plus DCP's per-tensor
    # framing (under 2 KB per item; it dominates only for a model this small)
    import torch.distributed.checkpoint as dcp

    for role in ("actor", "critic"):
        model = getattr(exp.worker.local, role)
        payload = 4 * sum(t.numel() for t in model.state_dict().values()) + 8 * n_params(model)
        items = len(dcp.FileSystemReader(str(path / role / "dcp")).read_metadata().state_dict_metadata)
        assert payload <= meta["files"][f"{role}/dcp/__0_0.distcp"] <= payload + 2048 * items
    assert "actor/dcp" in ck.inspect(path).describe()


def test_model_only_checkpoint_resumes_with_fresh_optimizer(toy, tmp_path):
    exp = make(toy, **{"actor_rollout_ref.actor.checkpoint.save_contents": "[model,extra]"})
    exp.step()
    path = exp.save(tmp_path / "c")
    with_optim = make(toy)
    full = with_optim.save(tmp_path / "full")
    assert (path / "actor" / "dcp" / "__0_0.distcp").stat().st_size < (full / "actor" / "dcp" / "__0_0.distcp").stat().st_size / 2
    with_optim.shutdown()
    lines = []
    resumed = Experiment.resume(path, reward_fn=digit_fraction, log=lines.append)
    assert any("no optimizer state saved for actor, critic" in line for line in lines)
    assert not resumed.worker.local.actor_optim.state  # fresh AdamW
    weights = ck.load_weights(path)  # assembled from the shards
    assert set(weights) == set(exp.worker.local.full_state_dict()["actor"])
    assert torch.equal(weights["model.embed_tokens.weight"],
                       resumed.worker.local.full_state_dict()["actor"]["model.embed_tokens.weight"])
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
    shard = path / "actor" / "dcp" / "__0_0.distcp"
    size = shard.stat().st_size
    with open(shard, "r+b") as f:  # a copy cut short
        f.truncate(size // 2)
    from rlkit.training.rank_worker import RankWorker

    monkeypatch.setattr(RankWorker, "__init__", lambda *a, **k: pytest.fail("models loaded"))
    with pytest.raises(ck.CheckpointError,
                       match=rf"is damaged: actor/dcp/__0_0.distcp is {size // 2} bytes, {size} were written"):
        Experiment.resume(path, reward_fn=digit_fraction)
    (path / "extra.pt").unlink()
    with pytest.raises(ck.CheckpointError, match="extra.pt is missing"):
        ck.inspect(path)


@pytest.mark.parametrize("fmt", [1, 2])
def test_single_process_checkpoints_still_resume(toy, tmp_path, fmt):
    """Checkpoints of rlkit before the worker group - one state.pt (format 1) or whole state dicts per
    role (format 2, single-process layout) - load into the rank's shards and resume to the same next
    step as the run that never stopped; the next save is sharded."""
    from omegaconf import OmegaConf

    straight = make(toy)
    straight.run(2, progress=False)
    expected = _comparable(straight.history.iloc[-1].to_dict())
    straight.shutdown()

    first = make(toy)
    first.step()
    state = one_process_state(first)
    old = tmp_path / "old"
    if fmt == 1:
        old.mkdir()
        worker = {k: state[role][part] if part == "model" else state[role]["optimizer"][part.split("_")[1]]
                  for role in ("actor", "critic") for k, part in ((role, "model"), (f"{role}_optim", "x_optim"),
                                                                (f"{role}_sched", "x_sched"))}
        torch.save({"worker": worker, "sampler": first.sampler.state_dict(), "kl_ctrl": first.kl_ctrl.state_dict(),
                    "global_step": 1, "history": first._history, "val_history": [], "memory": [],
                    "rng": {"torch": torch.get_rng_state(), "python": None, "numpy": None, "cuda": None}}, old / "state.pt")
        OmegaConf.save(first.config, old / "config.yaml")
        (old / ck.MARKER).write_text(json.dumps({"format": 1, "global_step": 1}))
    else:
        extra = {"sampler": first.sampler.state_dict(), "kl_ctrl": first.kl_ctrl.state_dict(), "global_step": 1,
                 "history": first._history, "val_history": [], "memory": []}
        ck.write(old, worker_state=state, extra=extra, config_yaml=OmegaConf.to_yaml(first.config), global_step=1)
        assert ck.inspect(old).layout == "single"
    lines = []
    resumed = Experiment.resume(old, reward_fn=digit_fraction, log=lines.append)
    assert any("single-process checkpoint (saved by an older rlkit) loaded into 1 rank(s)" in line for line in lines)
    for role in ("actor", "critic"):
        got = resumed.worker.local.full_state_dict()[role]
        assert all(torch.equal(got[k], v) for k, v in first.worker.local.full_state_dict()[role].items())
    resumed.worker.local._rng.set_state(first.worker.local._rng.get_state())  # the sampling generator: not in them
    if fmt == 1:
        resumed.worker.local._torch_rng = first.worker.local._torch_rng  # format 1 kept the random state globally
    first.shutdown()
    resumed.step()
    assert _comparable(resumed.history.iloc[-1].to_dict()) == pytest.approx(expected)
    assert ck.inspect(resumed.save(tmp_path / "new")).layout == "sharded"


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
    assert resumed.worker.local.actor_optim.param_groups[0]["lr"] == pytest.approx(1e-3)
    assert resumed.worker.local.actor_sched.last_epoch == exp.worker.local.actor_sched.last_epoch  # the schedule goes on
    assert resumed.worker.local.critic_optim.param_groups[0]["lr"] == pytest.approx(3e-3)

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
    c.require_world_size(2)
    with pytest.raises(ck.CheckpointError, match=r"saved by 2 ranks \(sharded layout\) and this run has 4 ranks: "
                                                 r"saved world size 2, this run's world size 4\. "
                                                 r"Loading .*\(resharding N -> M\) is not supported yet"):
        c.require_world_size(4)
    with pytest.raises(ck.CheckpointError, match=r"this run has 1 rank: saved world size 2, this run's world size 1"):
        c.require_world_size(1)
    with pytest.raises(ck.CheckpointError, match=r"holds no critic weights"):
        ck.load_weights(path, "critic")
    with open(path / "actor" / "dcp" / "__0_0.distcp", "r+b") as f:
        f.truncate(50)
    with pytest.raises(ck.CheckpointError, match=r"damaged: actor/dcp/__0_0.distcp is 50 bytes, 100 were written"):
        ck.inspect(path)


def test_single_layout_is_recorded_and_loads_into_any_number_of_ranks(tmp_path):
    path = ck.write(tmp_path / "c", worker_state={"actor": {"model": {"w": torch.ones(2)}, "optimizer": {}}},
                    extra={}, config_yaml="", global_step=3)
    c = ck.inspect(path)
    assert json.loads((path / ck.MARKER).read_text())["layout"] == "single" and (c.layout, c.world_size) == ("single", 1)
    for world in (1, 2, 8):
        c.require_world_size(world)  # every rank cuts its shards from the whole state
    assert torch.equal(ck.load_weights(path)["w"], torch.ones(2))
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
