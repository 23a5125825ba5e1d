"""A worker group of one rank in this process (``WorkerGroup(cfg, local=True)``): the same RankWorker and
dispatch as on Ray, no Ray. One update of actor and critic equals the 1-rank Ray group's exactly (same
code, same float operations); sglang and several ranks are refused; a failing call breaks the group
with the rank named, and a new local group starts afterwards (the process group is rebuilt)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("ray")

sys.path.insert(0, str(Path(__file__).resolve().parent))  # this folder's helpers (pytest imports with importlib)
from test_group_cpu import config, make_batch, max_diff, one_step  # noqa: E402

from rlkit.distributed.group import WorkerGroup  # noqa: E402


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from tiny import char_tokenizer, make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("m"), char_tokenizer())


def test_local_rank_equals_a_ray_rank(model_dir, ray_cluster):
    batch = make_batch()
    # bit for bit needs the same float order: a Ray rank's torch runs one intra-op thread on the CPU (Ray sets
    # OMP_NUM_THREADS=1 in its workers), so the local rank runs with one too (with two, 2.7e-6 on this model)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        local = one_step(config(model_dir, 1), batch, local=True)
    finally:
        torch.set_num_threads(threads)
    remote = one_step(config(model_dir, 1), batch)
    for role in ("actor", "critic"):
        assert max_diff(local["state"][role], remote["state"][role]) == 0.0, role
        assert local[role] == remote[role]
    assert torch.equal(local["log_probs"]["log_probs"], remote["log_probs"]["log_probs"])
    assert local["actor"]["actor/grad_norm"] > 0


def test_local_group_refuses_what_it_cannot_run(model_dir):
    with pytest.raises(ValueError, match="one rank, and trainer.nnodes \\* trainer.n_gpus_per_node = 2"):
        WorkerGroup(config(model_dir, 2), local=True)
    cfg = config(model_dir, 1)
    cfg.actor_rollout_ref.rollout.name = "sglang"
    with pytest.raises(ValueError, match="never starts in this process"):
        WorkerGroup(cfg, local=True)


def test_a_failing_call_breaks_the_group_and_a_new_one_starts(model_dir):
    import torch.distributed as dist

    group = WorkerGroup(config(model_dir, 1), local=True)
    assert "in this process" in repr(group) and dist.is_initialized()
    with pytest.raises(RuntimeError, match=r"rank 0 \(node .*\) raised while 'no_such_method' ran") as err:
        group.call_all("no_such_method")
    assert isinstance(err.value.__cause__, AttributeError)
    assert "broken" in repr(group) and not dist.is_initialized()  # shut down: the process group is gone
    with pytest.raises(RuntimeError, match="failed earlier and was shut down"):
        group.compute_log_prob(make_batch())
    again = WorkerGroup(config(model_dir, 1), local=True)
    try:
        assert again.compute_log_prob(make_batch())["log_probs"].shape == make_batch()["responses"].shape
    finally:
        again.shutdown()
    assert not dist.is_initialized() and "shut down" in repr(again)


def test_two_local_groups_share_the_process_group_until_the_last_shuts_down(model_dir):
    """Two experiments in one notebook: both local ranks use this process's (one-rank) process group;
    shutting one down leaves the other working, and the last one takes the process group down."""
    import torch.distributed as dist

    first, second = WorkerGroup(config(model_dir, 1), local=True), WorkerGroup(config(model_dir, 1), local=True)
    first.shutdown()
    assert dist.is_initialized()
    try:
        assert second.update_critic(make_batch(), step=1)["critic/grad_norm"] > 0  # collectives still work
    finally:
        second.shutdown()
    assert not dist.is_initialized()


def test_a_local_group_dropped_without_shutdown_leaves_the_process_group(model_dir):
    """A notebook cell run again (``exp = Experiment(...)``) drops the old group without ``shutdown()``: once it is
    collected its rank has left the process group (the last user takes it down), and a new group starts."""
    import gc
    import weakref

    import torch.distributed as dist

    group = WorkerGroup(config(model_dir, 1), local=True)
    rank = weakref.ref(group.local)
    assert dist.is_initialized()
    del group
    gc.collect()
    assert not dist.is_initialized() and rank() is None  # left, and its models are freed
    again = WorkerGroup(config(model_dir, 1), local=True)
    try:
        assert again.compute_log_prob(make_batch())["log_probs"].shape == make_batch()["responses"].shape
    finally:
        again.shutdown()
    assert not dist.is_initialized()


def test_use_torch_compile_picks_roles_and_cpu_ranks_stay_eager(model_dir):
    """use_torch_compile (verl's key, on by default) compiles decoder layers on GPU only: actor and critic by
    the actor's switch, the reference by ref.use_torch_compile; a CPU rank runs its layers eagerly."""
    from rlkit.training.rank_worker import _compiles

    cfg = config(model_dir, 1)
    assert cfg.actor_rollout_ref.actor.use_torch_compile and all(_compiles(cfg, r) for r in ("actor", "ref", "critic"))
    cfg.actor_rollout_ref.ref.use_torch_compile = False
    assert [_compiles(cfg, r) for r in ("actor", "ref", "critic")] == [True, False, True]
    cfg.actor_rollout_ref.actor.use_torch_compile = False
    assert not any(_compiles(cfg, r) for r in ("actor", "critic"))
    group = WorkerGroup(config(model_dir, 1), local=True)
    try:
        from rlkit.training.fsdp import decoder_layers

        layers = decoder_layers(group.local.actor) + decoder_layers(group.local.critic)
        assert len(layers) == 4 and not any(hasattr(m, "_rlkit_eager_forward") for m in layers)
    finally:
        group.shutdown()


def test_old_log_probs_use_the_actors_compile_setting(model_dir, monkeypatch):
    """compute_log_prob sizes its micro-batches as the "rollout" role but runs the actor: it takes the actor's
    compile setting (the ref's for ref log-probs), which CUDA ranks set from use_torch_compile."""
    from rlkit.training import worker as worker_lib

    seen = []
    real = worker_lib.response_log_probs

    def spy(model, mb, temperature, with_entropy=False, packed=False, compiled=False, device=None):
        assert device == group.local.device  # the rank's device, not the parameters' (host ones under CPU offload)
        seen.append(compiled)
        return real(model, mb, temperature, with_entropy, packed, False, device)

    monkeypatch.setattr(worker_lib, "response_log_probs", spy)
    group = WorkerGroup(config(model_dir, 1), local=True)
    try:
        group.local.compiled.update(actor=True, critic=False)  # as a CUDA rank with use_torch_compile
        group.compute_log_prob(make_batch())
        assert seen and all(seen)
        group.local.compiled["actor"] = False
        seen.clear()
        group.compute_log_prob(make_batch())
        assert seen and not any(seen)
    finally:
        group.shutdown()
