"""RankWorker with a rollout engine beside its FSDP shards (rollout.name=sglang), on 2 CPU ranks with gloo.

The engine is ``fsdp_ranks.RecordingEngine`` (SGLang's rank-group methods, recorded). Checked: the
engine starts asleep and refuses to generate before ``wake_rollout``; every wake-up and every sync of
an awake engine hands the leader's engine exactly the actor's current (unsharded) weights; a sync
while asleep moves nothing and the next wake-up catches up; only the group's leader generates; no
hf generation copy is kept; the rank records the engine's start in its memory trace.
"""
from __future__ import annotations

import pytest
import torch

from rlkit import PPOConfig
from rlkit.addresses import free_port


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from tiny import char_tokenizer, make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("m"), char_tokenizer())


def config(model_dir, tp: int, offload: bool):
    o = {"data.train_files": "unused", "data.val_files": "unused", "data.train_batch_size": 4,
         "data.max_response_length": 6, "actor_rollout_ref.model.path": model_dir,
         "actor_rollout_ref.rollout.name": "sglang", "actor_rollout_ref.rollout.tensor_model_parallel_size": tp,
         "actor_rollout_ref.rollout.dtype": "float32", "actor_rollout_ref.rollout.n": 2,
         "actor_rollout_ref.actor.ppo_mini_batch_size": 2, "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu": 1,
         "critic.ppo_micro_batch_size_per_gpu": 1, "trainer.n_gpus_per_node": 2, "trainer.device": "cpu",
         "actor_rollout_ref.actor.fsdp_config.param_offload": offload}
    return PPOConfig.from_overrides([f"{k}={v}" for k, v in o.items()])


@pytest.mark.parametrize("tp,offload", [(2, False), (1, True)])
def test_engine_follows_the_actor(model_dir, tmp_path, tp, offload):
    import torch.multiprocessing as mp

    from fsdp_ranks import rank_worker_engine_run

    mp.spawn(rank_worker_engine_run, args=(2, free_port(), config(model_dir, tp, offload), str(tmp_path)), nprocs=2)
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    leaders = [r for r in results if r["is_leader"]]
    assert len(leaders) == 2 // tp
    for rank, r in enumerate(results):
        assert "call wake_rollout() before generate" in r.get("asleep_refusal", "call wake_rollout() before generate")
        assert not r["gen_model"]
        assert ("engine_start", "start") in r["snapshots"] and ("engine_start", "end") in r["snapshots"]
        assert r["snapshots"].index(("engine_start", "end")) < r["snapshots"].index(("load_models", "start"))
        if not r["is_leader"]:
            assert r["generated"]["responses"] == [] and r["events"] == []
            continue
        assert "asleep_refusal" in r
        assert len(r["generated"]["responses"]) == 2 * 2  # 2 prompts x rollout.n
        (w0, e0), (w1, e1), (w2, e2), (w3, e3) = r["loaded"]
        for actor, engine in ((w0, e0), (w1, e1), (w3, e3)):  # wake, sync while awake, wake again
            assert sorted(engine) == sorted(actor)
            assert all(torch.equal(engine[k], actor[k]) for k in actor)
        assert all(torch.equal(e2[k], w1[k]) for k in w1)  # asleep: the engine still holds the old weights
        assert not torch.equal(w2[next(iter(w2))], w1[next(iter(w1))])
        ev = r["events"]
        assert ev[0] == "sleep" and ev[1] == "resume_weights" and ev[-1] == "shutdown"
        assert ev.count("resume_weights") == 2 and ev.count("resume_kv_cache") == 2 and ev.count("generate:2") == 1
