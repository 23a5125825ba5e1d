"""RolloutBatch: construction, row operations (select / chunk / split / concat / repeat / pad), errors."""
from __future__ import annotations

import pickle
import re
import subprocess
import sys

import pytest
import torch

from rlkit.datasets import RolloutBatch
from rlkit.datasets.batch import FIELDS, PAD_COLUMN

PROMPTS = [[11, 12, 13], [21], [31, 32]]
RESPONSES = [[41, 2], [51, 52, 53], []]
LOG_PROBS = [[-0.1, -0.2], [-0.3, -0.4, -0.5], []]


def make(B: int, meta: dict | None = None) -> RolloutBatch:
    """B rows whose every tensor and column value encodes its row number."""
    rows = torch.arange(B)
    return RolloutBatch(
        {"x": rows.clone(), "y": torch.stack([rows * 10, rows * 10 + 1], dim=1).float(),
         "mask": (rows % 2 == 0)},
        {"uid": [f"u{i}" for i in range(B)], "extra_info": [{"index": i} for i in range(B)]},
        meta if meta is not None else {"temperature": 0.7, "step": 3})


# ---------------------------------------------------------------------- construction and access
def test_from_generation_hand_computed():
    b = RolloutBatch.from_generation(PROMPTS, RESPONSES, LOG_PROBS, pad_id=0)
    assert len(b) == 3
    assert b["prompts"].tolist() == [[11, 12, 13], [0, 0, 21], [0, 31, 32]]
    assert b["responses"].tolist() == [[41, 2, 0], [51, 52, 53], [0, 0, 0]]
    assert b["input_ids"].tolist() == [[11, 12, 13, 41, 2, 0], [0, 0, 21, 51, 52, 53], [0, 31, 32, 0, 0, 0]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1], [0, 1, 1, 0, 0, 0]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 3, 4, 4], [0, 0, 0, 1, 2, 3], [0, 0, 1, 1, 1, 1]]
    assert b["response_mask"].tolist() == [[1.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]
    assert b["rollout_log_probs"][0].tolist() == pytest.approx([-0.1, -0.2, 0.0])
    assert b["rollout_log_probs"][2].tolist() == [0.0, 0.0, 0.0]
    b.check()  # matches the shape table


def test_from_generation_columns_meta_and_errors():
    b = RolloutBatch.from_generation(PROMPTS, RESPONSES, None, pad_id=0, columns={"uid": ["a", "a", "b"]},
                                     meta={"temperature": 1.0})
    assert "rollout_log_probs" not in b and b["uid"] == ["a", "a", "b"] and b.meta == {"temperature": 1.0}
    with pytest.raises(ValueError, match=r"3 prompts, 2 responses"):
        RolloutBatch.from_generation(PROMPTS, RESPONSES[:2], LOG_PROBS[:2], pad_id=0)
    with pytest.raises(ValueError, match=r"row 1 has 3 response tokens but 2 log_probs"):
        RolloutBatch.from_generation(PROMPTS, RESPONSES, [[-0.1, -0.2], [-0.3, -0.4], []], pad_id=0)
    with pytest.raises(ValueError, match=r"column 'uid' has 2 rows"):
        RolloutBatch.from_generation(PROMPTS, RESPONSES, LOG_PROBS, pad_id=0, columns={"uid": ["a", "b"]})


def test_mapping_access():
    b = make(3)
    assert len(b) == 3 and len(RolloutBatch()) == 0
    assert b.keys() == ["x", "y", "mask", "uid", "extra_info"] and list(b) == b.keys()
    assert "x" in b and "uid" in b and "temperature" not in b
    assert torch.equal(b["x"], torch.tensor([0, 1, 2])) and b["uid"] == ["u0", "u1", "u2"]
    assert b.get("values") is None and b.get("values", 5) == 5 and b.get("uid") == ["u0", "u1", "u2"]
    with pytest.raises(KeyError, match=r"'values' is not in this batch"):
        b["values"]
    b["score"] = torch.ones(3)
    b["finish_reason"] = ("stop", "length", "stop")
    assert b.columns["finish_reason"] == ["stop", "length", "stop"] and "score" in b.tensors
    b["score"] = [1, 2, 3]  # a key changes kind: it moves from tensors to columns
    assert "score" not in b.tensors and b["score"] == [1, 2, 3]
    del b["score"]
    assert "score" not in b
    assert b.tensor_dict() == b.tensors and b.tensor_dict() is not b.tensors
    b.update({"old_log_probs": torch.zeros(3, 2)})
    assert b["old_log_probs"].shape == (3, 2)


def test_mismatched_lengths_raise_naming_the_key():
    b = make(3)
    with pytest.raises(ValueError, match=r"tensor 'values' has 4 rows, the batch has 3 \(tensor 'x': 3"):
        b["values"] = torch.zeros(4, 2)
    with pytest.raises(ValueError, match=r"column 'ground_truth' has 2 rows, the batch has 3"):
        b["ground_truth"] = ["1", "2"]
    with pytest.raises(ValueError, match=r"^column 'uid' has 2 rows, the batch has 3 \(tensor 'responses': 3, column 'uid': 2;"):
        RolloutBatch({"responses": torch.zeros(3, 4)}, {"uid": ["a", "b"]})
    with pytest.raises(ValueError, match=r"scalar.*batch.meta\['temperature'\]"):
        b["temperature"] = torch.tensor(1.0)
    with pytest.raises(TypeError, match=r"batch\['temperature'\] = float.*batch.meta"):
        b["temperature"] = 1.0
    with pytest.raises(TypeError, match=r"column 'uid' must be a sequence"):
        RolloutBatch(columns={"uid": "abc"})
    with pytest.raises(ValueError, match=r"'k' is both a tensor and a column"):
        RolloutBatch({"k": torch.zeros(1)}, {"k": [0]})
    # the only key may change its length (nothing else fixes B)
    one = RolloutBatch({"x": torch.zeros(2)})
    one["x"] = torch.zeros(5)
    assert len(one) == 5


# ---------------------------------------------------------------------- rows
def test_select_indices_mask_and_slice():
    b = make(5)
    s = b.select([4, 0, -1, 0])
    assert s["x"].tolist() == [4, 0, 4, 0] and s["uid"] == ["u4", "u0", "u4", "u0"]
    assert s["y"].tolist() == [[40.0, 41.0], [0.0, 1.0], [40.0, 41.0], [0.0, 1.0]]
    assert s.meta == b.meta and s.meta is not b.meta
    m = b.select(torch.tensor([False, True, True, False, True]))
    assert m["x"].tolist() == [1, 2, 4] and m["extra_info"] == [{"index": 1}, {"index": 2}, {"index": 4}]
    assert b.select([True, False, False, False, False])["uid"] == ["u0"]  # a list of bools is a mask
    assert b.select(b["mask"])["x"].tolist() == [0, 2, 4]  # a batch's own bool tensor
    assert b.select(slice(1, 3))["uid"] == ["u1", "u2"] and b.select(range(3, 5))["x"].tolist() == [3, 4]
    assert b.select(torch.tensor([2]))["uid"] == ["u2"]
    e = b.select([])
    assert len(e) == 0 and e.keys() == b.keys() and e["y"].shape == (0, 2)


def test_select_errors():
    b = make(3)
    with pytest.raises(ValueError, match=r"boolean mask has shape \(2,\), the batch has 3 rows"):
        b.select([True, False])
    with pytest.raises(IndexError, match=r"row index 3 is out of range for a batch of 3 rows"):
        b.select([0, 3])
    with pytest.raises(TypeError, match=r"not 1 \(use \[1\] for one row\)"):
        b.select(1)
    with pytest.raises(TypeError, match=r"1-d sequence of ints or bools"):
        b.select([0.5])


@pytest.mark.parametrize("B,k,sizes", [(6, 3, [2, 2, 2]), (7, 3, [3, 2, 2]), (8, 3, [3, 3, 2]), (5, 5, [1] * 5),
                                       (2, 4, [1, 1, 0, 0]), (0, 2, [0, 0]), (4, 1, [4])])
def test_chunk_sizes(B, k, sizes):
    parts = make(B).chunk(k)
    assert [len(p) for p in parts] == sizes  # always k parts; empty ones only when B < k
    starts = [sum(sizes[:i]) for i in range(k)]
    for part, start, size in zip(parts, starts, sizes):  # contiguous, in order
        assert part["x"].tolist() == list(range(start, start + size))
        assert part["uid"] == [f"u{i}" for i in range(start, start + size)]


@pytest.mark.parametrize("B,k", [(6, 3), (7, 3), (7, 2), (1, 1), (3, 5), (0, 3), (16, 8)])
def test_chunk_then_concat_round_trips(B, k):
    b = make(B)
    back = RolloutBatch.concat(b.chunk(k))
    assert back.equals(b)
    assert back["extra_info"] == b["extra_info"] and back["y"].dtype == torch.float32


def test_chunk_rejects_bad_k():
    with pytest.raises(ValueError, match=r"k >= 1"):
        make(3).chunk(0)


def test_split_sizes_and_int():
    b = make(7)
    parts = b.split([1, 0, 4, 2])
    assert [p["uid"] for p in parts] == [["u0"], [], ["u1", "u2", "u3", "u4"], ["u5", "u6"]]
    assert RolloutBatch.concat(parts).equals(b)
    assert [len(p) for p in b.split(3)] == [3, 3, 1]  # torch.split: the last part smaller
    assert [len(p) for p in b.split(7)] == [7] and make(0).split(2) == []
    with pytest.raises(ValueError, match=r"split sizes \[3, 3\] sum to 6, the batch has 7 rows"):
        b.split([3, 3])
    with pytest.raises(ValueError, match=r"at least 1"):
        b.split(0)


def test_concat_with_different_keys_raises():
    a, b = make(2), make(3)
    del b["uid"]
    with pytest.raises(ValueError, match=r"batch 1 has different column keys than batch 0 \(missing \['uid'\], extra \[\]\)"):
        RolloutBatch.concat([a, b])
    c = make(3)
    c["values"] = torch.zeros(3, 2)
    with pytest.raises(ValueError, match=r"batch 1 has different tensor keys.*extra \['values'\]"):
        RolloutBatch.concat([a, c])


def test_concat_checks_widths_dtypes_and_meta():
    a, b = make(2), make(3)
    b["y"] = torch.zeros(3, 5)
    with pytest.raises(ValueError, match=r"tensor 'y' is \(3, 5\) torch.float32 in batch 1 but \(2, 2\) torch.float32"):
        RolloutBatch.concat([a, b])
    b["y"] = torch.zeros(3, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"tensor 'y'.*float64 in batch 1"):
        RolloutBatch.concat([a, b])
    with pytest.raises(ValueError, match=r"meta 'temperature' is 1.0 in batch 1 but 0.7 in batch 0"):
        RolloutBatch.concat([a, make(3, {"temperature": 1.0, "step": 3})])
    with pytest.raises(ValueError, match=r"meta keys"):
        RolloutBatch.concat([a, make(3, {"temperature": 0.7})])
    # equal meta, tensors included, is fine and kept
    t = {"w": torch.tensor([1.0, 2.0])}
    out = RolloutBatch.concat([make(1, dict(t)), make(2, dict(t))])
    assert torch.equal(out.meta["w"], t["w"]) and len(out) == 3
    with pytest.raises(ValueError, match=r"at least one batch"):
        RolloutBatch.concat([])


def test_repeat_interleave_order():
    b = make(3)
    r = b.repeat(2)
    assert r["x"].tolist() == [0, 0, 1, 1, 2, 2]
    assert r["uid"] == ["u0", "u0", "u1", "u1", "u2", "u2"]
    assert r["y"].tolist() == [[0.0, 1.0], [0.0, 1.0], [10.0, 11.0], [10.0, 11.0], [20.0, 21.0], [20.0, 21.0]]
    t = b.repeat(2, interleave=False)
    assert t["x"].tolist() == [0, 1, 2, 0, 1, 2] and t["uid"] == ["u0", "u1", "u2"] * 2
    assert t["y"][3:].tolist() == b["y"].tolist()
    assert b.repeat(1).equals(b)
    # rollout.n layout: prompts repeated n times then generated equals repeating per-prompt columns
    n = 3
    gen = RolloutBatch.from_generation([p for p in PROMPTS for _ in range(n)], [[1]] * 9, [[-1.0]] * 9, pad_id=0)
    prompt_only = RolloutBatch.from_generation(PROMPTS, [[1]] * 3, [[-1.0]] * 3, pad_id=0).repeat(n)
    assert torch.equal(gen["prompts"], prompt_only["prompts"])
    with pytest.raises(ValueError, match=r"n >= 1"):
        b.repeat(0)


def test_pad_unpad_round_trip_over_3_ranks_with_B7():
    b = make(7)
    padded, pad = b.pad_to_multiple(3)
    assert pad == 2 and len(padded) == 9
    assert padded["x"].tolist() == [0, 1, 2, 3, 4, 5, 6, 0, 1]  # copies of the first rows
    assert padded[PAD_COLUMN] == [False] * 7 + [True] * 2
    parts = padded.chunk(3)
    assert [len(p) for p in parts] == [3, 3, 3]
    assert [p[PAD_COLUMN] for p in parts][-1] == [False, True, True]
    # each rank adds a tensor (its own work), then the parts are gathered and the padding dropped
    done = []
    for p in parts:
        p["values"] = p["y"] * 2
        done.append(p)
    gathered = RolloutBatch.concat(done).unpad()
    assert PAD_COLUMN not in gathered and len(gathered) == 7
    assert gathered.keys() == ["x", "y", "mask", "values", "uid", "extra_info"]
    del gathered["values"]
    assert gathered.equals(b)


def test_pad_edge_cases():
    b = make(6)
    same, pad = b.pad_to_multiple(3)
    assert pad == 0 and same[PAD_COLUMN] == [False] * 6 and same.unpad().equals(b)
    tiny, pad = make(1).pad_to_multiple(4)
    assert pad == 3 and tiny["x"].tolist() == [0, 0, 0, 0] and tiny.unpad()["uid"] == ["u0"]
    empty, pad = make(0).pad_to_multiple(4)
    assert pad == 0 and len(empty) == 0
    assert b.unpad().equals(b)  # nothing marked: a copy
    twice, pad2 = make(5).pad_to_multiple(2)[0].pad_to_multiple(4)  # earlier marks are kept
    assert pad2 == 2 and twice[PAD_COLUMN] == [False] * 5 + [True] * 3 and twice.unpad().equals(make(5))
    with pytest.raises(ValueError, match=r"k >= 1"):
        b.pad_to_multiple(0)


def test_per_chunk_processing_equals_whole_batch():
    """What data-parallel ranks do on their parts, gathered, equals one pass over the whole batch."""
    torch.manual_seed(0)
    B, R = 11, 5
    lengths = torch.randint(0, R + 1, (B,))
    mask = (torch.arange(R) < lengths[:, None]).float()
    batch = RolloutBatch({"old_log_probs": torch.randn(B, R), "response_mask": mask},
                         {"ground_truth": [str(i % 3) for i in range(B)], "answer": [str(i % 2) for i in range(B)]})

    def process(b: RolloutBatch) -> RolloutBatch:
        b = b.copy()
        scores = torch.tensor([float(a == g) for a, g in zip(b["answer"], b["ground_truth"])])
        b["seq_log_prob"] = (b["old_log_probs"] * b["response_mask"]).sum(-1)
        b["score"] = scores
        return b

    whole = process(batch)
    for k in (1, 2, 3, 4, 11, 13):
        assert RolloutBatch.concat([process(p) for p in batch.chunk(k)]).equals(whole), k
    padded, _ = batch.pad_to_multiple(4)
    assert RolloutBatch.concat([process(p) for p in padded.chunk(4)]).unpad().equals(whole)
    # the micro-batch loop over split(size) equals the vectorised result too
    assert torch.equal(torch.cat([process(mb)["seq_log_prob"] for mb in batch.split(3)]), whole["seq_log_prob"])


# ---------------------------------------------------------------------- devices, pickling, checks, display
def test_to_cpu_and_pin_memory_keep_columns_and_meta():
    b = make(3)
    for out in (b.to("cpu"), b.cpu(), b.to(torch.device("cpu"), non_blocking=True), b.pin_memory()):
        assert out.equals(b) and out is not b
        assert out.columns is not b.columns and out.meta is not b.meta


def test_pickled_chunk_carries_only_its_rows():
    b = RolloutBatch({"big": torch.zeros(1000, 250)}, {"uid": [str(i) for i in range(1000)]})
    part = b.chunk(10)[3]
    assert part["big"].untyped_storage().nbytes() == 1000 * 250 * 4  # a view in memory ...
    blob = pickle.dumps(part)
    assert len(blob) < 1000 * 250 * 4 / 5  # ... but only its 100 rows on the wire
    back = pickle.loads(blob)
    assert back.equals(part) and back["uid"][0] == "300"


def test_check_against_the_shape_table():
    b = RolloutBatch.from_generation(PROMPTS, RESPONSES, LOG_PROBS, pad_id=0)
    for k in ("token_level_scores", "token_level_rewards", "old_log_probs", "ref_log_prob", "values", "advantages",
              "returns"):
        b[k] = torch.zeros(3, 3)
    assert b.check() is b
    b["values"] = torch.zeros(3, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"tensor 'values' is torch.float64, expected torch.float32"):
        b.check()
    b["values"] = torch.zeros(3, 6)
    with pytest.raises(ValueError, match=re.escape("tensor 'values' is (3, 6), expected (B, R) = (3, 3)")):
        b.check()
    b["values"] = torch.zeros(3, 3)
    b["input_ids"] = torch.zeros(3, 5, dtype=torch.long)
    with pytest.raises(ValueError, match=re.escape("'input_ids' is (3, 5), expected (B, P+R) = (3, 6)")):
        b.check()


def test_shape_table_in_docstring_matches_fields():
    import rlkit.datasets.batch as mod

    table = {m.group(1): (m.group(2), m.group(3)) for m in
             re.finditer(r"^\s+(\w+)\s+\((B, [PR+]+)\)\s+(\w+)\s", mod.__doc__, flags=re.M)}
    assert set(table) == set(FIELDS)
    for key, (dims, dtype, _) in FIELDS.items():
        assert table[key] == (", ".join(dims), str(dtype).removeprefix("torch.")), key


def test_repr_and_html():
    b = RolloutBatch.from_generation(PROMPTS, RESPONSES, LOG_PROBS, pad_id=0,
                                     columns={"uid": ["a", "a", "b"]}, meta={"temperature": 1.0})
    text = repr(b)
    assert text.splitlines()[0] == "RolloutBatch(3 rows, 7 tensors, 1 columns)"
    assert re.search(r"input_ids\s+\(3, 6\)\s+int64", text) and re.search(r"uid\s+column\s+str", text)
    assert "meta: temperature=1.0" in text
    page = b._repr_html_()
    assert "<table>" in page and "<code>response_mask</code>" in page and "temperature=1.0" in page
    assert repr(RolloutBatch()) == "RolloutBatch(0 rows, 0 tensors, 0 columns)"


def test_import_rlkit_datasets_stays_light():
    code = ("import sys, rlkit.datasets as d; assert 'RolloutBatch' in dir(d); "
            "print(sorted(m for m in ('torch', 'pandas') if m in sys.modules)); d.RolloutBatch; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["[]", "True"]
