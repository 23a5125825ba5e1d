"""update_shards and loss_units: the pure parts of RankWorker's update that make N ranks equal one."""
from __future__ import annotations

import pytest
import torch

from rlkit.datasets import RolloutBatch
from rlkit.training.rank_worker import loss_units, update_shards


def rows(n=10):
    return RolloutBatch({"x": torch.arange(n), "response_mask": torch.ones(n, 3)}, {"uid": [str(i) for i in range(n)]})


@pytest.mark.parametrize("world", [2, 4])
def test_ranks_share_exactly_the_one_rank_mini_batches(world):
    """With shuffle and two epochs, mini-batch k over `world` ranks holds the rows of one rank's mini-batch k."""
    b = rows(16)
    one = update_shards(b, 1, 8, epochs=2, shuffle=True, seed=3)[0]
    many = update_shards(b, world, 8, epochs=2, shuffle=True, seed=3)
    assert one.meta["mini_batch_sizes"] == [8] * 4
    assert all(s.meta["mini_batch_sizes"] == [8 // world] * 4 for s in many)
    k = 8 // world
    for m in range(4):
        got = sorted(x for s in many for x in s["x"][m * k : (m + 1) * k].tolist())
        assert got == sorted(one["x"][m * 8 : (m + 1) * 8].tolist())
    assert one["x"][:8].tolist() != list(range(8))  # shuffled
    assert torch.equal(one["x"][:8], torch.randperm(16, generator=torch.Generator().manual_seed(3))[:8])  # one rank's order


def test_short_last_mini_batch_is_padded_with_empty_rows():
    shards = update_shards(rows(10), 4, 8, epochs=1, shuffle=False, seed=0)  # mini-batches of 8 and 2 rows
    assert [s.meta["mini_batch_sizes"] for s in shards] == [[2, 1]] * 4
    assert [s["is_pad"] for s in shards] == [[False, False, False]] * 2 + [[False, False, True]] * 2
    real = [x for s in shards for x, p in zip(s["x"].tolist(), s["is_pad"]) if not p]
    assert sorted(real) == list(range(10))
    for s in shards:  # a padding row carries no tokens
        assert all(float(s["response_mask"][i].sum()) == (0.0 if p else 3.0) for i, p in enumerate(s["is_pad"]))


def test_loss_units():
    m = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    assert loss_units(m, "token-mean") == 2.0 and loss_units(m, "seq-mean-token-sum") == 1.0
    with pytest.raises(ValueError, match="unknown loss_agg_mode"):
        loss_units(m, "mean")
