"""Tests for rlkit.algos.core: masked ops, log-probs, entropy, explained variance, agg_loss."""
import math
import statistics

import pytest
import torch

from tiny import agg_loss_loop
from rlkit.algos import (
    LOSS_AGG_MODES,
    agg_loss,
    entropy_from_logits,
    explained_variance,
    logprobs_from_logits,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
)


def ragged_mask(bs, length, gen, min_len=0):
    """Right-padded (bs, length) float64 mask with random lengths in [min_len, length]."""
    lengths = torch.randint(min_len, length + 1, (bs,), generator=gen)
    return (torch.arange(length)[None, :] < lengths[:, None]).to(torch.float64)


# ----------------------------------------------------------------------------- masked_sum / mean


X = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=torch.float64)
M = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64)


def test_masked_sum_by_hand():
    # all: 1 + 2 + 4 = 7 ; per row: [1 + 2, 4] = [3, 4]
    assert masked_sum(X, M).item() == 7.0
    assert masked_sum(X, M, dim=-1).tolist() == [3.0, 4.0]
    # per column: [1 + 4, 2, 0]
    assert masked_sum(X, M, dim=0).tolist() == [5.0, 2.0, 0.0]


def test_masked_mean_by_hand():
    # all: 7 / 3 ; per row: [3 / 2, 4 / 1]
    assert masked_mean(X, M).item() == pytest.approx(7 / 3, rel=1e-7)
    assert masked_mean(X, M, dim=-1).tolist() == pytest.approx([1.5, 4.0], rel=1e-7)


def test_masked_mean_bool_mask_and_nan_in_padding():
    x = X.clone()
    x[0, 2] = float("nan")  # padded position: must not leak
    x[1, 1] = float("inf")
    assert masked_mean(x, M.bool()).item() == pytest.approx(7 / 3, rel=1e-7)
    assert masked_sum(x, M, dim=-1).tolist() == [3.0, 4.0]


def test_masked_mean_empty_mask_is_zero():
    assert masked_mean(X, torch.zeros_like(X)).item() == 0.0
    # row-wise: an empty row gives 0, not NaN
    m = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    assert masked_mean(X, m, dim=-1).tolist() == pytest.approx([2.0, 0.0])


def test_masked_mean_broadcast_mask():
    # (bs, 1) mask broadcast over T: only row 1 counts -> (4 + 5 + 6) / 3 = 5
    m = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    assert masked_mean(X, m).item() == pytest.approx(5.0, rel=1e-7)


# ----------------------------------------------------------------------------- masked_var / whiten


def test_masked_var_by_hand():
    # valid values {1, 2, 4}: mean 7/3, squared deviations 16/9 + 1/9 + 25/9 = 42/9
    x = torch.tensor([[1.0, 2.0, 99.0], [4.0, -7.0, 0.0]], dtype=torch.float64)
    m = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    assert masked_var(x, m, unbiased=False).item() == pytest.approx(42 / 27, rel=1e-7)  # 42/9 / 3
    assert masked_var(x, m).item() == pytest.approx(42 / 18, rel=1e-7)  # 42/9 / 2 = 7/3


def test_masked_var_needs_two_elements():
    x = torch.tensor([[1.0, 2.0]])
    with pytest.raises(ValueError, match="single element"):
        masked_var(x, torch.tensor([[1.0, 0.0]]))
    with pytest.raises(ValueError, match="empty"):
        masked_var(x, torch.tensor([[0.0, 0.0]]))
    # the biased variance of one element is simply 0
    assert masked_var(x, torch.tensor([[1.0, 0.0]]), unbiased=False).item() == 0.0


def test_masked_whiten_by_hand():
    # valid {1, 2, 4}: mean 7/3, unbiased var 7/3 -> w = (x - 7/3) / sqrt(7/3 + 1e-8)
    x = torch.tensor([[1.0, 2.0, 99.0], [4.0, -7.0, 0.0]], dtype=torch.float64)
    m = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    w = masked_whiten(x, m)
    s = math.sqrt(7 / 3 + 1e-8)
    assert w[0, 0].item() == pytest.approx((1 - 7 / 3) / s, rel=1e-7)  # -0.8729
    assert w[0, 1].item() == pytest.approx((2 - 7 / 3) / s, rel=1e-7)  # -0.2182
    assert w[1, 0].item() == pytest.approx((4 - 7 / 3) / s, rel=1e-7)  # +1.0911
    # whitened valid entries: mean 0, unbiased var 1
    assert masked_mean(w, m).item() == pytest.approx(0.0, abs=1e-7)
    assert masked_var(w, m).item() == pytest.approx(1.0, rel=1e-6)
    # shift_mean=False keeps the mean: w + 7/3
    w2 = masked_whiten(x, m, shift_mean=False)
    assert w2[0, 0].item() == pytest.approx((1 - 7 / 3) / s + 7 / 3, rel=1e-7)
    assert masked_mean(w2, m).item() == pytest.approx(7 / 3, rel=1e-6)


def _ref_whiten(x, m, shift_mean=True):
    vals = [x[i][j] for i in range(len(x)) for j in range(len(x[i])) if m[i][j]]
    mu = sum(vals) / len(vals)
    var = sum((v - mu) ** 2 for v in vals) / (len(vals) - 1)
    out = [[(v - mu) / math.sqrt(var + 1e-8) + (0 if shift_mean else mu) for v in row] for row in x]
    return out, mu, var


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("shape", [(3, 5), (8, 17), (1, 4)])
@pytest.mark.parametrize("shift_mean", [True, False])
def test_masked_ops_vs_loop_reference(seed, shape, shift_mean):
    gen = torch.Generator().manual_seed(seed)
    bs, length = shape
    x = torch.randn(bs, length, generator=gen, dtype=torch.float64) * 3 + 1
    m = ragged_mask(bs, length, gen, min_len=2)
    xl, ml = x.tolist(), m.tolist()
    ref, mu, var = _ref_whiten(xl, ml, shift_mean)
    vals = [xl[i][j] for i in range(bs) for j in range(length) if ml[i][j]]
    assert masked_sum(x, m).item() == pytest.approx(sum(vals), rel=1e-9, abs=1e-9)
    assert masked_mean(x, m).item() == pytest.approx(statistics.fmean(vals), rel=1e-7)
    assert masked_var(x, m).item() == pytest.approx(statistics.variance(vals), rel=1e-7)
    assert masked_var(x, m, unbiased=False).item() == pytest.approx(statistics.pvariance(vals), rel=1e-7)
    row_means = [statistics.fmean([v for v, k in zip(xr, mr) if k]) for xr, mr in zip(xl, ml)]
    assert masked_mean(x, m, dim=-1).tolist() == pytest.approx(row_means, rel=1e-7)
    w = masked_whiten(x, m, shift_mean=shift_mean)
    assert torch.allclose(w, torch.tensor(ref, dtype=torch.float64), rtol=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------- logprobs / entropy


def test_logprobs_from_logits_by_hand():
    # logits [0, ln 3] -> softmax [1/4, 3/4]
    logits = torch.tensor([[[0.0, math.log(3.0)], [0.0, math.log(3.0)]]])
    labels = torch.tensor([[1, 0]])
    lp = logprobs_from_logits(logits, labels)
    assert lp.shape == (1, 2)
    assert lp.dtype == torch.float32
    assert lp[0].tolist() == pytest.approx([math.log(0.75), math.log(0.25)], rel=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_logprobs_from_logits_vs_log_softmax(seed, dtype):
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(3, 7, 50, generator=gen) * 4).to(dtype)
    labels = torch.randint(0, 50, (3, 7), generator=gen)
    lp = logprobs_from_logits(logits, labels)
    assert lp.dtype == torch.float32  # always upcast
    ref = torch.log_softmax(logits.double(), dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(lp.double(), ref, atol=1e-5)


def test_logprobs_from_logits_grad_and_shape_check():
    logits = torch.randn(2, 3, 5, requires_grad=True)
    labels = torch.randint(0, 5, (2, 3))
    lp = logprobs_from_logits(logits, labels)
    lp.sum().backward()
    # d log p_y / dz = onehot(y) - softmax(z)
    expected = torch.nn.functional.one_hot(labels, 5).float() - torch.softmax(logits.detach(), -1)
    assert torch.allclose(logits.grad, expected, atol=1e-6)
    with pytest.raises(ValueError):
        logprobs_from_logits(torch.randn(2, 3, 5), torch.zeros(2, 4, dtype=torch.long))


def test_entropy_from_logits_by_hand():
    # uniform over V=4 -> ln 4 ; softmax [1/4, 3/4] -> -(1/4 ln 1/4 + 3/4 ln 3/4) = 0.5623
    h = entropy_from_logits(torch.zeros(2, 3, 4))
    assert h.shape == (2, 3)
    assert torch.allclose(h, torch.full((2, 3), math.log(4.0)), atol=1e-6)
    h2 = entropy_from_logits(torch.tensor([0.0, math.log(3.0)]))
    assert h2.item() == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)), rel=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_entropy_from_logits_vs_definition(seed):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(4, 6, 30, generator=gen, dtype=torch.float64) * 3
    p = torch.softmax(logits, -1).tolist()
    ref = [[-sum(q * math.log(q) for q in row) for row in seq] for seq in p]
    assert torch.allclose(entropy_from_logits(logits), torch.tensor(ref, dtype=torch.float64), atol=1e-10)
    # bf16 input gives an fp32 result
    assert entropy_from_logits(logits.bfloat16()).dtype == torch.float32


# ----------------------------------------------------------------------------- explained variance


def test_explained_variance_by_hand():
    """verl's formula: 1 - Var(R - V) / (Var(R) + 1e-5), unbiased variances."""
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    returns = torch.tensor([[1.0, 2.0, 3.0, 50.0]])  # Var(R) over the mask = 1 (unbiased)
    # perfect prediction, and a constant offset: Var(R - V) = 0 -> 1
    assert explained_variance(returns.clone(), returns, mask).item() == 1.0
    assert explained_variance(returns - 5, returns, mask).item() == pytest.approx(1.0)
    # constant prediction: Var(R - V) = Var(R) = 1 -> 1 - 1 / (1 + 1e-5)
    assert explained_variance(torch.zeros(1, 4), returns, mask).item() == pytest.approx(1 - 1 / 1.00001, rel=1e-4)
    # V = [1, 2, 4]: R - V = [0, 0, -1], Var = 1/3 -> 1 - (1/3) / (1 + 1e-5)
    values = torch.tensor([[1.0, 2.0, 4.0, -9.0]])
    assert explained_variance(values, returns, mask).item() == pytest.approx(1 - (1 / 3) / 1.00001, rel=1e-6)


def test_explained_variance_degenerate_cases_follow_verl():
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    const = torch.tensor([[2.0, 2.0, 7.0]])
    # constant returns: R - V = [2, 1], Var = 0.5 -> 1 - 0.5 / 1e-5
    assert explained_variance(torch.tensor([[0.0, 1.0, 0.0]]), const, mask).item() == pytest.approx(1 - 0.5 / 1e-5)
    assert explained_variance(const, const, mask).item() == 1.0  # exact values: 1 - 0 / 1e-5
    assert math.isnan(explained_variance(const, const, torch.tensor([[1.0, 0.0, 0.0]])).item())  # one token


# ----------------------------------------------------------------------------- agg_loss

# loss rows: valid [1, 2, 3], [5, 6], [] (the 100s are padding that must be ignored)
LOSS = torch.tensor([[1.0, 2.0, 3.0, 100.0], [5.0, 6.0, 100.0, 100.0], [100.0, 100.0, 100.0, 100.0]])
LMASK = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("token-mean", 17 / 5),  # (1+2+3+5+6) / 5 tokens = 3.4
        ("seq-mean-token-sum", 17 / 2),  # (6 + 11) / 2 non-empty seqs = 8.5
        ("seq-mean-token-mean", 3.75),  # (6/3 + 11/2) / 2 = (2 + 5.5) / 2
        ("seq-mean-token-sum-norm", 17 / 2 / 4),  # (6 + 11) / 2 non-empty seqs / response_length 4 = 2.125
    ],
)
def test_agg_loss_by_hand(mode, expected):
    assert agg_loss(LOSS, LMASK, mode).item() == pytest.approx(expected, rel=1e-6)
    # the empty third sequence changes nothing: same value with only the first two rows
    assert agg_loss(LOSS[:2], LMASK[:2], mode).item() == pytest.approx(expected, rel=1e-6)


def test_agg_loss_scale_factor_replaces_the_response_length():
    # seq-mean-token-sum-norm with loss_scale_factor=10: 17 / 2 / 10 instead of 17 / 2 / 4 (verl's actor.loss_scale_factor)
    assert agg_loss(LOSS, LMASK, "seq-mean-token-sum-norm", loss_scale_factor=10).item() == pytest.approx(0.85)
    assert agg_loss(LOSS, LMASK, "seq-mean-token-sum-norm", loss_scale_factor=None).item() == pytest.approx(2.125)
    # the other modes do not use it
    assert agg_loss(LOSS, LMASK, "token-mean", loss_scale_factor=10).item() == pytest.approx(3.4)


def test_agg_loss_modes_constant_and_unknown():
    assert set(LOSS_AGG_MODES) >= {"token-mean", "seq-mean-token-sum", "seq-mean-token-mean"}
    with pytest.raises(ValueError) as err:
        agg_loss(LOSS, LMASK, "token-sum")
    for mode in LOSS_AGG_MODES:
        assert mode in str(err.value)


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_agg_loss_empty_batch_and_grad_finite(mode):
    loss_mat = torch.randn(2, 3, requires_grad=True)
    out = agg_loss(loss_mat, torch.zeros(2, 3), mode)
    assert out.item() == 0.0
    out.backward()
    assert torch.isfinite(loss_mat.grad).all() and (loss_mat.grad == 0).all()
    # gradient on an empty sequence is 0 and finite, on a valid token it is the aggregation weight
    loss_mat.grad = None
    mask = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    agg_loss(loss_mat, mask, mode).backward()
    assert (loss_mat.grad[1] == 0).all() and loss_mat.grad[0, 2] == 0
    # weights: token-mean 1/2; seq-mean-token-sum 1/1 seq; seq-mean-token-mean 1/2/1; sum-norm 1/1 seq/3
    w = {"token-mean": 0.5, "seq-mean-token-sum": 1.0, "seq-mean-token-mean": 0.5, "seq-mean-token-sum-norm": 1 / 3}
    assert loss_mat.grad[0, 0].item() == pytest.approx(w[mode], rel=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("shape", [(4, 6), (9, 13)])
@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_agg_loss_vs_loop_reference(seed, shape, mode):
    gen = torch.Generator().manual_seed(seed)
    loss = torch.randn(*shape, generator=gen, dtype=torch.float64)
    mask = ragged_mask(*shape, gen, min_len=0)
    expected = agg_loss_loop(loss.tolist(), mask.tolist(), mode)
    assert agg_loss(loss, mask, mode).item() == pytest.approx(expected, rel=1e-7, abs=1e-9)


@pytest.mark.parametrize("chunk_size", [1, 3, 2048])
def test_token_logprobs_in_chunks_equals_whole_rows(chunk_size):
    """Any chunking gives logprobs_from_logits / entropy_from_logits of logits / T, values and gradients
    (the chunks are recomputed in backward, not kept)."""
    from rlkit.algos import token_logprobs

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 11, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 11, (7,), generator=g)
    lp, ent = token_logprobs(logits, labels, temperature=0.7, with_entropy=True, chunk_size=chunk_size)
    ref_lp = logprobs_from_logits(logits / 0.7, labels)
    ref_ent = entropy_from_logits(logits / 0.7)
    assert lp.dtype == torch.float64 and torch.allclose(lp, ref_lp, atol=1e-12) and torch.allclose(ent, ref_ent, atol=1e-12)
    (g1,) = torch.autograd.grad((lp * 2 + ent).sum(), logits)
    (g2,) = torch.autograd.grad((ref_lp * 2 + ref_ent).sum(), logits)
    assert torch.allclose(g1, g2, atol=1e-12)
    lp0, none = token_logprobs(logits, labels, temperature=0)  # 0 counts as 1
    assert none is None and torch.allclose(lp0, logprobs_from_logits(logits, labels), atol=1e-12)
    with pytest.raises(ValueError, match="logits \\(M, V\\) and labels \\(M,\\)"):
        token_logprobs(logits[None], labels)


def test_token_logprobs_gradient_is_exact_and_one_node():
    """The chunked backward (one (M, V) gradient written chunk by chunk) passes gradcheck in fp64, with the
    entropy used, unused or not computed; autograd sees one node over the logits, not a slice per chunk."""
    from rlkit.algos import token_logprobs

    g = torch.Generator().manual_seed(2)
    logits = torch.randn(5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 6, (5,), generator=g)
    assert torch.autograd.gradcheck(lambda x: token_logprobs(x, labels, 0.8, True, chunk_size=2), (logits,))
    assert torch.autograd.gradcheck(lambda x: token_logprobs(x, labels, 1.0, True, chunk_size=2)[1], (logits,))
    assert torch.autograd.gradcheck(lambda x: token_logprobs(x, labels, 1.0, True, chunk_size=3)[0], (logits,))
    assert torch.autograd.gradcheck(lambda x: token_logprobs(x, labels, 2.0, False, chunk_size=4)[0], (logits,))
    lp, _ = token_logprobs(logits, labels, chunk_size=2)
    assert "TokenLogprobs" in lp.grad_fn.name()
    assert [f for f, _ in lp.grad_fn.next_functions if f is not None][0].variable is logits
    # bf16 logits: the gradient comes back in bf16, equal to the fp32 reference to bf16 rounding
    x = torch.randn(6, 50, generator=g).bfloat16().requires_grad_()
    lp, ent = token_logprobs(x, labels.repeat(2)[:6], 1.0, True, chunk_size=4)
    (gx,) = torch.autograd.grad((lp - 0.5 * ent).sum(), x)
    xr = x.detach().float().requires_grad_()
    (gr,) = torch.autograd.grad((logprobs_from_logits(xr, labels.repeat(2)[:6]) - 0.5 * entropy_from_logits(xr)).sum(), xr)
    assert gx.dtype == torch.bfloat16 and torch.allclose(gx.float(), gr, atol=1e-2)


def test_token_logprobs_compiled_equals_eager():
    """compiled=True (torch.compile of the chunk math; Inductor on this CPU) gives the eager numbers and
    gradients, for chunks of different sizes (the last one is short: dynamic shapes)."""
    from rlkit.algos import token_logprobs

    g = torch.Generator().manual_seed(1)
    logits = torch.randn(9, 13, generator=g, requires_grad=True)
    labels = torch.randint(0, 13, (9,), generator=g)
    out = {}
    for compiled in (False, True):
        lp, ent = token_logprobs(logits, labels, 1.3, with_entropy=True, chunk_size=4, compiled=compiled)
        (grad,) = torch.autograd.grad((lp + ent).sum(), logits)
        out[compiled] = (lp.detach(), ent.detach(), grad)
    for a, b in zip(out[False], out[True]):
        assert torch.allclose(a, b, atol=1e-5)
