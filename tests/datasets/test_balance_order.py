"""balance_order (trainer.balance_batch): hand-computed orders and metrics, and the ranks' rows under
rlkit's update layout (update_shards) equal to verl's (rank r: partition r, cut into mini-batches in order)."""
from __future__ import annotations

import pytest
import torch

from rlkit.datasets import RolloutBatch
from rlkit.datasets.packing import balance_order, balanced_partitions
from rlkit.training.rank_worker import update_shards

# rows 0-3 hold 9+8+7+6 = 30 tokens, rows 4-7 hold 1+2+3+4 = 10: unbalanced as they come.
# balanced_partitions by hand (equal size, k=2): sorted pairs {4,5} {6,7} {3,2} {1,0}, spreads 1 each;
# {4,5}+{6,7} -> {4,7}=5 {5,6}=5; {3,2}+{1,0} -> {2,1}=15 {3,0}=15; then {4,7}+{3,0}=20, {5,6}+{2,1}=20.
LENGTHS = [9, 8, 7, 6, 1, 2, 3, 4]
PARTS = [[0, 3, 4, 7], [1, 2, 5, 6]]


def test_hand_computed_partitions():
    assert balanced_partitions(LENGTHS, 2, equal_size=True) == PARTS


def test_two_ranks_two_rows_per_mini_batch():
    order, m = balance_order(LENGTHS, dp=2, mini_per_rank=2)
    # global mini-batch 0: rank 0 rows 0, 3 + rank 1 rows 1, 2; mini-batch 1: 4, 7 + 5, 6
    assert order == [0, 3, 1, 2, 4, 7, 5, 6]
    assert m == {"global_seqlen/min": 10.0, "global_seqlen/max": 30.0, "global_seqlen/minmax_diff": 20.0,
                 "global_seqlen/balanced_min": 20.0, "global_seqlen/balanced_max": 20.0,
                 "global_seqlen/mean": 20.0}
    assert all(type(v) is float for v in m.values())


def test_one_mini_batch_is_the_partitions_one_after_another():
    """mini_per_rank = rows per rank (or None): verl's reordered batch as it is."""
    assert balance_order(LENGTHS, dp=2, mini_per_rank=4)[0] == [0, 3, 4, 7, 1, 2, 5, 6]
    assert balance_order(LENGTHS, dp=2)[0] == [0, 3, 4, 7, 1, 2, 5, 6]


def test_uneven_sums_and_a_short_last_mini_batch():
    # 6 rows over 2 ranks: sorted pairs {0,1}=(1,2) {2,3}=(3,10) {4,5}=(20,30), spreads 1, 7, 10:
    # {4,5}+{2,3} -> {4,3}=30 {5,2}=33 (spread 3); + {0,1} -> {4,3,1}=32 {5,2,0}=34;
    # partitions ordered by their smallest row: [0, 2, 5] (34 tokens), [1, 3, 4] (32)
    lengths = [1, 2, 3, 10, 20, 30]
    order, m = balance_order(lengths, dp=2, mini_per_rank=2)
    assert order == [0, 2, 1, 3, 5, 4]  # mini-batch 0: [0, 2] + [1, 3]; mini-batch 1 (1 row each): [5] + [4]
    assert m == {"global_seqlen/min": 6.0, "global_seqlen/max": 60.0, "global_seqlen/minmax_diff": 54.0,
                 "global_seqlen/balanced_min": 32.0, "global_seqlen/balanced_max": 34.0,
                 "global_seqlen/mean": 33.0}


def test_one_rank_keeps_the_order():
    lengths = [7, 3, 9, 1, 4]
    order, m = balance_order(lengths, dp=1, mini_per_rank=2)
    assert order == [0, 1, 2, 3, 4]
    total = float(sum(lengths))
    assert m == {"global_seqlen/min": total, "global_seqlen/max": total, "global_seqlen/minmax_diff": 0.0,
                 "global_seqlen/balanced_min": total, "global_seqlen/balanced_max": total,
                 "global_seqlen/mean": total}


@pytest.mark.parametrize("dp, mini_per_rank, epochs", [(2, 2, 1), (2, 4, 1), (2, 1, 2), (4, 1, 1), (4, 2, 3)])
def test_update_shards_gives_rank_r_partition_r(dp, mini_per_rank, epochs):
    """The reordered batch under rlkit's update layout: rank r gets partition r's rows, mini-batch m
    being partition_r[m*q:(m+1)*q] (verl: rank r's chunk split in order), once per epoch."""
    lengths = [9, 8, 7, 6, 1, 2, 3, 4, 12, 5, 11, 10, 2, 6, 8, 3]
    parts = balanced_partitions(lengths, dp, equal_size=True)
    order, _ = balance_order(lengths, dp, mini_per_rank)
    assert sorted(order) == list(range(len(lengths)))
    batch = RolloutBatch({"row": torch.arange(len(lengths)), "response_mask": torch.ones(len(lengths), 1)})
    shards = update_shards(batch.select(order), world=dp, mini=dp * mini_per_rank, epochs=epochs, shuffle=False,
                           seed=0)
    for r, shard in enumerate(shards):
        assert shard["row"].tolist() == parts[r] * epochs
        assert not any(shard["is_pad"])
        assert shard.meta["mini_batch_sizes"] == [mini_per_rank] * (len(parts[r]) // mini_per_rank * epochs)


def test_refuses_what_does_not_split():
    with pytest.raises(ValueError, match="equal non-empty groups"):
        balance_order([1, 2, 3], dp=2)
    with pytest.raises(ValueError, match="mini_per_rank"):
        balance_order([1, 2], dp=2, mini_per_rank=0)
