"""trainer.balance_batch through Experiment.step() on CPU (one rank, tiny model): verl's
``global_seqlen/*`` metrics come with it and only with it, and on one rank it changes nothing else."""
from __future__ import annotations

import pytest
import torch

from rewards_for_tests import digit_fraction
from test_experiment import toy_overrides
from tiny import char_tokenizer, make_tiny_model, toy_parquet

from rlkit import Experiment, PPOConfig

SEQLEN_KEYS = {f"global_seqlen/{k}" for k in ("min", "max", "minmax_diff", "balanced_min", "balanced_max", "mean")}


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return (make_tiny_model(tmp_path_factory.mktemp("char_model"), char_tokenizer(), hidden=32, layers=2),
            toy_parquet(tmp_path_factory.mktemp("toy_data")))


def test_balance_batch_metrics_on_and_off(toy):
    results = {}
    for balance in (True, False):
        cfg = PPOConfig.from_overrides(toy_overrides(*toy, **{"trainer.balance_batch": balance}))
        exp = Experiment(cfg, reward_fn=digit_fraction)
        try:
            results[balance] = exp.step()
        finally:
            exp.shutdown()
    on, off = results[True].metrics, results[False].metrics
    assert SEQLEN_KEYS <= set(on)
    assert not any(k.startswith("global_seqlen/") for k in off)
    assert on["global_seqlen/balanced_max"] >= on["global_seqlen/mean"] >= on["global_seqlen/balanced_min"]
    assert on["global_seqlen/minmax_diff"] == on["global_seqlen/max"] - on["global_seqlen/min"]
    # one rank: one chunk and one partition, each the whole batch
    total = on["perf/total_num_tokens"]
    assert total > 0
    assert {on[k] for k in SEQLEN_KEYS - {"global_seqlen/minmax_diff"}} == {total}
    assert on["global_seqlen/minmax_diff"] == 0
    # ... and the rows keep their order, so the step is the one balance_batch=False takes
    assert torch.equal(results[True].batch["responses"], results[False].batch["responses"])
    assert list(results[True].rollouts["uid"]) == list(results[False].rollouts["uid"])
    for key in ("actor/pg_loss", "actor/grad_norm", "critic/vf_loss", "critic/score/mean"):
        assert on[key] == pytest.approx(off[key], rel=1e-6, abs=1e-7), key
