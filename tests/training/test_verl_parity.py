"""The actor's loss over a mini-batch cut into micro-batches, rlkit against verl 0.9.1's own ``ppo_loss``
(``verl.workers.utils.losses``, the loss its FSDP engine runs): verl normalises each micro-batch by the mini-batch's
token or sequence count and sums; rlkit weighs each micro-batch's ``actor_micro_loss`` by its share of
``loss_units`` (what ``RankWorker`` does before each backward). Same loss, same gradient, with the clipped policy
loss, an entropy bonus and the KL loss. Needs RLKIT_VERL_SRC (the ``verl_091`` fixture)."""
from __future__ import annotations

import pytest
import torch

from rlkit import PPOConfig
from rlkit.algos import LOSS_AGG_MODES
from rlkit.datasets import RolloutBatch
from rlkit.training.rank_worker import loss_units
from rlkit.training.worker import actor_micro_loss

MICRO = [slice(0, 3), slice(3, 5), slice(5, 8)]  # micro-batches of 3, 2 and 3 rows with different token counts


def _mini_batch():
    """8 rows: left-padded prompts of 1-3 tokens, right-padded responses of 1-6 tokens (none empty: verl's
    trainer divides the seq-mean modes by the mini-batch's rows, rlkit by its non-empty responses)."""
    g = torch.Generator().manual_seed(0)
    bs, P, R = 8, 3, 6
    plen = torch.randint(1, P + 1, (bs,), generator=g)
    rlen = torch.randint(1, R + 1, (bs,), generator=g)
    pmask = (torch.arange(P)[None] >= (P - plen)[:, None]).float()
    rmask = (torch.arange(R)[None] < rlen[:, None]).float()
    old = torch.randn(bs, R, generator=g) - 2
    return {"plen": plen, "rlen": rlen, "pmask": pmask, "rmask": rmask, "old": old,
            "log_prob": old + 0.8 * torch.randn(bs, R, generator=g), "entropy": torch.rand(bs, R, generator=g) * 3,
            "ref": old + 0.3 * torch.randn(bs, R, generator=g),
            "adv": (torch.randn(bs, 1, generator=g) * 2).expand(bs, R).contiguous()}


def _flat(x: torch.Tensor, d, rows) -> torch.Tensor:
    """verl's no-padding layout: each sequence's prompt + response tokens back to back, the value for response token
    t at the position of the token before it (the model's output there predicts it)."""
    pad = torch.zeros(int(d["plen"].max()), dtype=x.dtype)  # outputs at prompt positions and the last: unread
    return torch.cat([torch.cat([pad[:int(d["plen"][i]) - 1], x[i, :int(d["rlen"][i])], pad[:1]]) for i in rows])


def _verl_loss(d, log_prob, entropy, agg, coeffs):
    from tensordict import TensorDict
    import verl.utils.tensordict_utils as tu
    from verl.workers.config import ActorConfig
    from verl.workers.utils.losses import ppo_loss

    cfg = ActorConfig(strategy="fsdp", ppo_mini_batch_size=8, ppo_micro_batch_size_per_gpu=3, rollout_n=1,
                      loss_agg_mode=agg, clip_ratio=0.2, clip_ratio_c=3.0, entropy_coeff=coeffs["entropy"],
                      use_kl_loss=True, kl_loss_coef=coeffs["kl"], kl_loss_type="low_var_kl")
    total = 0.0
    for s in MICRO:
        rows = range(s.start, s.stop)
        n = len(rows)
        data = TensorDict({"prompts": torch.zeros(n, d["pmask"].shape[1], dtype=torch.long),
                           "responses": torch.zeros(n, d["rmask"].shape[1], dtype=torch.long),
                           "attention_mask": torch.cat([d["pmask"][s], d["rmask"][s]], 1).long(),
                           "response_mask": d["rmask"][s], "old_log_probs": d["old"][s], "advantages": d["adv"][s],
                           "ref_log_prob": d["ref"][s]}, batch_size=[n])
        # what verl's FSDP engine assigns before its micro-batches: the mini-batch's token count, dp size 1,
        # and the trainer's global_batch_size (ppo_mini_batch_size * n rows)
        tu.assign_non_tensor(data, dp_size=1, batch_num_tokens=int(d["rmask"].sum()), global_batch_size=8)
        loss, _ = ppo_loss(cfg, {"log_probs": _flat(log_prob, d, rows), "entropy": _flat(entropy, d, rows)}, data)
        total = total + loss
    return total


def _rlkit_losses(d, log_prob, entropy, agg, coeffs):
    cfg = PPOConfig.from_overrides([f"actor_rollout_ref.actor.loss_agg_mode={agg}", "actor_rollout_ref.actor.clip_ratio=0.2",
                                    f"actor_rollout_ref.actor.entropy_coeff={coeffs['entropy']}",
                                    "actor_rollout_ref.actor.use_kl_loss=True",
                                    f"actor_rollout_ref.actor.kl_loss_coef={coeffs['kl']}",
                                    "actor_rollout_ref.actor.kl_loss_type=low_var_kl"])

    def micro(s):
        mb = RolloutBatch({"response_mask": d["rmask"][s], "old_log_probs": d["old"][s], "advantages": d["adv"][s],
                           "ref_log_prob": d["ref"][s]})
        return actor_micro_loss(cfg, log_prob[s], entropy[s], mb)[0], loss_units(d["rmask"][s], agg)

    whole, _ = micro(slice(0, 8))
    parts = [micro(s) for s in MICRO]
    total = sum(u for _, u in parts)
    return whole, sum(loss * (u / total) for loss, u in parts)


@pytest.mark.parametrize("agg", LOSS_AGG_MODES)
def test_actor_loss_over_micro_batches_equals_verls(verl_091, agg):
    d = _mini_batch()
    coeffs = {"entropy": 0.01, "kl": 0.001}
    grads = {}
    for name in ("verl", "rlkit whole", "rlkit micro"):
        lp = d["log_prob"].clone().requires_grad_()
        ent = d["entropy"].clone().requires_grad_()
        if name == "verl":
            loss = _verl_loss(d, lp, ent, agg, coeffs)
        else:
            loss = _rlkit_losses(d, lp, ent, agg, coeffs)[name == "rlkit micro"]
        loss.backward()
        grads[name] = (loss.detach(), lp.grad * d["rmask"], ent.grad * d["rmask"])
    want = grads.pop("verl")
    assert want[1].abs().sum() > 0 and want[2].abs().sum() > 0
    for name, got in grads.items():
        for w, x, what in zip(want, got, ("loss", "d loss / d log_prob", "d loss / d entropy")):
            torch.testing.assert_close(x, w, rtol=1e-5, atol=1e-7, msg=lambda m: f"{name}, {what}: {m}")
