"""verl's learning-rate schedules, and the size of AdamW's last step read back from its state."""
import pytest
import torch

from rlkit.training.optim import adamw_step_norms, lr_multiplier, warmup_steps


def test_warmup_rule():
    assert warmup_steps(5, 0.5, 100) == 5  # explicit steps win
    assert warmup_steps(-1, 0.1, 100) == 10  # else ratio * total
    assert warmup_steps(-1, 0.0, 100) == 0


def test_constant_with_warmup():
    # warmup 4: 0/4, 1/4, 2/4, 3/4, then 1
    assert [lr_multiplier(s, 4, 10, "constant", 0.0) for s in range(6)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]


def test_cosine_reaches_min_ratio():
    # no warmup, total 10: halfway cos(pi/2)=0 -> 0.1 + 0.9*0.5 = 0.55; end -> min_lr_ratio
    assert lr_multiplier(0, 0, 10, "cosine", 0.1) == pytest.approx(1.0)
    assert lr_multiplier(5, 0, 10, "cosine", 0.1) == pytest.approx(0.55)
    assert lr_multiplier(10, 0, 10, "cosine", 0.1) == pytest.approx(0.1)


def test_unknown_style():
    with pytest.raises(ValueError, match="constant, cosine"):
        lr_multiplier(10, 0, 10, "linear", 0.0)


# verl's get_cosine_schedule_with_warmup, by hand: warmup step/max(1, w); then
# p = (s - w) / max(1, total - w), lr = max(m, m + (1 - m) * 0.5 * (1 + cos(2*pi*num_cycles*p)))

def test_cosine_with_warmup_by_hand():
    # warmup 2, total 10, min 0.2: s=0 -> 0, s=1 -> 1/2; s=2: p=0 -> 1; s=6: p=4/8, cos(pi/2)=0 -> 0.2 + 0.8/2 = 0.6;
    # s=10: p=1, cos(pi)=-1 -> 0.2
    got = [lr_multiplier(s, 2, 10, "cosine", 0.2) for s in (0, 1, 2, 6, 10)]
    assert got == pytest.approx([0.0, 0.5, 1.0, 0.6, 0.2])


def test_cosine_num_cycles_one_goes_down_and_back_up():
    # num_cycles=1, no warmup, total 8, min 0: p = s/8, cos(2*pi*p) at s = 2, 4, 6, 8 is 0, -1, 0, 1
    got = [lr_multiplier(s, 0, 8, "cosine", 0.0, num_cycles=1.0) for s in (2, 4, 6, 8)]
    assert got == pytest.approx([0.5, 0.0, 0.5, 1.0])


def test_cosine_min_lr_ratio_none_is_zero():
    assert lr_multiplier(4, 0, 8, "cosine", None) == pytest.approx(0.5)  # cos(pi/2)=0 -> 0 + 1*0.5


def _lrs(optim: dict, total: int, steps: int) -> list[float]:
    """lr at each step of the real LambdaLR loop (lr 1.0, so lr = multiplier)."""
    import torch
    from omegaconf import OmegaConf

    from rlkit.training.optim import build_scheduler

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(opt, OmegaConf.create({"lr": 1.0, **optim}), total)
    out = []
    for _ in range(steps):
        out.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    return out


def test_scheduler_loop_equals_the_formula_cosine():
    # lr_scheduler_type=cosine, warmup ratio 0.2 of 10 steps = int(2.0) = 2, min 0.2, half a cycle
    got = _lrs({"lr_scheduler_type": "cosine", "lr_warmup_steps_ratio": 0.2, "min_lr_ratio": 0.2,
                "num_cycles": 0.5, "warmup_style": None}, total=10, steps=11)
    assert got == pytest.approx([lr_multiplier(s, 2, 10, "cosine", 0.2) for s in range(11)])
    assert [got[i] for i in (0, 1, 2, 6, 10)] == pytest.approx([0.0, 0.5, 1.0, 0.6, 0.2])


def test_scheduler_loop_num_cycles():
    got = _lrs({"lr_scheduler_type": "cosine", "num_cycles": 1.0, "min_lr_ratio": 0.0}, total=8, steps=9)
    assert [got[i] for i in (0, 2, 4, 6, 8)] == pytest.approx([1.0, 0.5, 0.0, 0.5, 1.0])


def test_scheduler_loop_constant_with_warmup_steps():
    got = _lrs({"lr_scheduler_type": "constant", "lr_warmup_steps": 4}, total=10, steps=6)
    assert got == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0, 1.0])


def test_deprecated_warmup_style_wins_over_lr_scheduler_type():
    from rlkit.training.optim import scheduler_type

    assert scheduler_type({"lr_scheduler_type": "constant", "warmup_style": "cosine"}) == "cosine"
    assert scheduler_type({"lr_scheduler_type": "cosine", "warmup_style": None}) == "cosine"
    got = _lrs({"lr_scheduler_type": "constant", "warmup_style": "cosine", "min_lr_ratio": 0.0}, total=4, steps=5)
    assert got == pytest.approx([1.0, 0.5 * (1 + 2 ** -0.5), 0.5, 0.5 * (1 - 2 ** -0.5), 0.0])


def _params(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(*shape, generator=g)) for shape in ((7, 5), (5,), (3, 4, 2))]


@pytest.mark.parametrize("fused", [False, True])
def test_adamw_step_norms_equal_the_change_of_the_weights(fused):
    """Read back from AdamW's state after each of 4 steps (weight decay on, gradients of varying size and sign),
    the change equals ``||theta_new - theta_old||`` measured on copies of the weights, the weight norm is theirs,
    and the step count is the number of steps; small chunks (3 elements) give the same sums as whole tensors
    (up to fp32 rounding: each chunk is summed in fp32, the chunks in fp64)."""

    params = _params()
    opt = torch.optim.AdamW(params, lr=0.05, betas=(0.8, 0.95), weight_decay=0.3, fused=fused)
    g = torch.Generator().manual_seed(1)
    for step in range(1, 5):
        before = [p.detach().clone() for p in params]
        for p in params:
            p.grad = torch.randn(p.shape, generator=g) * 10 ** step  # the moments see a changing scale
        opt.step()
        moved = torch.sqrt(sum(((p.detach() - b) ** 2).sum() for p, b in zip(params, before)))
        weights = torch.sqrt(sum((p.detach() ** 2).sum() for p in params))
        sums, steps = adamw_step_norms(opt)
        assert steps == step
        assert sums[0].sqrt().item() == pytest.approx(moved.item(), rel=1e-5)
        assert sums[1].sqrt().item() == pytest.approx(weights.item(), rel=1e-6)
        assert torch.allclose(adamw_step_norms(opt, chunk=3)[0], sums, rtol=1e-6)  # fp32 sums, other order


def test_adamw_step_norms_before_a_step_and_after_a_skipped_one():

    params = _params()
    opt = torch.optim.AdamW(params, lr=0.1)
    sums, steps = adamw_step_norms(opt)
    weights = sum((p.detach().double() ** 2).sum() for p in params)
    assert steps == 0 and sums[0].item() == 0 and sums[1].item() == pytest.approx(weights.item())
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    assert adamw_step_norms(opt)[0][0] > 0
    assert adamw_step_norms(opt, stepped=False)[0][0].item() == 0  # a skipped step moved nothing


def test_adamw_step_norms_refuses_what_it_cannot_read():

    with pytest.raises(TypeError, match="torch.optim.AdamW's state, got SGD"):
        adamw_step_norms(torch.optim.SGD(_params(), lr=0.1))
    with pytest.raises(ValueError, match="amsgrad=True"):
        adamw_step_norms(torch.optim.AdamW(_params(), lr=0.1, amsgrad=True))
