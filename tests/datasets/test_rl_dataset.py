"""RLDataset on the processed real GSM8K with the Qwen2.5 tokenizer, and PromptSampler."""
from __future__ import annotations

import json
import logging
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from rlkit.datasets.gsm8k import gsm8k
from rlkit.datasets.rl_dataset import PromptSampler, PromptTooLongError, RLDataset, _as_id_list

SUFFIX = ' Let\'s think step by step and output the final answer after "####".'
FIRST_QUESTION = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?"
)
QWEN_HEADER = "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"


@pytest.fixture(scope="module")
def data(gsm8k_source, tmp_path_factory):
    return gsm8k(local_dir=tmp_path_factory.mktemp("gsm8k_rl"), source=gsm8k_source)


@pytest.fixture(scope="module")
def tok(qwen_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(qwen_tokenizer_dir))


@pytest.fixture(scope="module")
def test_ds(data, tok):
    return RLDataset(data["test"], tok)


# --------------------------------------------------------------------- items


def test_first_item(data, tok):
    ds = RLDataset(data["train"], tok)
    assert len(ds) == 7473
    item = ds[0]
    assert set(item) == {"prompt_ids", "prompt_text", "messages", "data_source", "ground_truth", "extra_info", "index"}
    content = FIRST_QUESTION + SUFFIX
    assert item["messages"] == [{"role": "user", "content": content}]
    assert item["prompt_text"] == (
        QWEN_HEADER + "<|im_start|>user\n" + content + "<|im_end|>\n<|im_start|>assistant\n"
    )
    ids = item["prompt_ids"]
    assert isinstance(ids, list) and all(type(t) is int for t in ids)
    assert ids[0] == tok.convert_tokens_to_ids("<|im_start|>")
    assert tok.decode(ids) == item["prompt_text"]
    assert FIRST_QUESTION in tok.decode(ids)
    assert item["data_source"] == "openai/gsm8k"
    assert item["ground_truth"] == "72"
    assert item["index"] == 0
    assert item["extra_info"]["index"] == 0 and item["extra_info"]["split"] == "train"
    assert item["extra_info"]["question"] == FIRST_QUESTION
    # comma ground truth survives as a plain string
    assert ds[345]["ground_truth"] == "1080"
    assert ds[-1]["index"] == 7472
    with pytest.raises(IndexError):
        ds[7473]


def test_ids_match_apply_chat_template_tokenize(test_ds, tok):
    for i in (0, 1, 500, 1318):
        item = test_ds[i]
        direct = tok.apply_chat_template(item["messages"], add_generation_prompt=True, tokenize=True)
        assert item["prompt_ids"] == _as_id_list(direct)
        assert item["extra_info"]["question"] in tok.decode(item["prompt_ids"])


def test_items_are_copies(test_ds):
    item = test_ds[3]
    item["messages"][0]["content"] = "changed"
    item["prompt_ids"].append(-1)
    item["extra_info"]["split"] = "x"
    again = test_ds[3]
    assert again["messages"][0]["content"].endswith(SUFFIX)
    assert again["prompt_ids"][-1] != -1
    assert again["extra_info"]["split"] == "test"


def test_as_id_list():
    from transformers.tokenization_utils_base import BatchEncoding

    assert _as_id_list([1, 2, 3]) == [1, 2, 3]
    assert _as_id_list(BatchEncoding({"input_ids": [4, 5], "attention_mask": [1, 1]})) == [4, 5]
    assert _as_id_list({"input_ids": [[6, 7]]}) == [6, 7]
    assert _as_id_list(torch.tensor([[8, 9]])) == [8, 9]
    with pytest.raises(ValueError):
        _as_id_list([[1], [2]])


def test_multiple_files_concatenate(data, tok):
    ds = RLDataset([data["train"], data["test"]], tok)
    assert len(ds) == 7473 + 1319
    item = ds[7473]
    assert item["index"] == 7473
    assert item["extra_info"]["split"] == "test" and item["extra_info"]["index"] == 0
    assert item["ground_truth"] == "18"


def test_max_samples_first_rows_without_shuffle(data, tok):
    ds = RLDataset([data["test"], data["train"]], tok, max_samples=1320, shuffle=False)
    assert len(ds) == 1320
    last = ds[1319]["extra_info"]
    assert (last["split"], last["index"]) == ("train", 0)
    assert len(RLDataset(data["test"], tok, max_samples=-1)) == 1319
    assert len(RLDataset(data["test"], tok, max_samples=5000)) == 1319


def numbered_parquet(path, n):
    """n rows whose ground truth is the row number, so a subset names the rows it kept."""
    pq.write_table(pa.table({
        "prompt": [[{"role": "user", "content": f"q{i}"}] for i in range(n)],
        "data_source": ["toy"] * n,
        "reward_model": [{"style": "rule", "ground_truth": str(i)} for i in range(n)],
    }), path)
    return str(path)


def test_max_samples_random_subset_as_verl_draws_it(tmp_path, tok):
    import numpy as np

    path = numbered_parquet(tmp_path / "ten.parquet", 10)
    ds = RLDataset(path, tok, max_samples=4, seed=7)  # shuffle=True is the default, as data.shuffle
    # verl's RLHFDataset: np.random.default_rng(seed).choice(total, size=max_samples, replace=False), kept in
    # the order drawn (dataframe.select(indices))
    want = np.random.default_rng(7).choice(10, size=4, replace=False).tolist()
    assert [int(item["ground_truth"]) for item in ds] == want
    assert [item["index"] for item in ds] == want  # index: the row in the files, not in the subset
    assert len(set(want)) == 4 and want != sorted(want)  # without replacement, not in file order
    # the default seed is rlkit's data.seed default, 1
    assert [int(x["ground_truth"]) for x in RLDataset(path, tok, max_samples=4)] == \
        np.random.default_rng(1).choice(10, size=4, replace=False).tolist()


def test_max_samples_subset_is_drawn_over_the_concatenated_files(data, tok):
    import numpy as np

    ds = RLDataset([data["test"], data["train"]], tok, max_samples=5, seed=3)
    want = np.random.default_rng(3).choice(1319 + 7473, size=5, replace=False).tolist()
    assert [item["index"] for item in ds] == want
    for item, row in zip(ds, want):  # rows >= 1319 come from the second file (train)
        assert (item["extra_info"]["split"], item["extra_info"]["index"]) == \
            (("test", row) if row < 1319 else ("train", row - 1319))


def test_max_samples_unseeded_draw_when_seed_is_none(tmp_path, tok, monkeypatch):
    import numpy as np

    path = numbered_parquet(tmp_path / "ten.parquet", 10)
    calls = []
    real = np.random.default_rng
    monkeypatch.setattr(np.random, "default_rng", lambda *a: calls.append(a) or real(*a))
    assert len(RLDataset(path, tok, max_samples=4, seed=None)) == 4
    assert calls == [()]  # verl with data.seed=null: default_rng() without a seed


def test_max_samples_is_applied_before_filtering(tmp_path, tok):
    import numpy as np

    path = tmp_path / "growing.parquet"  # row i asks " word" * i: prompts grow with the row number
    pq.write_table(pa.table({
        "prompt": [[{"role": "user", "content": "q" + " word" * i}] for i in range(10)],
        "data_source": ["toy"] * 10,
        "reward_model": [{"style": "rule", "ground_truth": str(i)} for i in range(10)],
    }), path)
    lengths = RLDataset(str(path), tok).prompt_lengths()
    assert lengths == sorted(lengths) and lengths[0] < lengths[-1]
    limit = lengths[4]  # rows 0..4 fit (or more, if lengths repeat)
    ds = RLDataset(str(path), tok, max_samples=6, seed=0, filter_overlong_prompts=True, max_prompt_length=limit)
    drawn = np.random.default_rng(0).choice(10, size=6, replace=False).tolist()  # verl: subset first, then filter
    assert [int(x["ground_truth"]) for x in ds] == [r for r in drawn if lengths[r] <= limit]
    assert ds.num_filtered == sum(lengths[r] > limit for r in drawn)


def test_full_pass_is_fast(data, tok):
    start = time.perf_counter()
    ds = RLDataset(data["train"], tok, filter_overlong_prompts=True)  # tokenizes every row
    lengths = ds.prompt_lengths()
    elapsed = time.perf_counter() - start
    assert ds.num_filtered == 0 and len(ds) == 7473
    assert len(lengths) == 7473 and min(lengths) > 30 and max(lengths) < 1024
    assert elapsed < 20, f"tokenizing 7473 prompts took {elapsed:.1f}s"


# --------------------------------------------------------------------- truncation


@pytest.fixture(scope="module")
def full_ids(test_ds):
    return test_ds[0]["prompt_ids"]


@pytest.mark.parametrize(
    "mode, max_len, expected",
    [
        ("left", 16, lambda f: f[-16:]),
        ("right", 16, lambda f: f[:16]),
        ("middle", 16, lambda f: f[:8] + f[-8:]),
        ("middle", 15, lambda f: f[:7] + f[-8:]),
        ("middle", 1, lambda f: f[-1:]),
    ],
)
def test_truncation(data, tok, full_ids, mode, max_len, expected):
    ds = RLDataset(data["test"], tok, max_prompt_length=max_len, truncation=mode)
    item = ds[0]
    assert item["prompt_ids"] == expected(full_ids)
    assert len(item["prompt_ids"]) == max_len
    assert item["prompt_text"] == tok.decode(item["prompt_ids"])


def test_no_truncation_when_short_enough(data, tok, full_ids):
    ds = RLDataset(data["test"], tok, max_prompt_length=len(full_ids), truncation="error")
    assert ds[0]["prompt_ids"] == full_ids


def test_truncation_error(data, tok, full_ids):
    ds = RLDataset(data["test"], tok, max_prompt_length=16)  # lazy: no error yet
    with pytest.raises(PromptTooLongError) as exc:
        ds[0]
    msg = str(exc.value)
    assert isinstance(exc.value, RuntimeError)
    assert "row 0" in msg and f"{len(full_ids)} tokens" in msg and "max_prompt_length=16" in msg
    assert "data.max_prompt_length" in msg and "truncation" in msg


def test_filter_overlong(data, tok, test_ds, caplog):
    lengths = test_ds.prompt_lengths()
    threshold = sorted(lengths)[len(lengths) // 2]
    keep = [i for i, n in enumerate(lengths) if n <= threshold]
    with caplog.at_level(logging.WARNING, logger="rlkit.datasets.rl_dataset"):
        ds = RLDataset(data["test"], tok, max_prompt_length=threshold, filter_overlong_prompts=True)
    assert len(ds) == len(keep)
    assert ds.num_filtered == 1319 - len(keep) > 0
    assert f"dropped {1319 - len(keep)} of 1319" in caplog.text
    assert ds[0]["index"] == keep[0] and ds[-1]["index"] == keep[-1]
    assert ds[5]["extra_info"]["index"] == keep[5]
    assert all(len(ds[i]["prompt_ids"]) <= threshold for i in range(0, len(ds), 50))


def test_filter_everything_raises(data, tok):
    with pytest.raises(ValueError, match="removed all 1319 prompts"):
        RLDataset(data["test"], tok, max_prompt_length=5, filter_overlong_prompts=True)


# --------------------------------------------------------------------- other inputs / errors


def test_no_chat_template_fallback(data, tok, qwen_tokenizer_dir):
    from transformers import AutoTokenizer

    plain = AutoTokenizer.from_pretrained(str(qwen_tokenizer_dir))
    plain.chat_template = None
    for ds in (RLDataset(data["test"], plain), RLDataset(data["test"], tok, apply_chat_template=False)):
        item = ds[0]
        content = item["messages"][0]["content"]
        assert item["prompt_text"] == content
        assert item["prompt_ids"] == tok(content)["input_ids"]
        assert tok.decode(item["prompt_ids"]) == content


def test_string_prompt_and_custom_key(tmp_path, tok):
    path = tmp_path / "custom.parquet"
    pq.write_table(
        pa.table({
            "question": ["What is 1+1?", "What is 2+3?"],
            "data_source": ["toy", "toy"],
            "reward_model": [{"style": "rule", "ground_truth": "2"}, {"style": "rule", "ground_truth": "5"}],
        }),
        path,
    )
    ds = RLDataset(str(path), tok, prompt_key="question")
    item = ds[1]
    assert item["messages"] == [{"role": "user", "content": "What is 2+3?"}]
    assert item["prompt_text"].endswith("<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n")
    assert item["extra_info"] == {}
    assert item["ground_truth"] == "5"


def test_missing_file(tmp_path, tok):
    with pytest.raises(FileNotFoundError) as exc:
        RLDataset(str(tmp_path / "nope.parquet"), tok)
    assert str(tmp_path / "nope.parquet") in str(exc.value)


def test_tilde_path(data, tok, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "t.parquet").write_bytes(open(data["test"], "rb").read())
    ds = RLDataset("~/t.parquet", tok)
    assert len(ds) == 1319 and ds.files == [str(tmp_path / "t.parquet")]


def test_missing_columns(tmp_path, tok):
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"prompt": [[{"role": "user", "content": "hi"}]], "data_source": ["x"]}), path)
    with pytest.raises(KeyError) as exc:
        RLDataset(path, tok)
    msg = str(exc.value)
    assert "['reward_model']" in msg and "bad.parquet" in msg and "expected verl's schema" in msg
    with pytest.raises(KeyError) as exc:
        RLDataset(path, tok, prompt_key="messages")
    assert "'messages'" in str(exc.value) and "prompt_key" in str(exc.value)


def test_bad_arguments(data, tok):
    with pytest.raises(ValueError, match="truncation must be one of"):
        RLDataset(data["test"], tok, truncation="both")
    with pytest.raises(ValueError, match="max_prompt_length"):
        RLDataset(data["test"], tok, max_prompt_length=0)


# --------------------------------------------------------------------- PromptSampler


def test_sampler_in_order():
    s = PromptSampler(10, 3, shuffle=False)
    assert s.batches_per_epoch == 3 and len(s) == 3
    assert (s.epoch, s.position) == (0, 0)
    assert s.next_batch() == [0, 1, 2]
    assert (s.epoch, s.position) == (0, 1)
    assert s.next_batch() == [3, 4, 5]
    assert s.next_batch() == [6, 7, 8]  # 9 dropped
    assert (s.epoch, s.position) == (1, 0)
    assert s.next_batch() == [0, 1, 2]


def test_sampler_keep_last():
    s = PromptSampler(10, 3, shuffle=False, drop_last=False)
    assert s.batches_per_epoch == 4
    assert [s.next_batch() for _ in range(5)] == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9], [0, 1, 2]]
    assert s.epoch == 1
    assert PromptSampler(3, 8, drop_last=False, shuffle=False).next_batch() == [0, 1, 2]


def _perms(seed, n, count):
    gen = torch.Generator()
    gen.manual_seed(seed)
    return [torch.randperm(n, generator=gen).tolist() for _ in range(count)]


def test_sampler_shuffle_draws_verls_permutations_from_one_generator():
    perms = _perms(7, 10, 4)  # verl: one generator seeded with data.seed, a randperm per epoch
    s = PromptSampler(10, 5, seed=7)  # no loader workers: each draw is an epoch
    got = [s.next_batch() for _ in range(4)]
    assert [got[0] + got[1], got[2] + got[3]] == perms[:2]
    assert sorted(got[0] + got[1]) == list(range(10))
    assert got[:2] != got[2:]  # reshuffled
    again = PromptSampler(10, 5, seed=7)
    assert [again.next_batch() for _ in range(4)] == got
    other = PromptSampler(10, 5, seed=8)
    assert [other.next_batch() for _ in range(2)] != got[:2]


def test_sampler_with_loader_workers_takes_the_second_of_each_two_draws():
    perms = _perms(1, 10, 6)  # verl's StatefulDataLoader with workers draws twice per epoch, uses the second
    s = PromptSampler(10, 10, seed=1, num_workers=8)
    assert [s.next_batch() for _ in range(3)] == [perms[1], perms[3], perms[5]]
    assert PromptSampler(10, 10, seed=1, num_workers=1).epoch_order(2) == perms[5]
    assert PromptSampler(10, 10, seed=1, num_workers=0).epoch_order(2) == perms[2]


@pytest.mark.parametrize("workers", [0, 2])
def test_sampler_matches_verls_loader_over_three_epochs(workers):
    """The loader verl 0.9.1 builds (create_rl_sampler + StatefulDataLoader), checked against, not copied."""
    torchdata = pytest.importorskip("torchdata.stateful_dataloader")
    from torchdata.stateful_dataloader.sampler import RandomSampler

    rows = list(range(12))
    gen = torch.Generator()
    gen.manual_seed(5)
    loader = torchdata.StatefulDataLoader(rows, batch_size=4, num_workers=workers, drop_last=True,
                                          sampler=RandomSampler(data_source=rows, generator=gen))
    verl = [batch.tolist() for _ in range(3) for batch in loader]
    ours = PromptSampler(12, 4, seed=5, num_workers=workers)
    assert [ours.next_batch() for _ in range(9)] == verl


def test_sampler_resumes_an_older_checkpoint_in_its_seed_plus_epoch_order():
    old_state = {"epoch": 1, "position": 0, "seed": 3, "batch_size": 5, "dataset_len": 10, "shuffle": True,
                 "drop_last": True}  # rlkit before verl's order saved no "order"
    s = PromptSampler(10, 5, seed=3)
    s.load_state_dict(old_state)
    assert s.next_batch() + s.next_batch() == _perms(3 + 1, 10, 1)[0]
    assert s.state_dict()["order"] == "seed+epoch"  # and it stays so for the rest of that run


def test_sampler_refuses_to_resume_with_the_other_loader_order():
    state = PromptSampler(10, 5, seed=3, num_workers=8).state_dict()
    with pytest.raises(ValueError, match="dataloader_num_workers"):
        PromptSampler(10, 5, seed=3, num_workers=0).load_state_dict(state)


def test_sampler_iteration_is_one_epoch():
    s = PromptSampler(7, 2, shuffle=False)
    s.next_batch()
    assert list(s) == [[2, 3], [4, 5]]
    assert (s.epoch, s.position) == (1, 0)
    assert list(s) == [[0, 1], [2, 3], [4, 5]]
    assert s.epoch == 2


def test_sampler_resume_continues_identically():
    original = PromptSampler(23, 4, seed=3)
    for _ in range(8):  # crosses the epoch boundary (5 batches per epoch)
        original.next_batch()
    state = original.state_dict()
    assert state["epoch"] == 1 and state["position"] == 3
    state = json.loads(json.dumps(state))  # survives a JSON checkpoint
    expected = [original.next_batch() for _ in range(12)]

    resumed = PromptSampler(23, 4, seed=3)
    resumed.load_state_dict(state)
    assert (resumed.epoch, resumed.position) == (1, 3)
    assert [resumed.next_batch() for _ in range(12)] == expected

    with pytest.raises(ValueError, match="seed: saved 3 vs now 4"):
        PromptSampler(23, 4, seed=4).load_state_dict(state)
    with pytest.raises(ValueError, match="dataset_len"):
        PromptSampler(24, 4, seed=3).load_state_dict(state)


def test_sampler_errors():
    with pytest.raises(ValueError) as exc:
        PromptSampler(5, 8)
    msg = str(exc.value)
    assert "batch_size=8" in msg and "5 prompts" in msg and "drop_last" in msg
    with pytest.raises(ValueError):
        PromptSampler(5, 0)
    with pytest.raises(ValueError):
        PromptSampler(0, 1, drop_last=False)


def test_sampler_with_dataset(test_ds):
    s = PromptSampler(len(test_ds), 256, seed=1)
    assert s.batches_per_epoch == 5  # 1319 // 256
    batch = s.next_batch()
    items = [test_ds[i] for i in batch[:4]]
    assert [it["index"] for it in items] == batch[:4]
