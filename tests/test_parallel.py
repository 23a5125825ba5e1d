"""rlkit.parallel: cluster layout and per-rank batch sizes, with hand-computed expectations.

Sizes are counted in responses (rows): a prompt yields rollout.n responses and every rank (one per
GPU) gets a 1/world share. Each expectation is worked out in the comment next to it.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rlkit.config import ConfigError, PPOConfig, validate
from rlkit.parallel import ParallelPlan
from test_config import CMD_2NODE_TP16, CMD_4GPU, ONE_GPU

A, R, RO = "actor_rollout_ref.actor", "actor_rollout_ref.ref", "actor_rollout_ref.rollout"
TP_KEY = f"{RO}.tensor_model_parallel_size"


def plan_of(overrides):
    return ParallelPlan.from_config(PPOConfig.from_overrides(overrides, check=False))


# ----------------------------------------------------------------------------- one node, four GPUs

def test_four_gpus_tp2():
    plan = ParallelPlan.build(nnodes=1, gpus_per_node=4, tp=2, train_batch_size=64, n=1, mini_batch_size=16,
                              micro_batch_size_per_gpu=2, log_prob_micro_batch_size_per_gpu=4)
    assert plan.problems() == []
    assert (plan.nnodes, plan.gpus_per_node, plan.world_size, plan.train_dp) == (1, 4, 4, 4)
    # 4 GPUs / TP 2 = 2 engines: ranks 0-1 and 2-3
    assert plan.rollout_tp == 2 and plan.rollout_dp == 2 and plan.tp_groups == ((0, 1), (2, 3))
    assert plan.fsdp_mesh == (1, 4)  # fsdp_size=-1: one replica sharded over all 4
    a = plan.role("actor")
    assert a.batch_per_rank == 16  # 64 prompts * 1 / 4 ranks
    assert a.mini_batch_per_rank == 4  # 16 prompts * 1 / 4 ranks
    assert a.num_mini_batches == 4  # 64 / 16
    assert a.micro_batch_per_rank == 2 and a.micro_source == "per_gpu"
    assert a.grad_accum_steps == 2  # 4 / 2
    assert a.epochs == 1 and a.trains and not a.dynamic
    for name in ("ref", "rollout"):
        r = plan.role(name)
        assert r.batch_per_rank == 16 and r.micro_batch_per_rank == 4
        assert r.forward_passes == 4  # ceil(16 / 4)
        assert r.mini_batch_per_rank is None and r.grad_accum_steps is None and not r.trains


def test_seed_4gpu_command():
    plan = plan_of(CMD_4GPU)
    assert plan.problems() == []
    assert plan.world_size == 4 and plan.tp_groups == ((0, 1), (2, 3)) and plan.rollout_name == "sglang"
    a, c = plan.role("actor"), plan.role("critic")  # gae (the default) trains a critic
    # 4096 prompts * n=1 / 4 = 1024 responses per rank; mini 64*1/4 = 16; 4096/64 = 64 mini-batches;
    # micro 4 per GPU -> 16/4 = 4 accumulation steps
    for r in (a, c):
        assert (r.batch_per_rank, r.mini_batch_per_rank, r.num_mini_batches, r.micro_batch_per_rank,
                r.grad_accum_steps) == (1024, 16, 64, 4, 4)
    assert plan.role("rollout").forward_passes == 128  # 1024 / log_prob micro 8
    assert plan.role("ref").forward_passes == 256  # 1024 / 4
    assert plan.role("values").micro_batch_per_rank == 4  # follows critic.ppo_micro_batch_size_per_gpu


def test_rollout_n_multiplies_responses():
    # GRPO: 32 prompts * 4 responses = 128 responses / 4 ranks = 32 per rank; mini 8*4/4 = 8; 32/8 = 4 mini-batches
    plan = ParallelPlan.build(nnodes=1, gpus_per_node=4, tp=1, train_batch_size=32, n=4, mini_batch_size=8,
                              micro_batch_size_per_gpu=2)
    a = plan.role("actor")
    assert (a.batch_per_rank, a.mini_batch_per_rank, a.num_mini_batches, a.grad_accum_steps) == (32, 8, 4, 4)
    assert plan.tp_groups == ((0,), (1,), (2,), (3,)) and plan.rollout_dp == 4


# ----------------------------------------------------------------------------- two nodes, TP across them

def test_two_nodes_tp16_spans_both_nodes():
    # verl's seed runs TP=16 on 2 nodes x 8 GPUs: one SGLang engine over every GPU of both nodes
    plan = plan_of(CMD_2NODE_TP16 + [f"{A}.ppo_micro_batch_size_per_gpu=4"])
    assert plan.problems() == []
    assert plan.world_size == 16 and plan.rollout_tp == 16 and plan.rollout_dp == 1
    assert plan.tp_groups == (tuple(range(16)),)
    assert plan.rank_info(9) == {"rank": 9, "node": 1, "local_rank": 1, "tp_group": 0, "tp_ranks": tuple(range(16)),
                                 "tp_rank": 9, "dp_rank": 9, "rollout_dp_rank": 0, "fsdp_coord": (0, 9)}
    a, c, ref = plan.role("actor"), plan.role("critic"), plan.role("ref")
    # 4096/16 = 256 responses per rank; mini 64/16 = 4; micro 4 -> 1 step; 4096/64 = 64 mini-batches
    assert (a.batch_per_rank, a.mini_batch_per_rank, a.micro_batch_per_rank, a.grad_accum_steps,
            a.num_mini_batches) == (256, 4, 4, 1, 64)
    # deprecated global critic.ppo_micro_batch_size=16 over 16 GPUs = 1 per GPU -> 4 steps
    assert (c.micro_batch_per_rank, c.micro_source, c.grad_accum_steps) == (1, "global", 4)
    # ref.log_prob_micro_batch_size=16 (global) -> 1 per GPU -> 256 forwards
    assert (ref.micro_batch_per_rank, ref.micro_source, ref.forward_passes) == (1, "global", 256)


def test_two_nodes_seed_as_written_runs_one_micro_batch_per_mini_batch():
    # 64*1/16 = 4 responses per GPU, less than ppo_micro_batch_size_per_gpu=16: accepted as verl's workers
    # accept it, the 4 responses are one micro-batch (micro = mini = 4 per rank, 4/4 = 1 accumulation step)
    plan = plan_of(CMD_2NODE_TP16)
    assert plan.problems() == []
    a = plan.role("actor")
    assert (a.mini_batch_per_rank, a.micro_batch_per_rank, a.micro_source, a.grad_accum_steps) == (4, 4, "per_gpu", 1)
    (w,) = plan.warnings()
    assert w.startswith(f"{A}.ppo_micro_batch_size_per_gpu=16 is larger than the per-GPU mini-batch")
    assert "64*1/16 = 4" in w and "micro-batch per rank = mini-batch per rank = 4" in w and "\n" not in w
    assert f"note: {w}" in plan.describe()


def test_validate_warns_once_with_the_plan_note():
    from rlkit.config import ConfigWarning

    with pytest.warns(ConfigWarning) as record:
        validate(PPOConfig.from_overrides(CMD_2NODE_TP16, check=False))
    assert [str(r.message) for r in record] == plan_of(CMD_2NODE_TP16).warnings()


def test_global_micro_larger_than_the_per_gpu_mini_batch_is_one_micro_batch():
    # deprecated global micro 256 over 16 GPUs = 16 per GPU > 64*1/16 = 4: one micro-batch of 4, no
    # "must divide ppo_mini_batch_size" problem (that rule is for micro-batches smaller than the mini-batch)
    plan = ParallelPlan.build(nnodes=2, gpus_per_node=8, tp=16, train_batch_size=4096, mini_batch_size=64,
                              micro_batch_size=256)
    assert plan.problems() == []
    a = plan.role("actor")
    assert (a.micro_batch_per_rank, a.micro_source, a.grad_accum_steps) == (4, "global", 1)
    assert plan.warnings()[0].startswith(f"{A}.ppo_micro_batch_size=256 (256/16 = 16 per GPU) is larger")


def test_smaller_micro_that_does_not_divide_is_still_refused():
    # 64*1/16 = 4 per GPU; 3 < 4 does not divide it: refused, no note
    plan = ParallelPlan.build(nnodes=2, gpus_per_node=8, tp=16, train_batch_size=4096, mini_batch_size=64,
                              micro_batch_size_per_gpu=3)
    (p,) = plan.problems()
    assert p.startswith(f"{A}.ppo_micro_batch_size_per_gpu=3: ") and "64*1/16 = 4" in p
    assert plan.warnings() == []


def test_tp_group_smaller_than_a_node_may_not_straddle_nodes():
    # 2 nodes x 6 GPUs, TP 4: 12 % 4 == 0, but group 1 would be ranks 4-7 = node 0 (4, 5) + node 1 (6, 7)
    plan = ParallelPlan.build(nnodes=2, gpus_per_node=6, tp=4, train_batch_size=48, mini_batch_size=12)
    (p,) = plan.problems()
    assert p.startswith(f"{TP_KEY}=4: ") and "straddle" in p and "n_gpus_per_node=6" in p
    assert f"{TP_KEY}=3" in p  # the divisor of 6 nearest 4
    assert plan.tp_groups == () and plan.rollout_dp is None
    with pytest.raises(ValueError, match="no rank layout"):
        plan.rank_info(0)


def test_tp_group_larger_than_a_node_spans_whole_nodes():
    # 3 nodes x 4 GPUs, TP 6: 12 % 6 == 0, but 6 GPUs would be one node and half of the next
    (p,) = ParallelPlan.build(nnodes=3, gpus_per_node=4, tp=6, train_batch_size=48, mini_batch_size=12).problems()
    assert p.startswith(f"{TP_KEY}=6: ") and "span whole nodes" in p and "Fix:" in p
    # 4 nodes x 4, TP 8: engines over nodes 0-1 and nodes 2-3
    plan = ParallelPlan.build(nnodes=4, gpus_per_node=4, tp=8, train_batch_size=64, mini_batch_size=16)
    assert plan.problems() == [] and plan.tp_groups == (tuple(range(8)), tuple(range(8, 16)))
    info = plan.rank_info(9)
    assert (info["node"], info["local_rank"], info["tp_group"], info["tp_rank"], info["rollout_dp_rank"]) == \
        (2, 1, 1, 1, 1)


def test_tp_groups_inside_nodes():
    plan = ParallelPlan.build(nnodes=2, gpus_per_node=4, tp=2, train_batch_size=64, mini_batch_size=16)
    assert plan.tp_groups == ((0, 1), (2, 3), (4, 5), (6, 7)) and plan.rollout_dp == 4
    for group in plan.tp_groups:  # every group on one node
        assert len({plan.rank_info(r)["node"] for r in group}) == 1


def test_tp_must_divide_world_message_unchanged():
    (p,) = ParallelPlan.build(nnodes=1, gpus_per_node=1, tp=2, train_batch_size=8).problems()
    assert p == (f"{TP_KEY}=2: the SGLang TP group must divide the nnodes*n_gpus_per_node = 1*1 = 1 GPUs. "
                 f"Fix: pick a divisor of 1 (e.g. {TP_KEY}=1 on one GPU).")


def test_hf_rollout_ignores_tp():
    plan = ParallelPlan.build(nnodes=1, gpus_per_node=2, tp=4, rollout="hf", train_batch_size=8)
    assert plan.problems() == [] and plan.rollout_tp == 1 and plan.tp_groups == ((0,), (1,))


# ----------------------------------------------------------------------------- FSDP mesh

def test_fsdp_size_gives_hybrid_mesh():
    # 8 GPUs, fsdp_size 4: 8/4 = 2 replicas, each sharded over 4 GPUs
    plan = ParallelPlan.build(nnodes=1, gpus_per_node=8, tp=2, train_batch_size=64, mini_batch_size=16,
                              fsdp_size=4)
    assert plan.problems() == [] and plan.fsdp_mesh == (2, 4) and plan.role("ref").fsdp_mesh == (2, 4)
    assert plan.rank_info(5)["fsdp_coord"] == (1, 1)  # 5 = 1*4 + 1
    assert ParallelPlan.build(nnodes=1, gpus_per_node=8, train_batch_size=64, fsdp_size=8).fsdp_mesh == (1, 8)
    assert ParallelPlan.build(nnodes=2, gpus_per_node=8, train_batch_size=64, fsdp_size=-1).fsdp_mesh == (1, 16)


@pytest.mark.parametrize("size, words", [(3, "must divide"), (16, "must divide"), (0, "must be -1"),
                                         (-2, "must be -1")])
def test_fsdp_size_rules(size, words):
    plan = ParallelPlan.build(nnodes=1, gpus_per_node=8, train_batch_size=64, fsdp_size=size)
    mine = [p for p in plan.problems() if p.startswith(f"{A}.fsdp_config.fsdp_size={size}: ")]
    assert len(mine) == 1 and words in mine[0] and "Fix:" in mine[0]
    if size == 3:
        assert f"{A}.fsdp_config.fsdp_size=2" in mine[0]  # divisors of 8 nearest 3: 2 and 4, the smaller


def test_fsdp_size_is_validated_by_the_config():
    with pytest.raises(ConfigError, match=r"critic\.model\.fsdp_config\.fsdp_size=3"):
        PPOConfig.from_overrides(["trainer.n_gpus_per_node=4", "data.train_batch_size=64",
                                  f"{A}.ppo_mini_batch_size=16", "critic.model.fsdp_config.fsdp_size=3"])
    cfg = PPOConfig.from_overrides(["trainer.n_gpus_per_node=4", "data.train_batch_size=64",
                                    f"{A}.ppo_mini_batch_size=16", f"{A}.fsdp_config.fsdp_size=2"])
    assert ParallelPlan.from_config(cfg).fsdp_mesh == (2, 2)


# ----------------------------------------------------------------------------- micro-batch forms

def test_deprecated_global_micro_batch_is_divided_by_world():
    # 8 GPUs, mini 16 -> 16/8 = 2 per rank; global micro 8 -> 8/8 = 1 per rank -> 2 steps
    plan = ParallelPlan.build(nnodes=1, gpus_per_node=8, train_batch_size=64, mini_batch_size=16,
                              micro_batch_size=8, log_prob_micro_batch_size=32)
    a = plan.role("actor")
    assert plan.problems() == []
    assert (a.mini_batch_per_rank, a.micro_batch_per_rank, a.micro_source, a.grad_accum_steps) == (2, 1, "global", 2)
    # log-prob: 32/8 = 4 per rank over 64/8 = 8 responses -> 2 forwards
    ro = plan.role("rollout")
    assert (ro.batch_per_rank, ro.micro_batch_per_rank, ro.forward_passes) == (8, 4, 2)


def test_deprecated_global_micro_batch_smaller_than_world():
    plan = ParallelPlan.build(nnodes=1, gpus_per_node=8, train_batch_size=64, mini_batch_size=16, micro_batch_size=4)
    assert any(p.startswith(f"{A}.ppo_micro_batch_size=4: ") and "< 1 per GPU" in p for p in plan.problems())


def test_global_micro_share_must_divide_per_rank_mini():
    # 4 GPUs, mini 16 -> 4 per rank; global micro 12: 16 % 12 != 0, and its share 12/4 = 3 does not divide 4
    probs = ParallelPlan.build(nnodes=1, gpus_per_node=4, train_batch_size=64, mini_batch_size=16,
                               micro_batch_size=12).problems()
    assert any("must divide actor_rollout_ref.actor.ppo_mini_batch_size=16" in p for p in probs)
    assert any("12 split over 4 GPUs is 3 per GPU" in p for p in probs)


def test_dynamic_bsz_records_token_budget():
    plan = ParallelPlan.build(nnodes=1, gpus_per_node=4, train_batch_size=64, mini_batch_size=16,
                              micro_batch_size_per_gpu=3, use_dynamic_bsz=True, max_token_len_per_gpu=4096)
    assert plan.problems() == []  # micro 3 would not divide 4, but micro-batches are packed by tokens
    a = plan.role("actor")
    assert a.dynamic and a.micro_source == "tokens" and a.max_token_len_per_rank == 4096
    assert a.micro_batch_per_rank is None and a.grad_accum_steps is None
    assert (a.mini_batch_per_rank, a.num_mini_batches) == (4, 4)  # mini-batches stay fixed: 16/4, 64/16
    assert plan.role("ref").dynamic and plan.role("ref").forward_passes is None
    assert "4096 tok" in plan.describe()


def test_dynamic_bsz_still_needs_a_mini_batch_on_every_rank():
    # 2 prompts per mini-batch on 4 GPUs leaves two ranks without data, token budget or not
    (p,) = ParallelPlan.build(nnodes=1, gpus_per_node=4, train_batch_size=64, mini_batch_size=2,
                              use_dynamic_bsz=True).problems()
    assert p.startswith(f"{A}.ppo_mini_batch_size=2: ") and "leaving a GPU with no data" in p


def test_mini_batch_must_split_evenly_over_ranks():
    # 72 % 4 == 0 and 72 % 18 == 0, but 18 % 4 == 2: each rank's mini-batch would be 4.5 responses
    (p,) = ParallelPlan.build(nnodes=1, gpus_per_node=4, train_batch_size=72, mini_batch_size=18).problems()
    assert p.startswith(f"{A}.ppo_mini_batch_size=18: ") and "must split evenly" in p
    assert f"{A}.ppo_mini_batch_size=12" in p  # divisors of 72 that are multiples of 4, nearest 18: 12, 24
    with pytest.raises(ConfigError, match="must split evenly"):
        PPOConfig.from_overrides(["trainer.n_gpus_per_node=4", "data.train_batch_size=72",
                                  f"{A}.ppo_mini_batch_size=18"])


# ----------------------------------------------------------------------------- one GPU = today

def _single_device_sizes(cfg):
    """The sizes rlkit's one-device worker uses today (training/worker.py): mini = ppo_mini_batch_size * n,
    micro = per_gpu or global or the mini-batch; log-prob chunks = per_gpu or global or the whole batch."""
    a, ro, n = cfg.actor_rollout_ref.actor, cfg.actor_rollout_ref.rollout, cfg.actor_rollout_ref.rollout.n
    batch = cfg.data.train_batch_size * n
    mini = a.ppo_mini_batch_size * n
    micro = a.ppo_micro_batch_size_per_gpu or a.ppo_micro_batch_size or mini
    lp = ro.log_prob_micro_batch_size_per_gpu or ro.log_prob_micro_batch_size or batch
    return batch, mini, micro, lp


@pytest.mark.parametrize("extra", [[], ["algorithm.adv_estimator=grpo", f"{RO}.n=4"],
                                   [f"{A}.ppo_micro_batch_size_per_gpu=null", f"{A}.ppo_micro_batch_size=8"],
                                   [f"{A}.ppo_micro_batch_size_per_gpu=null", f"{RO}.log_prob_micro_batch_size=16"]])
def test_one_gpu_matches_todays_sizes(extra):
    cfg = PPOConfig.from_overrides(ONE_GPU + extra)
    plan = ParallelPlan.from_config(cfg)
    batch, mini, micro, lp = _single_device_sizes(cfg)
    a, ro = plan.role("actor"), plan.role("rollout")
    assert plan.world_size == 1 and plan.problems() == [] and plan.fsdp_mesh == (1, 1)
    assert (a.batch_per_rank, a.mini_batch_per_rank, a.micro_batch_per_rank) == (batch, mini, micro)
    assert a.grad_accum_steps == mini // micro and a.num_mini_batches == batch // mini
    assert ro.micro_batch_per_rank == lp


def test_one_gpu_defaults():
    # ONE_GPU: 64 prompts, mini 16, micro 4 -> 4 mini-batches of 4 micro-batches; no log-prob micro: one forward
    plan = ParallelPlan.from_config(PPOConfig.from_overrides(ONE_GPU))
    a = plan.role("actor")
    assert (a.batch_per_rank, a.mini_batch_per_rank, a.num_mini_batches, a.micro_batch_per_rank,
            a.grad_accum_steps) == (64, 16, 4, 4, 4)
    assert plan.role("rollout").forward_passes == 1 and plan.role("rollout").micro_batch_per_rank == 64
    assert plan.rollout_name == "hf" and plan.tp_groups == ((0,),)


# ----------------------------------------------------------------------------- problems, rank_info, describe

def test_problems_lists_every_rule_at_once():
    # 4 GPUs: TP 3 (4 % 3), 62 prompts (62 % 4), mini 16 (62 % 16), micro 3 (16/4 = 4, 4 % 3), fsdp 3 (4 % 3)
    plan = ParallelPlan.build(nnodes=1, gpus_per_node=4, tp=3, train_batch_size=62, mini_batch_size=16,
                              micro_batch_size_per_gpu=3, fsdp_size=3)
    probs = plan.problems()
    for key in (f"{TP_KEY}=3: ", "data.train_batch_size=62: ", f"{A}.ppo_mini_batch_size=16: ",
                f"{A}.ppo_micro_batch_size_per_gpu=3: ", f"{A}.fsdp_config.fsdp_size=3: ",
                f"{R}.fsdp_config.fsdp_size=3: "):
        assert sum(p.startswith(key) for p in probs) == 1, (key, probs)
    assert len(probs) == 6 and all(". Fix: " in p and p.endswith(".") for p in probs)
    assert "62*1 = 62 responses must split evenly over the nnodes*n_gpus_per_node = 1*4 = 4 GPUs" in "\n".join(probs)
    assert plan.role("actor").batch_per_rank is None  # sizes it cannot compute stay None
    assert "6 problems:" in plan.describe() and "problems=6" in repr(plan)


def test_value_rules_on_plan_keys():
    plan = ParallelPlan.build(nnodes=0, gpus_per_node=0, tp=0, train_batch_size=0, n=0, mini_batch_size=0,
                              micro_batch_size_per_gpu=0)
    probs = "\n".join(plan.problems())
    for text in ("trainer.nnodes=0: must be >= 1", "trainer.n_gpus_per_node=0: must be >= 1",
                 f"{TP_KEY}=0: must be >= 1", "data.train_batch_size=0: must be > 0",
                 f"{RO}.n=0: must be >= 1 (responses per prompt)", f"{A}.ppo_mini_batch_size=0: must be >= 1",
                 f"{A}.ppo_micro_batch_size_per_gpu=0: must be >= 1 or null"):
        assert text in probs
    assert plan.world_size is None and plan.rollout_dp is None


def test_rank_info():
    plan = ParallelPlan.build(nnodes=2, gpus_per_node=4, tp=2, train_batch_size=64, mini_batch_size=16, fsdp_size=4)
    assert plan.rank_info(0) == {"rank": 0, "node": 0, "local_rank": 0, "tp_group": 0, "tp_ranks": (0, 1),
                                 "tp_rank": 0, "dp_rank": 0, "rollout_dp_rank": 0, "fsdp_coord": (0, 0)}
    # rank 5 = node 1 (4 GPUs each), local 1; TP group 5 // 2 = 2 = (4, 5), tp rank 1; fsdp (5 // 4, 5 % 4)
    assert plan.rank_info(5) == {"rank": 5, "node": 1, "local_rank": 1, "tp_group": 2, "tp_ranks": (4, 5),
                                 "tp_rank": 1, "dp_rank": 5, "rollout_dp_rank": 2, "fsdp_coord": (1, 1)}
    assert plan.rank_info(7)["tp_ranks"] == (6, 7) and plan.rank_info(7)["node"] == 1
    for bad in (-1, 8):
        with pytest.raises(ValueError, match="outside 0..7"):
            plan.rank_info(bad)


def test_describe_contains_the_numbers():
    plan = ParallelPlan.build(nnodes=1, gpus_per_node=4, tp=2, train_batch_size=64, n=2, mini_batch_size=16,
                              micro_batch_size_per_gpu=4, critic=True)
    text = plan.describe()
    assert "1 node x 4 GPUs = world 4" in text and "64 prompts x n=2" in text
    assert "TP 2 x DP 2" in text and "[0,1] [2,3]" in text and "actor (1, 4)" in text
    # actor row: 64*2/4 = 32 per rank, mini 16*2/4 = 8, 64/16 = 4 mini-batches, micro 4, 2 steps
    (row,) = [line.split() for line in text.splitlines() if line.split()[:1] == ["actor"]]
    assert row == ["actor", "32", "8", "4", "1", "4", "2", "-"]
    assert any(line.split()[:1] == ["critic"] for line in text.splitlines())
    assert "problem" not in text
    assert repr(plan).startswith("ParallelPlan(world=4 (1x4), rollout=sglang tp=2 dp=2, fsdp_mesh=(1, 4)")


def test_critic_roles_only_with_gae():
    plan = ParallelPlan.build(train_batch_size=8, critic=False)
    assert [r.role for r in plan.roles] == ["actor", "ref", "rollout"]
    with pytest.raises(KeyError, match="adv_estimator=gae"):
        plan.role("critic")
    assert [r.role for r in ParallelPlan.build(train_batch_size=8, critic=True).roles] == \
        ["actor", "critic", "values", "ref", "rollout"]


def test_from_config_accepts_partial_nested_dict():
    plan = ParallelPlan.from_config({"trainer": {"nnodes": 1, "n_gpus_per_node": 2}})
    assert plan.world_size == 2 and plan.problems() == [] and plan.role("actor").batch_per_rank is None


def test_values_of_the_wrong_type_count_as_unknown():
    plan = ParallelPlan.from_values({"trainer.nnodes": 1, "trainer.n_gpus_per_node": True, "data.train_batch_size": 8.0,
                                     f"{A}.use_dynamic_bsz": 1})
    assert plan.world_size is None and plan.train_batch_size is None and not plan.role("actor").dynamic
    assert plan.problems() == []


def test_values_role_forward_micro():
    # critic forward: forward_micro_batch_size_per_gpu=8 over 64/4 = 16 responses per rank -> 2 forwards
    plan = plan_of(["trainer.n_gpus_per_node=4", "data.train_batch_size=64", f"{A}.ppo_mini_batch_size=16",
                    "critic.ppo_micro_batch_size_per_gpu=2", "critic.forward_micro_batch_size_per_gpu=8"])
    assert plan.problems() == []
    v = plan.role("values")
    assert (v.micro_batch_per_rank, v.forward_passes) == (8, 2) and plan.role("critic").grad_accum_steps == 2


# ----------------------------------------------------------------------------- agreement with validate

VALID_SEEDS = {"4gpu": CMD_4GPU, "2node_tp16_fixed": CMD_2NODE_TP16 + [f"{A}.ppo_micro_batch_size_per_gpu=4"],
               "one_gpu": ONE_GPU, "one_gpu_grpo": ONE_GPU + ["algorithm.adv_estimator=grpo", f"{RO}.n=4"]}


@pytest.mark.parametrize("name", sorted(VALID_SEEDS))
def test_per_rank_sizes_times_world_are_the_global_sizes(name):
    cfg = PPOConfig.from_overrides(VALID_SEEDS[name])  # validates
    plan = ParallelPlan.from_config(cfg)
    world, n, tb = plan.world_size, cfg.actor_rollout_ref.rollout.n, cfg.data.train_batch_size
    assert plan.problems() == [] and world == cfg.trainer.nnodes * cfg.trainer.n_gpus_per_node
    assert sum(len(g) for g in plan.tp_groups) == world and plan.rollout_dp * plan.rollout_tp == world
    assert sorted(r for g in plan.tp_groups for r in g) == list(range(world))
    for role in plan.roles:
        assert role.batch_per_rank * world == tb * n, role.role
        if role.trains:
            section = cfg.actor_rollout_ref.actor if role.role == "actor" else cfg.critic
            assert role.mini_batch_per_rank * world == section.ppo_mini_batch_size * n
            assert role.num_mini_batches * role.mini_batch_per_rank == role.batch_per_rank
            assert role.micro_batch_per_rank * role.grad_accum_steps == role.mini_batch_per_rank
        else:
            assert role.forward_passes == -(-role.batch_per_rank // role.micro_batch_per_rank)
        assert role.fsdp_mesh[0] * role.fsdp_mesh[1] == world


@pytest.mark.parametrize("overrides", [
    CMD_4GPU, CMD_2NODE_TP16, ONE_GPU,
    ["trainer.n_gpus_per_node=3", "data.train_batch_size=64", f"{A}.ppo_mini_batch_size=16"],
    ["trainer.n_gpus_per_node=8", "data.train_batch_size=64", f"{A}.ppo_mini_batch_size=16",
     f"{R}.log_prob_micro_batch_size=4", f"{RO}.name=sglang", f"{TP_KEY}=3"],
])
def test_validate_reports_exactly_the_plans_problems(overrides):
    cfg = PPOConfig.from_overrides(overrides, check=False)
    plan_problems = ParallelPlan.from_config(cfg).problems()
    try:
        validate(cfg)
        reported = []
    except ConfigError as e:
        reported = e.problems
    assert plan_problems == [p for p in reported if p in plan_problems]
    assert set(plan_problems) <= set(reported)


def test_import_is_standard_library_only():
    code = ("import sys, rlkit.parallel; heavy = [m for m in ('torch', 'omegaconf', 'numpy', 'rlkit.config') "
            "if m in sys.modules]; print(heavy); sys.exit(1 if heavy else 0)")
    root = Path(__file__).resolve().parents[1]
    res = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                         env={"PYTHONPATH": str(root), "PATH": ""})
    assert res.returncode == 0, res.stdout + res.stderr


def test_lazy_export():
    import rlkit
    from rlkit import config

    assert rlkit.ParallelPlan is ParallelPlan and config.ParallelPlan is ParallelPlan
    assert "ParallelPlan" in config.__all__
