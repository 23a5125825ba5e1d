"""Balanced partitions, token-budget micro-batches and the packed layout, against hand-computed cases."""
from __future__ import annotations

import itertools
import random

import pytest
import torch

from rlkit.datasets.packing import PackedLayout, balanced_partitions, token_budget_groups


def spread(lengths, groups):
    sums = [sum(lengths[i] for i in g) for g in groups]
    return max(sums) - min(sums)


def test_partition_by_hand():
    # 10, 9, 8, 7, 2, 2: sum 38; two groups of 3 -> the best is 19 / 19 ({10, 7, 2} and {9, 8, 2})
    lengths = [10, 9, 8, 7, 2, 2]
    groups = balanced_partitions(lengths, 2, equal_size=True)
    assert sorted(len(g) for g in groups) == [3, 3] and spread(lengths, groups) == 0
    # every index exactly once
    assert sorted(itertools.chain(*groups)) == list(range(6))


def test_largest_differencing_on_the_textbook_case():
    # Karmarkar-Karp 2-way on {8, 7, 6, 5, 4}: differences 8-7=1, 6-5=1, then {4,1,1} -> 4-1=3, 3-1=2: spread 2
    groups = balanced_partitions([8, 7, 6, 5, 4], 2)
    assert spread([8, 7, 6, 5, 4], groups) == 2


@pytest.mark.parametrize("seed", range(5))
def test_equal_size_groups_near_the_best(seed):
    rng = random.Random(seed)
    lengths = [rng.randint(50, 1000) for _ in range(32)]
    groups = balanced_partitions(lengths, 4, equal_size=True)
    assert [len(g) for g in groups] == [8, 8, 8, 8]
    assert sorted(itertools.chain(*groups)) == list(range(32))
    assert spread(lengths, groups) <= max(lengths) - min(lengths)  # far better in practice:
    assert spread(lengths, groups) < 0.02 * sum(lengths) / 4


def test_partition_errors():
    with pytest.raises(ValueError, match="1 <= k <= 3"):
        balanced_partitions([1, 2, 3], 4)
    with pytest.raises(ValueError, match="equal groups"):
        balanced_partitions([1, 2, 3], 2, equal_size=True)


def test_token_budget_groups_respect_the_budget():
    rng = random.Random(0)
    lengths = [rng.randint(100, 1024) for _ in range(64)]
    groups = token_budget_groups(lengths, 4096)
    assert sorted(itertools.chain(*groups)) == list(range(64))
    assert all(sum(lengths[i] for i in g) <= 4096 for g in groups)
    lower = -(-sum(lengths) // 4096)
    assert lower <= len(groups) <= lower + 1
    assert len(token_budget_groups(lengths, 4096, min_groups=20)) == 20


def test_token_budget_by_hand():
    assert token_budget_groups([5, 5, 5], 15) == [[0, 1, 2]]
    assert sorted(map(len, token_budget_groups([5, 5, 5], 10))) == [1, 2]  # 15 tokens: 2 groups, 5 + 10
    with pytest.raises(ValueError, match="a sequence of 12 tokens does not fit the token budget of 10"):
        token_budget_groups([3, 12], 10)
    assert token_budget_groups([], 10) == []


def test_layout_packs_and_unpacks():
    # row 0: prompt [a b] (left pad 1), response [c] + 1 pad; row 1: prompt [d], response [e f]; P = 3, R = 2
    ids = torch.tensor([[0, 11, 12, 13, 0], [0, 0, 21, 22, 23]])
    mask = (ids != 0).long()
    lay = PackedLayout.from_mask(mask, response_width=2)
    assert lay.pack(ids).tolist() == [[11, 12, 13, 21, 22, 23]]
    assert lay.cu_seqlens.tolist() == [0, 3, 6] and lay.max_seqlen == 3 and lay.num_tokens == 6
    # predictors: 12 -> 13 (packed 1), 21 -> 22 (packed 3), 22 -> 23 (packed 4)
    assert lay.predict_index.tolist() == [1, 3, 4]
    responses = ids[:, 3:]
    assert lay.response_targets(responses).tolist() == [13, 22, 23]
    assert lay.unpack_response(torch.tensor([1.0, 2.0, 3.0])).tolist() == [[1.0, 0.0], [2.0, 3.0]]


def test_layout_rejects_empty_rows_and_bad_widths():
    with pytest.raises(ValueError, match=r"rows \[1\] have no tokens"):
        PackedLayout.from_mask(torch.tensor([[1, 1, 1], [0, 0, 0]]), 1)
    with pytest.raises(ValueError, match="response width 3"):
        PackedLayout.from_mask(torch.ones(2, 3, dtype=torch.long), 3)
