
import pytest

from rlkit.training.optim import lr_multiplier, warmup_steps


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
