"""The PPO pieces a rank worker (:class:`~rlkit.training.rank_worker.RankWorker`) is built from, as
plain functions of the run's config: loading the roles, the engines' sampling parameters and stop
ids, one micro-batch's response log-probs and values (padded, or packed without padding for
``use_remove_padding``), and its actor and critic losses with their metrics. The
batch that goes in is a :class:`~rlkit.datasets.batch.RolloutBatch` (its module docstring has the
shape table); micro- and mini-batch sizes come from :class:`~rlkit.parallel.ParallelPlan`.
"""
from __future__ import annotations

from typing import Callable

import torch

from rlkit import algos
from rlkit.datasets.batch import RolloutBatch, to_device
from rlkit.datasets.packing import PackedLayout
from rlkit.rollout.base import SamplingParams
from rlkit.training import models, packed_attention


def needs_reference(cfg) -> bool:
    return bool(cfg.actor_rollout_ref.actor.use_kl_loss or cfg.algorithm.use_kl_in_reward)


def load_role_models(cfg, model_dir: str, device: torch.device | None, dtypes: dict[str, torch.dtype] | None = None,
                     place: Callable[[str, torch.nn.Module], torch.nn.Module] | None = None):
    """Load the roles a config trains: ``(actor, ref, critic)``; ref and critic are None when not needed.

    Args:
        cfg: the run's config (``actor_rollout_ref.model``, ``critic.model``, the estimator, the KL switches).
        model_dir: the actor's resolved folder (the critic uses it too unless ``critic.model.path`` differs).
        device: where each model goes right after it loads; None leaves it on the CPU.
        dtypes: per role (``"actor"``, ``"ref"``, ``"critic"``) the dtype to load in; float32 by default.
        place: ``place(role, model) -> model`` run on each model right after it loads (and moves),
            before the next one loads: a rank worker shards there, so at most one unsharded copy is held.

    The reference model comes back in eval mode without gradients. The critic's value head is drawn
    from ``data.seed`` (the same on every rank).
    """
    dtypes = dtypes or {}
    arr = cfg.actor_rollout_ref
    override = dict(arr.model.get("override_config") or {})
    trust = arr.model.get("trust_remote_code", False)

    def finish(role: str, model):
        if device is not None:
            model = model.to(device)
        return place(role, model) if place is not None else model

    packed = remove_padding(cfg, "actor")
    actor = finish("actor", models.load_causal_lm(model_dir, dtypes.get("actor", torch.float32), override,
                                                  arr.model.enable_gradient_checkpointing, trust, packed))
    ref = None
    if needs_reference(cfg):
        ref = models.load_causal_lm(model_dir, dtypes.get("ref", torch.float32), override, trust_remote_code=trust,
                                    packed=packed)
        ref = finish("ref", ref.eval().requires_grad_(False))
    critic = None
    if algos.estimator_needs_critic(cfg.algorithm.adv_estimator):
        c = cfg.critic
        critic_path = c.model.get("path") or arr.model.path
        critic_dir = (model_dir if critic_path == arr.model.path and not c.model.get("gguf_file")
                      else models.resolve_model_path(critic_path, c.model.get("gguf_file")))
        critic = finish("critic", models.load_value_model(
            critic_dir, dtypes.get("critic", torch.float32), dict(c.model.get("override_config") or {}),
            c.model.enable_gradient_checkpointing, c.model.get("trust_remote_code", False),
            seed=int(cfg.data.get("seed") or 1),  # the same head on every rank
            packed=remove_padding(cfg, "critic")))
    return actor, ref, critic


def eos_token_ids(tokenizer, model_dir: str) -> list[int]:
    """The tokenizer's eos plus the checkpoint's generation_config eos ids (every engine stops on these)."""
    from transformers import GenerationConfig

    ids = {tokenizer.eos_token_id}
    try:
        gen_eos = GenerationConfig.from_pretrained(model_dir).eos_token_id
    except OSError:  # no generation_config.json
        gen_eos = None
    if isinstance(gen_eos, int):
        ids.add(gen_eos)
    elif isinstance(gen_eos, (list, tuple)):
        ids.update(gen_eos)
    return sorted(i for i in ids if i is not None)


def sampling_params(cfg, stop_token_ids: list[int], validate: bool = False) -> SamplingParams:
    """``rollout.*`` (or ``rollout.val_kwargs.*`` with ``validate``) as engine-neutral SamplingParams."""
    r = cfg.actor_rollout_ref.rollout
    src = r.val_kwargs if validate else r
    return SamplingParams(
        max_new_tokens=int(cfg.data.max_response_length),
        n=int(src.n), temperature=float(src.temperature), top_p=float(src.top_p), top_k=int(src.top_k),
        do_sample=bool(src.do_sample), ignore_eos=bool(r.get("ignore_eos", False)),
        stop_token_ids=list(stop_token_ids),  # every engine stops on the same ids
    )


def critic_loss_agg_mode(cfg) -> str:
    """``critic.loss_agg_mode``, falling back to the actor's."""
    return cfg.critic.get("loss_agg_mode") or cfg.actor_rollout_ref.actor.loss_agg_mode


def _column(mb: RolloutBatch, key: str, like: torch.Tensor) -> torch.Tensor:
    """Column ``key`` of ``mb`` on ``like``'s device (from the host without blocking: :func:`to_device`)."""
    return to_device(mb[key], like.device)


def actor_micro_loss(cfg, log_prob: torch.Tensor, entropy: torch.Tensor | None,
                     mb: RolloutBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
    """PPO clipped policy loss (+ entropy bonus, + KL loss) of one micro-batch from the actor's
    :func:`response_log_probs` (``log_prob`` (mb, R); ``entropy`` (mb, R) when :func:`update_entropy`
    says it is used, else None); every term aggregated with ``actor.loss_agg_mode`` over the same
    units. ``mb`` may stay on the host: the columns read here go to ``log_prob``'s device. Returns the
    loss and its ``actor/*`` metrics (0-d tensors on the loss's device, or floats; ``actor/loss`` is the loss
    itself, ``actor/pg_loss`` its clipped policy term); with an entropy it is
    reported as ``actor/entropy``, which replaces the old-log-prob pass's value in the step's metrics.

    With ``actor.recompute_old_log_prob=False`` (one optimizer step per batch, :func:`rlkit.config.validate`)
    the old log-probs are ``log_prob`` itself, detached: the actor has not moved since the rollout, so the
    ratio is 1 and the gradient the one the recomputed old log-probs would give, without their forward pass."""
    a = cfg.actor_rollout_ref.actor
    agg = a.loss_agg_mode
    scale = None if a.get("loss_scale_factor") is None else float(a.loss_scale_factor)  # seq-mean-token-sum-norm only
    mask = _column(mb, "response_mask", log_prob)
    old = _column(mb, "old_log_probs", log_prob) if a.get("recompute_old_log_prob", True) else log_prob.detach()
    pg_loss, m = algos.compute_policy_loss(
        old, log_prob, _column(mb, "advantages", log_prob), mask,
        clip_ratio_low=float(a.clip_ratio_low if a.get("clip_ratio_low") is not None else a.clip_ratio),
        clip_ratio_high=float(a.clip_ratio_high if a.get("clip_ratio_high") is not None else a.clip_ratio),
        clip_ratio_c=float(a.clip_ratio_c), loss_agg_mode=agg, loss_scale_factor=scale)
    row = {"actor/pg_loss": pg_loss.detach(), "actor/pg_clipfrac": m["pg_clipfrac"],
           "actor/ppo_kl": m["ppo_kl"], "actor/pg_clipfrac_lower": m["pg_clipfrac_lower"]}
    # loss = L_clip - c_ent * H + c_kl * KL(pi || pi_ref)
    loss = pg_loss
    if entropy is not None:
        ent = algos.agg_loss(entropy, mask, agg, scale)
        loss = loss - float(a.entropy_coeff) * ent
        row["actor/entropy"] = ent.detach()
    if a.use_kl_loss:
        kl = algos.kl_penalty(log_prob, _column(mb, "ref_log_prob", log_prob), a.kl_loss_type)
        kl_loss = algos.agg_loss(kl, mask, agg, scale)
        loss = loss + float(a.kl_loss_coef) * kl_loss
        row.update({"actor/kl_loss": kl_loss.detach(), "actor/kl_coef": float(a.kl_loss_coef)})
    row["actor/loss"] = loss.detach()  # the whole loss, as verl 0.9 logs it
    return loss, row


def update_entropy(cfg) -> bool:
    """Whether the actor update computes the entropy: with ``actor.calculate_entropy`` or a non-zero
    ``entropy_coeff`` (verl's rule); otherwise it is skipped (it costs a softmax over the vocabulary)."""
    a = cfg.actor_rollout_ref.actor
    return bool(a.get("calculate_entropy", False) or float(a.entropy_coeff) != 0)


def critic_micro_loss(cfg, vpreds: torch.Tensor, mb: RolloutBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss of one micro-batch's value predictions towards ``returns``; the loss and its
    ``critic/*`` metrics (0-d tensors on the loss's device). ``mb`` may stay on the host, as for
    :func:`actor_micro_loss`."""
    values, returns, mask = (_column(mb, k, vpreds) for k in ("values", "returns", "response_mask"))
    loss, m = algos.compute_value_loss(vpreds, values, returns, mask, float(cfg.critic.cliprange_value),
                                       critic_loss_agg_mode(cfg))
    return loss, {"critic/vf_loss": loss.detach(), "critic/vf_clipfrac": m["vf_clipfrac"],
                  "critic/vpred_mean": m["vpred_mean"]}


def remove_padding(cfg, role: str) -> bool:
    """``model.use_remove_padding`` of the model a role runs (actor/rollout/ref: the actor's model;
    critic/values: the critic's)."""
    model = cfg.critic.model if role in ("critic", "values") else cfg.actor_rollout_ref.model
    return bool(model.get("use_remove_padding", False))


def _device(model, device) -> torch.device:
    """``device``, else where the model's first parameter lives (with FSDP's CPU offload that is the host, while
    the model computes on the rank's GPU: pass ``device`` there)."""
    return torch.device(device) if device is not None else next(model.parameters()).device


def _packed_inputs(mb: RolloutBatch, device: torch.device) -> tuple[PackedLayout, dict]:
    """The micro-batch as one packed row on ``device``: its layout and the forward's keyword arguments.
    Worked out where ``mb`` is - on the host, nothing waits for the GPU - then moved without blocking."""
    lay = PackedLayout.from_mask(mb["attention_mask"], mb["responses"].shape[1])
    ids, pos = (to_device(lay.pack(mb[k]), device) for k in ("input_ids", "position_ids"))
    lay = lay.to(device)
    kwargs = {"input_ids": ids, "position_ids": pos, "use_cache": False,
              **packed_attention.packed_forward_kwargs(lay.cu_seqlens, lay.max_seqlen)}
    return lay, kwargs


def _checked(before: int, model) -> None:
    if packed_attention.calls() == before:
        raise packed_attention.PackedAttentionNotUsed(
            f"use_remove_padding=True but {type(model).__name__}'s forward did not pass the sequence boundaries to "
            "its attention layers; set use_remove_padding=False for this model")


def response_log_probs(model, mb: RolloutBatch, temperature: float, with_entropy: bool = False,
                       packed: bool = False, compiled: bool = False,
                       device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs (mb, R) of the response tokens under ``model`` at ``temperature`` (0 counts as 1), and
    their entropies (mb, R) with ``with_entropy`` (else None); 0 where a row has no response token.

    The LM head runs only where a response token is predicted, and the fp32 softmax math in chunks
    (:func:`rlkit.algos.token_logprobs`). ``packed`` (``use_remove_padding``): the micro-batch runs as
    one row of its real tokens (:class:`~rlkit.datasets.packing.PackedLayout`, attention within each
    sequence); the model must use :mod:`rlkit.training.packed_attention`. Otherwise the padded batch
    runs with its attention mask. Both give the same numbers up to float rounding. ``mb`` may stay on the
    host (the packed layout is then worked out there, with no wait for the GPU); the inputs and results
    go to ``device`` (default: the model's first parameter's). ``compiled``: the
    softmax math through ``torch.compile`` (``token_logprobs(compiled=True)``).
    """
    R = mb["responses"].shape[1]
    device = _device(model, device)
    if packed:
        lay, kwargs = _packed_inputs(mb, device)
        before = packed_attention.calls()
        logits = model(logits_to_keep=lay.predict_index, **kwargs).logits[0]  # (M, V)
        _checked(before, model)
        lp, ent = algos.token_logprobs(logits, lay.response_targets(to_device(mb["responses"], device)), temperature,
                                       with_entropy, compiled=compiled)
        return lay.unpack_response(lp), (lay.unpack_response(ent) if ent is not None else None)
    mb = mb.to(device, non_blocking=True)
    out = model(input_ids=mb["input_ids"], attention_mask=mb["attention_mask"], position_ids=mb["position_ids"],
                use_cache=False, logits_to_keep=R + 1)
    logits = out.logits[:, -R - 1 : -1]  # logits at position t predict token t+1
    b = logits.shape[0]
    lp, ent = algos.token_logprobs(logits.reshape(b * R, -1), mb["responses"].reshape(-1), temperature, with_entropy,
                                   compiled=compiled)
    return lp.view(b, R), (ent.view(b, R) if ent is not None else None)


def response_values(critic, mb: RolloutBatch, packed: bool = False,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """Values (mb, R) fp32: V(s_t) of the state that generates response token t, times ``response_mask``.
    ``packed``, ``mb`` and ``device`` as in :func:`response_log_probs`."""
    R = mb["responses"].shape[1]
    device = _device(critic, device)
    if packed:
        lay, kwargs = _packed_inputs(mb, device)
        before = packed_attention.calls()
        v = critic(keep=lay.predict_index, **kwargs)[0]  # (M,)
        _checked(before, critic)
        return lay.unpack_response(v.float()) * to_device(mb["response_mask"], device)
    mb = mb.to(device, non_blocking=True)
    v = critic(mb["input_ids"], mb["attention_mask"], mb["position_ids"])
    # the value of the state that generates response token t sits at position P - 1 + t
    return v[:, -R - 1 : -1].float() * mb["response_mask"]


def progress_bar(total: int, desc: str, enabled: bool):
    """A transient tqdm bar over micro-batches or tokens (``leave=False``), or a disabled one."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, disable=not enabled, dynamic_ncols=True)


def set_base_lr(optim, sched, lr: float) -> None:
    """Make ``lr`` the schedule's base learning rate, keeping its position (step count)."""
    sched.base_lrs = [lr] * len(optim.param_groups)
    for group, fn in zip(optim.param_groups, sched.lr_lambdas):
        group["initial_lr"] = lr
        group["lr"] = lr * fn(sched.last_epoch)
    sched._last_lr = [g["lr"] for g in optim.param_groups]
