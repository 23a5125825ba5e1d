"""rlkit.training.engine_group on CPU with gloo: a rollout engine spread over a TP group of rank workers.

Two spawned ranks shard the tiny model with FSDP2 and build an :class:`EngineGroup` around a recording
stand-in for SGLang (``fsdp_ranks.RecordingEngine``). Checked: which ranks launch engine parts and with
which SGLang arguments (TP size, nodes, ``node_rank``, ``dist_init_addr``, GPUs in TP order); that the
leader's engine receives every parameter of the model exactly (fp32 engine: equal bits to the unsharded
model), from every TP rank, bucket by bucket under the bucket size; the sleep / wake order (verl's:
resume weights, push, resume KV cache); and that only the leader takes prompts.
"""
from __future__ import annotations

import pytest
import torch

from rlkit.addresses import free_port

BUCKET = 16 * 1024  # bytes: the tiny model (~100 kB) goes in several buckets


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tiny import char_tokenizer, make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("m"), char_tokenizer())


@pytest.fixture(scope="module")
def reference(tiny):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32)
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def run(tiny, tmp_path, *, nnodes: int, tp: int, offload: bool = False) -> list[dict]:
    import torch.multiprocessing as mp

    from fsdp_ranks import engine_group_run

    mp.spawn(engine_group_run, args=(2, free_port(), tiny, nnodes, tp, offload, BUCKET, str(tmp_path)), nprocs=2)
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]


def check_weights(result: dict, reference: dict) -> None:
    assert result["rank_copies_equal"]
    assert sorted(result["loaded"]) == sorted(reference)
    for name, want in reference.items():
        assert torch.equal(result["loaded"][name], want), name
    loads = len(result["buckets"]) // 2  # pushed twice: once at start, once on wake-up
    assert result["n_buckets"] == loads > 1
    for tensors, nbytes in result["buckets"]:
        assert nbytes <= BUCKET or tensors == 1  # a bigger tensor goes alone


LEADER_EVENTS = lambda loads, prompts: (["load"] * loads + ["flush_cache", "sleep", "resume_weights"]  # noqa: E731
                                        + ["load"] * loads + ["flush_cache", "resume_kv_cache",
                                                              f"generate:{prompts}", "shutdown"])


def test_one_tp2_group_in_a_node(tiny, tmp_path, reference):
    leader, other = run(tiny, tmp_path, nnodes=1, tp=2)
    assert leader["is_leader"] and leader["launched"] and not other["is_leader"] and not other["launched"]
    kw = leader["kwargs"]
    assert (kw["tp_size"], kw["nnodes"], kw["node_rank"], kw["dist_init_addr"], kw["preflight"]) == (2, 1, 0, None, False)
    assert leader["visible"] == "10,11"  # engine TP rank i on rank i's GPU
    check_weights(leader, reference)
    assert leader["events"] == LEADER_EVENTS(leader["n_buckets"], 2)
    assert other["n_out"] == 0 and "not its TP group's leader (rank 0)" in other["refused"]
    assert other["n_buckets"] == leader["n_buckets"]  # every rank took part in every bucket


def test_two_tp1_groups_with_param_offload(tiny, tmp_path, reference):
    results = run(tiny, tmp_path, nnodes=1, tp=1, offload=True)
    for rank, r in enumerate(results):
        assert r["is_leader"] and r["launched"] and r["leader"] == rank and r["n_out"] == 2
        assert r["kwargs"]["tp_size"] == 1 and r["visible"] == str(10 + rank)
        check_weights(r, reference)
        assert r["events"] == LEADER_EVENTS(r["n_buckets"], 2)


def test_tp_group_across_two_nodes(tiny, tmp_path, reference):
    leader, other = run(tiny, tmp_path, nnodes=2, tp=2)
    assert leader["launched"] and other["launched"]  # each node's first rank launches its part
    for node, r in enumerate((leader, other)):
        assert (r["kwargs"]["tp_size"], r["kwargs"]["nnodes"], r["kwargs"]["node_rank"]) == (2, 2, node)
        assert r["visible"] == str(10 + node)
    assert leader["kwargs"]["dist_init_addr"] and leader["kwargs"]["dist_init_addr"] == other["kwargs"]["dist_init_addr"]
    check_weights(leader, reference)
    assert other["events"] == ["shutdown"]  # the front end is the leader's: the other part only serves
    assert "not its TP group's leader" in other["refused"]


def test_full_tensors_casts_and_passes_plain_tensors():
    from rlkit.training.fsdp import full_tensors

    t = torch.tensor([1.0, 2.5])
    (name, out), = full_tensors([("w", t)], torch.bfloat16)
    assert name == "w" and out.dtype == torch.bfloat16 and out.tolist() == [1.0, 2.5]
    (_, same), = full_tensors([("w", t)])
    assert same.dtype == torch.float32 and torch.equal(same, t)


@pytest.mark.parametrize("mode", ["error", "warn"])
def test_preflight_reads_every_rank_before_any_engine_starts(tmp_path, mode):
    """SGLang's TP memory rule over the group's own readings (rank 1's GPU has 57 of 80 GiB free, rank
    0's 77): with ``error`` every rank raises the same report (naming the short rank and the config key
    to change) and no engine part starts; with ``warn`` both warn and the leader's part starts."""
    import torch.multiprocessing as mp

    from fsdp_ranks import engine_preflight_run

    mp.spawn(engine_preflight_run, args=(2, free_port(), [77.14, 57.14], mode, str(tmp_path)), nprocs=2)
    res = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    print(res[0]["error"] or res[0]["warnings"])
    if mode == "error":
        assert res[0]["error"] == res[1]["error"] and res[0]["error"].startswith("TPMemoryImbalanceError")
        assert "(rank 1) is short by 12.29 GiB" in res[0]["error"]
        assert "actor_rollout_ref.rollout.gpu_memory_utilization (now" in res[0]["error"]  # the run config reached it
        assert not any(r["launched"] for r in res)
    else:
        assert all(r["error"] is None for r in res)
        assert all(any(w.startswith("TPMemoryImbalanceWarning") for w in r["warnings"]) for r in res)
        assert [r["launched"] for r in res] == [True, False] and res[0]["readings"] == [77.14, 57.14]
