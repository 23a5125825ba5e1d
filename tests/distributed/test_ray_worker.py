"""The Ray worker path on CPU: same results as in-process, and a dead worker never takes the controller down."""
from __future__ import annotations

import pytest

ray = pytest.importorskip("ray")

from rlkit import Experiment, PPOConfig  # noqa: E402
from rlkit.distributed.ray_worker import RayWorker, WorkerDiedError  # noqa: E402

from test_experiment import digit_fraction, toy_overrides  # noqa: E402


pytestmark = pytest.mark.usefixtures("ray_cluster")  # tests/distributed/conftest.py


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    from tiny import char_tokenizer, make_tiny_model, toy_parquet

    return make_tiny_model(tmp_path_factory.mktemp("m"), char_tokenizer()), toy_parquet(tmp_path_factory.mktemp("d"))


def test_remote_worker_matches_in_process(toy):
    cfg = PPOConfig.from_overrides(toy_overrides(*toy))
    local = Experiment(cfg, reward_fn=digit_fraction)
    expected = [local.step().metrics for _ in range(2)]
    worker = RayWorker(cfg)
    assert worker.num_gpus == 0 and worker.has_critic and not worker.has_ref
    remote = Experiment(cfg, reward_fn=digit_fraction, worker=worker)
    got = [remote.step().metrics for _ in range(2)]
    for e, g in zip(expected, got):  # same seeds, same device: the same numbers
        for key in ("critic/score/mean", "actor/pg_loss", "critic/vf_loss", "response_length/mean"):
            assert g[key] == pytest.approx(e[key], rel=1e-5, abs=1e-7), key
    remote.shutdown()


def test_dead_worker_is_reported_and_controller_survives(toy):
    cfg = PPOConfig.from_overrides(toy_overrides(*toy))
    worker = RayWorker(cfg)
    exp = Experiment(cfg, reward_fn=digit_fraction, worker=worker)
    exp.step()
    ray.kill(worker._actor)  # what SGLang does to its launcher when the engine fails
    with pytest.raises(WorkerDiedError, match="worker process died"):
        exp.step()
    assert exp.global_step == 1  # the controller's state is intact
    with pytest.raises(RuntimeError, match="shut down"):
        exp.step()
    exp.shutdown()
    # a second experiment in the same process starts cleanly
    again = Experiment(cfg, reward_fn=digit_fraction, worker=RayWorker(cfg))
    assert again.step().step == 1
    again.shutdown()


def test_remote_snapshots_land_between_phases(toy):
    """Snapshots are sent without waiting; the actor runs them in order, so each phase has start and end.
    The worker records them itself: nothing is handed in by the controller."""
    cfg = PPOConfig.from_overrides(toy_overrides(*toy))
    worker = RayWorker(cfg)
    exp = Experiment(cfg, reward_fn=digit_fraction, worker=worker)
    assert [(r.phase, r.event) for r in exp.memory_recorder.records] == [
        ("load_models", "start"), ("load_models", "end")]  # taken in the actor while it started
    res = exp.step()
    order = res.memory.drop_duplicates(["phase", "event", "time"]).sort_values("time")
    pairs = list(zip(order["phase"], order["event"]))
    assert pairs[0] == ("step", "start") and pairs[-1] == ("step", "end")
    assert pairs.index(("gen", "start")) < pairs.index(("gen", "end")) < pairs.index(("update_actor", "start"))
    exp.shutdown()


def test_missing_gpus_fail_at_once_instead_of_waiting(toy):
    """Ray would keep a request for a GPU the cluster lacks pending forever; rlkit refuses at once."""
    import time

    cfg = PPOConfig.from_overrides(toy_overrides(*toy))
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match=r"needs 1 GPU\(s\) and the Ray cluster has 0 \(CPU=2"):
        RayWorker(cfg, num_gpus=1)
    assert time.monotonic() - t0 < 10
