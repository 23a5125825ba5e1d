"""Validation metrics named and computed as verl computes them (metric_utils.process_validation_metrics,
verl 0.9.x): hand values for means, stds and sections, and verl's bootstrap written out as a loop
(global ``np.random.seed`` then ``np.random.choice``, one draw per row) against rlkit's."""
from __future__ import annotations

import numpy as np
import pytest

from rlkit.rewards.validation import bootstrap, majority_value, subset_sizes, validation_metrics


def verl_bootstrap(data, k, fns, seed=42, n_bootstrap=1000):
    """verl's bootstrap_metric, step by step."""
    np.random.seed(seed)
    arr = np.array(data, dtype=object)
    idx = np.random.choice(len(arr), size=(n_bootstrap, k), replace=True)
    res = [[fn(arr[idx[b]]) for b in range(n_bootstrap)] for fn in fns]
    return [(float(np.mean(r)), float(np.std(r))) for r in res]


def test_single_response_per_prompt_gives_mean_at_1_only():
    m = validation_metrics(["gsm8k"] * 3, [0, 1, 2], {"reward": [1.0, 0.0, 0.5]})
    assert m == {"val-core/gsm8k/reward/mean@1": 0.5}


def test_hand_values_and_sections_for_n_2():
    # prompt a: rewards 1, 0; prompt b: 1, 1
    m = validation_metrics(["ds"] * 4, ["a", "a", "b", "b"], {"reward": [1.0, 0.0, 1.0, 1.0]})
    assert m["val-core/ds/reward/mean@2"] == 0.75
    assert m["val-aux/ds/reward/std@2"] == 0.25
    # best@2 of prompt b is 1 in every draw; of prompt a it is 1 unless both draws pick the 0 (p = 1/4)
    (a_best, _), = verl_bootstrap([1.0, 0.0], 2, [np.max])
    assert m["val-core/ds/reward/best@2/mean"] == pytest.approx((a_best + 1.0) / 2)
    assert 0.70 < a_best < 0.80  # ~3/4
    assert set(m) == {f"{sec}/ds/reward/{name}" for sec, name in [
        ("val-core", "mean@2"), ("val-aux", "std@2"), ("val-core", "best@2/mean"), ("val-core", "best@2/std"),
        ("val-aux", "worst@2/mean"), ("val-aux", "worst@2/std")]}


def test_bootstrap_equals_verls_loop():
    data = [0.0, 1.0, 0.25, 1.0, 0.5]
    for k in subset_sizes(len(data)):
        assert bootstrap(data, k, [np.max, np.min]) == verl_bootstrap(data, k, [np.max, np.min])
    state = np.random.get_state()[1].copy()
    bootstrap(data, 2, [np.max])
    assert np.array_equal(np.random.get_state()[1], state)  # numpy's global stream untouched


def test_acc_becomes_the_core_variable_and_pred_gives_majority_votes():
    # 1 prompt, 4 responses: preds A, B, A, C with acc 1, 0, 1, 0 and scores 0.9, 0.1, 0.8, 0.0
    infos = {"reward": [0.9, 0.1, 0.8, 0.0], "acc": [1.0, 0.0, 1.0, 0.0], "pred": ["A", "B", "A", "C"]}
    m = validation_metrics(["math"] * 4, ["u"] * 4, infos)
    assert m["val-core/math/acc/mean@4"] == 0.5
    assert "val-aux/math/reward/mean@4" in m and m["val-aux/math/reward/mean@4"] == pytest.approx(0.45)
    assert not any("/pred/" in k for k in m)  # text is skipped
    votes = [{"val": v, "pred": p} for v, p in zip(infos["acc"], infos["pred"])]
    for k in (2, 4):
        want = verl_bootstrap(votes, k, [majority_value])[0]
        assert (m[f"val-core/math/acc/maj@{k}/mean"] if k == 4 else m[f"val-aux/math/acc/maj@{k}/mean"]) == \
            pytest.approx(want[0])
    assert majority_value([{"val": 0.0, "pred": "B"}, {"val": 1.0, "pred": "A"}, {"val": 0.5, "pred": "A"}]) == 1.0
    assert majority_value([{"val": 0.3, "pred": "B"}, {"val": 1.0, "pred": "A"}]) == 0.3  # tie: first seen


def test_data_sources_are_kept_apart_and_lengths_checked():
    m = validation_metrics(["x", "y"], [0, 1], {"reward": [1.0, 0.0]})
    assert m == {"val-core/x/reward/mean@1": 1.0, "val-core/y/reward/mean@1": 0.0}
    with pytest.raises(ValueError, match="one per response"):
        validation_metrics(["x"], [0, 1], {"reward": [1.0]})
