"""WorkerGroup on CPU: 2 Ray rank workers with gloo and FSDP2 train like 1, and failures are named.

Equivalence tolerance: max |param(2 ranks) - param(1 rank)| < 1e-5 after one actor and one critic
update (fp32). Both runs see the same global mini-batches in the same order and normalise the loss
by the same global token count; only the order of float additions differs (per rank, then the
reduce-scatter), which moves gradients by ~1e-7 relative. AdamW's first step moves every weight
by about lr = 1e-2 (it normalises the gradient), so a wrong normalisation (a per-rank token mean,
a missing 1/world) or a mini-batch order differing between ranks would show as differences of
~1e-3 to 1e-2. Measured: ~1e-6 (actor), ~3e-6 (critic). Packed sequences in token-budget micro-batches
(use_remove_padding + use_dynamic_bsz) on 2 ranks are compared with the same packing on 1 rank: 4.1e-6
(actor), 1.7e-6 (critic). Packed against padded is a different computation (packed attention, the LM head
on response positions only; equal gradients are checked in tests/training/test_packed_attention.py): on
1 rank its weights differ from padded's by 6.7e-6 after these two AdamW steps, at a key projection of
layer 0 - where the true gradient is (nearly) zero (a key bias moves every score of a query alike, which
the softmax ignores), AdamW's normalised step turns rounding into lr-sized moves.
"""
from __future__ import annotations

import pytest
import torch

ray = pytest.importorskip("ray")

from rlkit import PPOConfig  # noqa: E402
from rlkit.datasets import RolloutBatch  # noqa: E402
from rlkit.distributed.group import WorkerDiedError, WorkerGroup  # noqa: E402

TOL = 1e-5


pytestmark = pytest.mark.usefixtures("ray_cluster")  # tests/distributed/conftest.py


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from tiny import char_tokenizer, make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("m"), char_tokenizer())


def config(model_dir, world, offload=False, micro=1, packed=False, budget=None, extra=None):
    """The tests' config; ``extra``: more ``{key: value}`` overrides, applied last."""
    o = {"data.train_files": "unused", "data.val_files": "unused", "data.train_batch_size": 4,
         "data.max_response_length": 6, "actor_rollout_ref.model.path": model_dir,
         "actor_rollout_ref.rollout.name": "hf", "actor_rollout_ref.rollout.n": 2,
         # 4 prompts x 2 = 8 rows; mini-batches of 2 prompts = 4 rows: two optimizer steps per update
         "actor_rollout_ref.actor.ppo_mini_batch_size": 2, "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu": micro,
         "critic.ppo_micro_batch_size_per_gpu": micro, "actor_rollout_ref.actor.shuffle": True,
         "actor_rollout_ref.actor.optim.lr": 1e-2, "critic.optim.lr": 1e-2, "trainer.n_gpus_per_node": world,
         "trainer.device": "cpu", "actor_rollout_ref.actor.fsdp_config.param_offload": offload,
         "critic.model.fsdp_config.param_offload": offload}
    if packed:  # use_remove_padding for both models
        o.update({"actor_rollout_ref.model.use_remove_padding": True, "critic.model.use_remove_padding": True})
    if budget:  # use_dynamic_bsz: micro-batches of at most `budget` tokens (prompts <= 8 + responses <= 6)
        o.update({"data.max_prompt_length": 8, "actor_rollout_ref.actor.use_dynamic_bsz": True,
                  "actor_rollout_ref.actor.ppo_max_token_len_per_gpu": budget,
                  "critic.ppo_max_token_len_per_gpu": budget, "critic.forward_max_token_len_per_gpu": budget})
    o.update(extra or {})
    return PPOConfig.from_overrides([f"{k}={v}" for k, v in o.items()])


def make_batch() -> RolloutBatch:
    """8 rows from fixed token ids, prompts and responses of different lengths (so token counts per rank differ)."""
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(5, 90, (int(n),), generator=g).tolist() for n in torch.randint(2, 7, (8,), generator=g)]
    responses = [torch.randint(5, 90, (int(n),), generator=g).tolist() for n in torch.randint(1, 6, (8,), generator=g)]
    b = RolloutBatch.from_generation(prompts, responses, None, pad_id=0, columns={"uid": [str(i // 2) for i in range(8)]})
    B, R = b["responses"].shape
    b["old_log_probs"] = -4.5 + 0.1 * torch.randn(B, R, generator=g)
    b["advantages"] = torch.randn(B, R, generator=g) * b["response_mask"]
    b["values"] = 0.1 * torch.randn(B, R, generator=g)
    b["returns"] = torch.randn(B, R, generator=g)
    return b


def one_step(cfg, batch, checkpoint_dir=None, **kw):
    """One update of both roles. With ``checkpoint_dir``: a sharded checkpoint before the updates (it
    must leave AdamW untouched, or the parameters would differ from 1 rank's) and one after; then one
    more actor update moves the weights and loading the second checkpoint must bring them back."""
    from rlkit import checkpoint as ckpt_lib

    def save(name):
        return ckpt_lib.write(checkpoint_dir / name, write_worker=group.checkpoint_writer(), extra={}, config_yaml="",
                              global_step=0)

    group = WorkerGroup(cfg, timeout_s=60, grace_s=10, **kw)
    out = {}
    try:
        out["log_probs"] = group.compute_log_prob(batch)
        out["values"] = group.compute_values(batch)
        if checkpoint_dir is not None:
            save("before_update")
        out["actor"] = group.update_actor(batch, step=1)
        out["critic"] = group.update_critic(batch, step=1)
        out["state"] = group.call_rank0("full_state_dict")
        if checkpoint_dir is not None:
            saved = save("after_update")
            group.update_actor(batch, step=2)
            out["moved"] = group.call_rank0("full_state_dict")
            group.load_state_dict(ckpt_lib.inspect(saved).load_worker_state(["actor", "critic"]))
            out["reloaded"] = group.call_rank0("full_state_dict")
    finally:
        group.shutdown()
    return out


def max_diff(a: dict, b: dict) -> float:
    assert list(a) == list(b)
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def runs(model_dir, tmp_path_factory):
    batch = make_batch()
    return {"1": one_step(config(model_dir, 1), batch), "2": one_step(config(model_dir, 2), batch),
            "1-packed-dynamic": one_step(config(model_dir, 1, packed=True, budget=14), batch),
            "2-packed-dynamic": one_step(config(model_dir, 2, packed=True, budget=14), batch),
            "2-offload": one_step(config(model_dir, 2, offload=True), batch,
                                  checkpoint_dir=tmp_path_factory.mktemp("ckpt"))}


def test_sharded_checkpoint_restores_the_weights(runs):
    """2 ranks with param_offload: load after another update gives back the saved weights exactly."""
    run = runs["2-offload"]
    for role in ("actor", "critic"):
        assert all(torch.equal(run["reloaded"][role][k], v) for k, v in run["state"][role].items()), role
    assert max_diff(run["moved"]["actor"], run["state"]["actor"]) > 1e-3  # the extra update did move them


@pytest.mark.parametrize("name", ["2", "2-offload", "2-packed-dynamic"])
def test_two_ranks_equal_one(runs, name):
    """2 ranks (also with param_offload, and with packed sequences in token-budget micro-batches) equal 1 rank
    with the same settings."""
    one, two = runs["1-packed-dynamic" if "packed" in name else "1"], runs[name]
    for role in ("actor", "critic"):
        diff = max_diff(one["state"][role], two["state"][role])
        print(f"{name} ranks vs 1: {role} max |param diff| = {diff:.2e}")
        assert diff < TOL, (role, diff)
    for role in ("actor", "critic"):
        for key, v in one[role].items():
            if "clipfrac" in key:
                # counts tokens where max(L1, L2) picks the clipped term; inside the clip range the two terms
                # are equal up to one rounding of V_old + (V - V_old), so float noise flips single tokens
                assert abs(two[role][key] - v) <= 0.1, key
            else:
                assert two[role][key] == pytest.approx(v, rel=1e-5, abs=1e-6), key
    assert one["actor"]["actor/grad_norm"] > 0 and one["critic"]["critic/grad_norm"] > 0


def test_split_gather_equals_in_process(runs, model_dir):
    """Log-probs gathered from 2 ranks (8 rows, 4 each) equal one plain forward in this process."""
    from rlkit import algos
    from transformers import AutoModelForCausalLM

    batch = make_batch()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    R = batch["responses"].shape[1]
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       position_ids=batch["position_ids"], use_cache=False).logits[:, -R - 1 : -1].float()
    expected = algos.logprobs_from_logits(logits, batch["responses"])  # temperature 1.0
    for name in ("1", "2", "2-offload", "1-packed-dynamic", "2-packed-dynamic"):
        got = runs[name]["log_probs"]
        assert got["log_probs"].shape == expected.shape and got["entropys"].shape == expected.shape
        mask = batch["response_mask"]  # padding positions carry no log-prob: packed rows leave them 0
        diff = ((got["log_probs"] - expected) * mask).abs().max().item()
        print(f"{name}: max |log-prob - in-process| = {diff:.2e}")
        assert diff < 1e-5
        if "packed" in name:
            assert got["log_probs"][mask == 0].abs().max() == 0 and got["entropys"][mask == 0].abs().max() == 0
    assert torch.allclose(runs["1"]["values"], runs["2"]["values"], atol=1e-6)
    assert torch.allclose(runs["1"]["values"], runs["2-packed-dynamic"]["values"], atol=1e-6)


def test_generate_splits_prompts(model_dir):
    group = WorkerGroup(config(model_dir, 2), timeout_s=60, grace_s=10)
    try:
        out = group.generate([[5, 6, 7], [8, 9], [10]])  # 3 prompts over 2 ranks: 2 and 1, n=2 each
        assert len(out) == 6 and out["prompts"][0].tolist()[-3:] == [5, 6, 7] and out["prompts"][5].tolist()[-1] == 10
        assert set(out["finish_reason"]) <= {"stop", "length"} and out["responses"].shape[1] <= 6
        ranks = [r["rank"] for r in group.ranks]
        assert ranks == [0, 1] and all(r["backend"] == "gloo" for r in group.ranks)
    finally:
        group.shutdown()


def test_killed_rank_is_named_then_a_new_group_starts(model_dir):
    group = WorkerGroup(config(model_dir, 2), timeout_s=30, grace_s=10)
    batch = make_batch()
    group.compute_log_prob(batch)  # every rank has answered once: its memory reading is on the driver
    node = group.ranks[1]["node"]
    ray.kill(group.actors[1])  # what the OOM killer or a crashing engine does
    with pytest.raises(WorkerDiedError, match=rf"rank 1 \(node {node}, local rank 1, cpu\) died while "
                                              r"'compute_log_prob' ran\. Its last memory reading, after "
                                              r"compute_log_prob: host RSS"):
        group.compute_log_prob(batch)
    with pytest.raises(RuntimeError, match="failed earlier"):
        group.compute_values(batch)
    group.shutdown()  # idempotent
    again = WorkerGroup(config(model_dir, 2), timeout_s=30, grace_s=10)  # resources were freed
    try:
        assert again.compute_log_prob(batch)["log_probs"].shape == batch["responses"].shape
    finally:
        again.shutdown()


def test_a_group_dropped_without_shutdown_frees_its_bundles(model_dir):
    """A notebook cell run again (``exp = Experiment(...)``) drops the old group without ``shutdown()``: once it
    is collected its placement group is gone (Ray ends the actors with their handles, but keeps a placement
    group until it is removed), so a new group of the same size finds its bundles free."""
    import gc

    group = WorkerGroup(config(model_dir, 2), timeout_s=30, grace_s=10)
    del group
    gc.collect()
    again = WorkerGroup(config(model_dir, 2), timeout_s=30, ready_timeout_s=20, grace_s=10)
    try:
        assert again.compute_log_prob(make_batch())["log_probs"].shape == make_batch()["responses"].shape
    finally:
        again.shutdown()


def test_too_few_resources_fail_at_once(model_dir):
    import time

    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match=r"needs 1 node x 4 = 4 bundles of \{'CPU': 1\} \(4 CPU\) and the Ray "
                                           r"cluster has CPU=2"):
        WorkerGroup(config(model_dir, 4))
    assert time.monotonic() - t0 < 10


def test_three_updates_equal_a_plain_adamw_loop(model_dir):
    """AdamW's moments carry over from one training step to the next: three ``update_actor`` calls on one rank
    (one optimizer step each) end where a plain loop ends - the same model, rlkit's actor loss, ``torch.optim.AdamW``
    with the config's lr, betas and weight decay, and the gradient clip - and not where the same loop ends when
    AdamW starts afresh every step (which a lost or rebuilt optimizer state would give: every step then moves each
    weight by about lr). Each update reports AdamW's step count and how far its step moved the weights
    (``actor/update_norm``, read back from AdamW's state), which equal the loop's, measured on copies of its weights."""
    from transformers import AutoModelForCausalLM

    from rlkit.training import worker as worker_lib

    cfg = config(model_dir, 1, micro=8, extra={"actor_rollout_ref.actor.ppo_mini_batch_size": 4,  # all 8 rows: one step
                                               "actor_rollout_ref.actor.shuffle": False,
                                               "actor_rollout_ref.actor.optim.lr": 1e-3,
                                               "actor_rollout_ref.actor.use_kl_loss": False})
    batch = make_batch()
    group = WorkerGroup(cfg, timeout_s=60, grace_s=10)
    try:
        metrics = [group.update_actor(batch, step=step) for step in (1, 2, 3)]
        ranked = group.call_rank0("full_state_dict")["actor"]
    finally:
        group.shutdown()

    moved, norms = [], []  # per step of the carried loop: ||theta_new - theta_old||, ||theta_new||

    def plain(fresh_every_step: bool) -> dict:
        a = cfg.actor_rollout_ref.actor
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        model.train()
        optim = None
        for _ in range(3):
            before = [p.detach().clone() for p in model.parameters()]
            if optim is None or fresh_every_step:
                optim = torch.optim.AdamW(model.parameters(), lr=float(a.optim.lr), betas=tuple(a.optim.betas),
                                          weight_decay=float(a.optim.weight_decay))
            optim.zero_grad(set_to_none=True)
            lp, _ = worker_lib.response_log_probs(model, batch, float(cfg.actor_rollout_ref.rollout.temperature))
            loss, _ = worker_lib.actor_micro_loss(cfg, lp, None, batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), float(a.grad_clip))
            optim.step()
            if not fresh_every_step:
                moved.append(sum(((p.detach() - b) ** 2).sum() for p, b in zip(model.parameters(), before)) ** 0.5)
                norms.append(sum((p.detach() ** 2).sum() for p in model.parameters()) ** 0.5)
        return {k: v.detach() for k, v in model.state_dict().items()}

    carried, fresh = plain(False), plain(True)
    keys = [k for k in carried if k in ranked]
    assert len(keys) >= len(ranked) - 1  # a tied lm_head may appear under one name only
    diff = max((ranked[k] - carried[k]).abs().max().item() for k in keys)
    apart = max((fresh[k] - carried[k]).abs().max().item() for k in keys)
    print(f"3 updates vs a plain AdamW loop: max |param diff| = {diff:.2e}; a fresh AdamW each step differs by {apart:.2e}")
    assert diff < TOL
    assert apart > 100 * TOL  # the check can tell the two apart
    assert [m["actor/optimizer_steps"] for m in metrics] == [1, 2, 3]
    assert [m["actor/update_norm"] for m in metrics] == pytest.approx([float(x) for x in moved], rel=1e-4)
    assert [m["actor/param_norm"] for m in metrics] == pytest.approx([float(x) for x in norms], rel=1e-6)
