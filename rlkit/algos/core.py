"""Masked tensor operations shared by the RL algorithms.

Everything here is pure ``torch`` math. Shapes use these names:

* ``bs``               - batch size (number of sequences)
* ``T`` / ``response_length`` - number of response tokens per sequence (right padded)
* ``V``                - vocabulary size

A *mask* is a ``{0, 1}`` (or bool) tensor broadcastable to the data; positions with
mask 0 never influence a result (they are selected away with ``torch.where``, so even
NaN/inf in padded positions is harmless).

Semantics follow verl's ``verl.utils.torch_functional`` and ``core_algos``.
"""
from __future__ import annotations

import functools

import torch

__all__ = [
    "LOSS_AGG_MODES",
    "masked_sum",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "logprobs_from_logits",
    "entropy_from_logits",
    "token_logprobs",
    "explained_variance",
    "agg_loss",
]

# Added to the token count in masked_mean so that an empty mask gives 0 instead of NaN (verl does the same).
_MEAN_EPS = 1e-8
# Added to the variance before the inverse square root in masked_whiten (verl value).
_WHITEN_EPS = 1e-8


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    """Sum of ``x`` over positions where ``mask`` is non-zero.

    Args:
        x: any shape, e.g. ``(bs, T)``.
        mask: broadcastable to ``x``; 0/1 floats or bools.
        dim: dimension(s) to reduce; ``None`` reduces everything to a scalar.

    Returns:
        ``x`` summed over ``dim`` with masked-out entries treated as 0,
        e.g. ``()`` for ``dim=None`` or ``(bs,)`` for ``dim=-1``.
    """
    # sum_i x_i * [m_i != 0]   (torch.where, not x*m, so NaN/inf in padding cannot leak in)
    valid = torch.where(mask.bool(), x, torch.zeros((), dtype=x.dtype, device=x.device))
    if dim is None:
        return valid.sum()
    return valid.sum(dim=dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    """Mean of ``x`` over positions where ``mask`` is non-zero.

    Args:
        x: any shape, e.g. ``(bs, T)``.
        mask: broadcastable to ``x``.
        dim: dimension(s) to reduce; ``None`` reduces everything.

    Returns:
        ``sum(x * m) / (sum(m) + 1e-8)`` reduced over ``dim``. An all-zero mask gives 0
        (the ``1e-8`` keeps it finite, as in verl).
    """
    total = masked_sum(x, mask, dim)
    count = torch.broadcast_to(mask, x.shape).to(total.dtype)
    count = count.sum() if dim is None else count.sum(dim=dim)
    # mean = sum(x*m) / (sum(m) + eps)
    return total / (count + _MEAN_EPS)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of ``x`` over all masked-in positions (scalar).

    Args:
        x: any shape, e.g. ``(bs, T)``.
        mask: broadcastable to ``x``.
        unbiased: apply Bessel's correction ``n / (n - 1)``, ``n = sum(mask)``.

    Returns:
        Scalar tensor ``mean_m((x - mean_m(x))^2) * n / (n - 1)`` (or without the
        correction when ``unbiased=False``).

    Raises:
        ValueError: with ``unbiased=True`` when the mask holds fewer than 2 elements
            (the corrected variance is undefined), as in verl.
    """
    mean = masked_mean(x, mask)
    centered = x - mean
    # var = mean_m((x - mu)^2)
    variance = masked_mean(centered * centered, mask)
    if unbiased:
        n = torch.broadcast_to(mask, x.shape).to(torch.float64).sum().item()
        if n == 0:
            raise ValueError("masked_var: the mask is empty; at least one element has to be 1")
        if n == 1:
            raise ValueError("masked_var: the mask holds a single element; the unbiased variance divides by zero")
        # Bessel: var_unbiased = var * n / (n - 1)
        variance = variance * (n / (n - 1))
    return variance


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Normalise ``x`` to zero mean / unit variance using statistics over the mask.

    Args:
        x: any shape, e.g. ``(bs, T)``.
        mask: broadcastable to ``x``; at least 2 masked-in elements.
        shift_mean: if ``False`` the mean is added back (only the scale changes).

    Returns:
        Tensor shaped like ``x``: ``(x - mu) * rsqrt(var + 1e-8)`` with ``mu`` the masked
        mean and ``var`` the unbiased masked variance; ``+ mu`` when ``shift_mean=False``.
        Every position is transformed (masked-out ones too); callers mask the result.
    """
    mean = masked_mean(x, mask)
    var = masked_var(x, mask, unbiased=True)
    # whitened = (x - mu) / sqrt(var + eps)
    whitened = (x - mean) * torch.rsqrt(var + _WHITEN_EPS)
    if not shift_mean:
        # keep the original location: (x - mu) / sigma + mu
        whitened = whitened + mean
    return whitened


def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Log-probability of ``labels`` under ``softmax(logits)``.

    Memory friendly: never materialises a full ``(bs, T, V)`` log-softmax; the fp32
    upcast and ``logsumexp`` are done one sequence at a time.

    Args:
        logits: ``(bs, T, V)`` (any float dtype; leading dims may be any shape ``(..., V)``).
        labels: ``(bs, T)`` integer token ids (shape ``logits.shape[:-1]``).

    Returns:
        ``(bs, T)`` float32 (float64 if ``logits`` is float64):
        ``log p(label) = logits[label] - logsumexp(logits)``.
    """
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} do not match")
    out_dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    if logits.dim() == 1:  # a single position: (V,) with a scalar label
        logits, labels = logits.unsqueeze(0), labels.unsqueeze(0)
        return logprobs_from_logits(logits, labels).squeeze(0)
    rows = []
    for row_logits, row_labels in zip(logits, labels):  # one sequence at a time keeps the peak memory low
        row_logits = row_logits.to(out_dtype)
        # log p(y) = z_y - log sum_v exp(z_v)
        picked = torch.gather(row_logits, -1, row_labels.long().unsqueeze(-1)).squeeze(-1)
        rows.append(picked - torch.logsumexp(row_logits, dim=-1))
    return torch.stack(rows)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the categorical distribution ``softmax(logits)`` along the last dim.

    Args:
        logits: ``(..., V)``, e.g. ``(bs, T, V)``; computed in fp32 (fp64 kept).

    Returns:
        ``(...)``, e.g. ``(bs, T)``: ``H = logsumexp(z) - sum_v softmax(z)_v * z_v``.
    """
    z = logits.to(torch.float64 if logits.dtype == torch.float64 else torch.float32)
    p = torch.softmax(z, dim=-1)
    # H = -sum p log p = -sum p (z - lse) = lse - sum p z
    return torch.logsumexp(z, dim=-1) - (p * z).sum(dim=-1)


def _math_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for the softmax math, fp64 kept."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _float(logits: torch.Tensor) -> torch.Tensor:
    return logits.to(_math_dtype(logits.dtype))


def _token_logprobs_chunk(logits: torch.Tensor, labels: torch.Tensor, inv_temperature: float,
                          with_entropy: bool) -> tuple[torch.Tensor, torch.Tensor]:
    # z = logits / T;  log p_v = z_v - logsumexp(z)
    logp = torch.log_softmax(_float(logits) * inv_temperature, dim=-1)
    picked = torch.gather(logp, -1, labels.long().unsqueeze(-1)).squeeze(-1)
    if not with_entropy:
        return picked, picked.new_zeros(())
    # H = -sum_v p_v log p_v
    return picked, -(logp.exp() * logp).sum(-1)


def _token_logprobs_chunk_grad(logits: torch.Tensor, labels: torch.Tensor, inv_temperature: float,
                               grad_logp: torch.Tensor, grad_entropy: torch.Tensor | None,
                               entropy: torch.Tensor | None) -> torch.Tensor:
    logp = torch.log_softmax(_float(logits) * inv_temperature, dim=-1)
    p = logp.exp()
    onehot = torch.arange(logits.shape[-1], device=logits.device) == labels.long().unsqueeze(-1)
    # d log p_y / d z_v = [v == y] - p_v
    g = grad_logp.unsqueeze(-1) * (onehot.to(p.dtype) - p)
    if grad_entropy is not None:
        # d H / d z_v = -p_v (log p_v + H)
        g = g - grad_entropy.unsqueeze(-1) * p * (logp + entropy.unsqueeze(-1))
    # z = logits / T
    return (g * inv_temperature).to(logits.dtype)


@functools.lru_cache(maxsize=2)
def _compiled(fn):
    return torch.compile(fn, dynamic=True)


def _chunk_fn(fn, compiled: bool):
    return _compiled(fn) if compiled else fn


class _TokenLogprobs(torch.autograd.Function):
    """Chunked log-probs whose backward writes each chunk's gradient into one ``(M, V)`` buffer.

    Autograd through slices of ``logits`` would give every chunk a zero-filled ``(M, V)`` gradient and
    sum them (a fill and an add over the whole logits per chunk); here each chunk's softmax is recomputed
    from the saved logits and its rows of the gradient written once."""

    @staticmethod
    def forward(ctx, logits, labels, inv_t: float, with_entropy: bool, chunk_size: int, compiled: bool):
        lp, ent = _chunks(logits, labels, inv_t, with_entropy, chunk_size, compiled)
        ctx.save_for_backward(logits, labels, *([ent] if with_entropy else []))
        ctx.args = (inv_t, chunk_size, compiled)
        return lp, ent

    @staticmethod
    def backward(ctx, grad_lp, grad_ent):
        logits, labels, *saved = ctx.saved_tensors
        inv_t, chunk_size, compiled = ctx.args
        ent = saved[0] if saved else None
        grad_lp = torch.zeros_like(logits[:, 0], dtype=_math_dtype(logits.dtype)) if grad_lp is None else grad_lp
        grad = torch.empty_like(logits)
        fn = _chunk_fn(_token_logprobs_chunk_grad, compiled)
        for start in range(0, logits.shape[0], chunk_size):
            rows = slice(start, start + chunk_size)
            grad[rows] = fn(logits[rows], labels[rows], inv_t, grad_lp[rows],
                            None if grad_ent is None or ent is None else grad_ent[rows],
                            None if ent is None else ent[rows])
        return grad, None, None, None, None, None


def _chunks(logits, labels, inv_t: float, with_entropy: bool, chunk_size: int, compiled: bool):
    fn = _chunk_fn(_token_logprobs_chunk, compiled)
    lps, ents = [], []
    for start in range(0, logits.shape[0], chunk_size):
        lp, ent = fn(logits[start : start + chunk_size], labels[start : start + chunk_size], inv_t, with_entropy)
        lps.append(lp)
        ents.append(ent)
    if not lps:
        empty = logits.new_zeros(0, dtype=_math_dtype(logits.dtype))
        return empty, (empty if with_entropy else None)
    return torch.cat(lps), (torch.cat(ents) if with_entropy else None)


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0,
                   with_entropy: bool = False, chunk_size: int = 2048,
                   compiled: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probability of each label and (optionally) the entropy, from rows of logits, in chunks.

    Args:
        logits: ``(M, V)`` one row per token (any float dtype, e.g. the bf16 output of the LM head).
        labels: ``(M,)`` integer token ids.
        temperature: the logits are divided by it (0 counts as 1), in fp32.
        with_entropy: also return ``H = -sum_v p_v log p_v`` per row.
        chunk_size: rows converted to fp32 at a time.
        compiled: run each chunk's math (forward and gradient) through ``torch.compile`` (cast,
            log-softmax and gather fused, so the ``chunk_size x V`` fp32 intermediates are not written
            to memory); the same numbers up to float rounding.

    Returns ``(log_probs (M,), entropy (M,) or None)``, fp32 (fp64 kept). Only ``chunk_size x V`` fp32
    values exist at a time. With autograd on, the backward pass recomputes each chunk's softmax from the
    logits and writes its rows of the ``(M, V)`` gradient directly (no fp32 log-softmax is kept, and no
    per-chunk full-size gradient is summed). Equal to :func:`logprobs_from_logits` /
    :func:`entropy_from_logits` of ``logits / temperature``, values and gradients.
    """
    if logits.dim() != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"token_logprobs wants logits (M, V) and labels (M,), got {tuple(logits.shape)} and "
                         f"{tuple(labels.shape)}")
    inv_t = 1.0 / (float(temperature) or 1.0)
    chunk_size = max(1, int(chunk_size))
    if torch.is_grad_enabled() and logits.requires_grad:
        return _TokenLogprobs.apply(logits, labels, inv_t, with_entropy, chunk_size, compiled)
    return _chunks(logits, labels, inv_t, with_entropy, chunk_size, compiled)


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
                       eps: float = 1e-5) -> torch.Tensor:
    """Fraction of the return variance explained by the value predictions, as verl logs it
    (``critic/vf_explained_var`` in ``metric_utils.compute_data_metrics``).

    Args:
        values: ``(bs, T)`` critic predictions.
        returns: ``(bs, T)`` regression targets.
        mask: ``(bs, T)``.
        eps: added to ``Var(R)`` (verl's 1e-5).

    Returns:
        Scalar float tensor ``1 - Var(R - V) / (Var(R) + eps)`` over the masked positions, with
        unbiased (n - 1) variances as ``torch.var``: 1 = perfect, about 0 = no better than a constant,
        below 0 = worse. Constant returns give ``1 - Var(R - V) / eps`` (very negative unless V is
        exact); fewer than 2 valid tokens give NaN - both as in verl.
    """
    m = torch.broadcast_to(mask, returns.shape).bool()
    r = returns[m].to(torch.float64)
    v = values[m].to(torch.float64)
    if r.numel() < 2:
        return torch.tensor(float("nan"))
    # EV = 1 - Var(R - V) / (Var(R) + eps)
    return (1.0 - (r - v).var() / (r.var() + eps)).to(torch.float32)


LOSS_AGG_MODES = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")


def agg_loss(loss_mat: torch.Tensor, loss_mask: torch.Tensor, loss_agg_mode: str = "token-mean",
             loss_scale_factor: float | None = None) -> torch.Tensor:
    """Reduce a per-token loss matrix to a scalar.

    Args:
        loss_mat: ``(bs, T)`` per-token losses.
        loss_mask: ``(bs, T)`` which tokens count.
        loss_agg_mode: one of ``LOSS_AGG_MODES``:

            * ``token-mean``: ``sum_{i,t} L m / sum_{i,t} m`` (every token weighs the same).
            * ``seq-mean-token-sum``: ``mean_i sum_t L m`` (per-sequence sum, mean over sequences).
            * ``seq-mean-token-mean``: ``mean_i (sum_t L m / sum_t m)`` (every sequence weighs the same).
            * ``seq-mean-token-sum-norm``: ``mean_i sum_t L m / T`` (Dr. GRPO: per-sequence sums over a
              constant length, mean over sequences; verl 0.9.1's and TRL's ``dr_grpo``).
        loss_scale_factor: the normaliser of ``seq-mean-token-sum-norm`` in place of ``T`` (the
            response length), as verl's ``actor.loss_scale_factor``; None keeps ``T``. Other modes
            ignore it.

    Sequences whose mask is entirely 0 contribute nothing and are left out of the
    "mean over sequences" denominators, so an empty sequence never produces NaN (verl's own
    ``agg_loss`` does the same; its trainer divides by every row of the mini-batch instead, which
    differs only when a response is empty). An all-empty batch yields 0.

    Returns:
        Scalar tensor.
    """
    if loss_agg_mode == "token-mean":
        return masked_mean(loss_mat, loss_mask)
    if loss_agg_mode not in LOSS_AGG_MODES:
        raise ValueError(f"unknown loss_agg_mode {loss_agg_mode!r}; valid: {', '.join(LOSS_AGG_MODES)}")

    seq_sum = masked_sum(loss_mat, loss_mask, dim=-1)  # (bs,)  sum_t L m
    tokens = torch.broadcast_to(loss_mask, loss_mat.shape).to(seq_sum.dtype).sum(dim=-1)  # (bs,)  sum_t m
    seq_valid = tokens > 0  # (bs,) sequences with at least one token
    if loss_agg_mode == "seq-mean-token-sum":
        # mean over non-empty sequences of sum_t L m
        return masked_mean(seq_sum, seq_valid)
    if loss_agg_mode == "seq-mean-token-mean":
        # per-sequence token mean, then mean over non-empty sequences
        seq_mean = seq_sum / tokens.clamp(min=1.0)  # empty sequence -> 0 / 1 = 0
        return masked_mean(seq_mean, seq_valid)
    # seq-mean-token-sum-norm: mean over non-empty sequences of sum_t L m, / response_length (or loss_scale_factor)
    return masked_mean(seq_sum, seq_valid) / (loss_mat.shape[-1] if loss_scale_factor is None else loss_scale_factor)
