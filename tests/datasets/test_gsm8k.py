"""GSM8K preprocessing into verl-schema parquet, on the real openai files."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import rlkit.datasets.gsm8k as gsm8k_mod
from rlkit.datasets.gsm8k import DatasetUnavailableError, SourceFormatError

REPO = Path(__file__).resolve().parents[2]
SUFFIX = ' Let\'s think step by step and output the final answer after "####".'

EXPECTED_SCHEMA = pa.schema(
    [
        ("data_source", pa.string()),
        ("prompt", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
        ("ability", pa.string()),
        ("reward_model", pa.struct([("style", pa.string()), ("ground_truth", pa.string())])),
        (
            "extra_info",
            pa.struct(
                [("split", pa.string()), ("index", pa.int64()), ("answer", pa.string()), ("question", pa.string())]
            ),
        ),
    ]
)

FIRST_TRAIN_QUESTION = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?"
)
FIRST_TRAIN_ANSWER = (
    "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
    "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72"
)


def _env_with_repo():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


@pytest.fixture(scope="module")
def processed(gsm8k_source, tmp_path_factory):
    out = tmp_path_factory.mktemp("gsm8k_out")
    paths = gsm8k_mod.gsm8k(local_dir=out, source=gsm8k_source)
    return out, paths


@pytest.fixture(scope="module")
def tables(processed):
    _, paths = processed
    return {split: pq.read_table(path) for split, path in paths.items()}


def _raw_rows(folder: Path, split: str) -> list[dict]:
    return [json.loads(line) for line in (folder / f"{split}.jsonl").read_text(encoding="utf-8").splitlines() if line]


# --------------------------------------------------------------------- real data


def test_paths_and_counts(processed, tables):
    out, paths = processed
    assert paths == {"train": str(out / "train.parquet"), "test": str(out / "test.parquet")}
    assert tables["train"].num_rows == 7473
    assert tables["test"].num_rows == 1319
    # nothing else left in the folder (atomic writes clean up their temp files)
    assert sorted(p.name for p in out.iterdir()) == ["test.parquet", "train.parquet"]


def test_schema(tables):
    for table in tables.values():
        assert table.schema.remove_metadata().equals(EXPECTED_SCHEMA), table.schema


def test_first_train_row(tables):
    assert tables["train"].slice(0, 1).to_pylist()[0] == {
        "data_source": "openai/gsm8k",
        "prompt": [{"role": "user", "content": FIRST_TRAIN_QUESTION + SUFFIX}],
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": "72"},
        "extra_info": {"split": "train", "index": 0, "answer": FIRST_TRAIN_ANSWER, "question": FIRST_TRAIN_QUESTION},
    }


def test_first_test_row(tables):
    row = tables["test"].slice(0, 1).to_pylist()[0]
    assert row["reward_model"] == {"style": "rule", "ground_truth": "18"}
    assert row["extra_info"]["split"] == "test"
    assert row["extra_info"]["index"] == 0
    assert row["extra_info"]["question"].startswith("Janet\u2019s ducks lay 16 eggs per day.")
    assert row["extra_info"]["answer"].endswith("#### 18")


def test_comma_ground_truths(tables):
    train = tables["train"].slice(345, 1).to_pylist()[0]
    assert train["extra_info"]["answer"].endswith("#### 1,080")  # Adam earns $40 daily ...
    assert train["reward_model"]["ground_truth"] == "1080"
    test = tables["test"].slice(201, 1).to_pylist()[0]
    assert test["extra_info"]["answer"].endswith("#### 114,200")
    assert test["reward_model"]["ground_truth"] == "114200"


def test_all_rows_consistent(gsm8k_source, tables):
    for split, table in tables.items():
        raw = _raw_rows(gsm8k_source, split)
        rows = table.to_pylist()
        assert len(rows) == len(raw)
        commas = 0
        for i, (row, src) in enumerate(zip(rows, raw)):
            assert row["data_source"] == "openai/gsm8k"
            assert row["ability"] == "math"
            assert row["prompt"] == [{"role": "user", "content": src["question"] + SUFFIX}]
            assert row["extra_info"] == {"split": split, "index": i, "answer": src["answer"], "question": src["question"]}
            gt = row["reward_model"]["ground_truth"]
            assert "," not in gt
            float(gt)  # a plain number
            final = src["answer"].rsplit("#### ", 1)[1].strip()
            assert gt == final.replace(",", "")
            commas += "," in final
        assert commas == {"train": 79, "test": 14}[split]


# --------------------------------------------------------------------- other sources


def _write_raw_parquet(src: Path, dst: Path, split: str, name: str) -> None:
    rows = _raw_rows(src, split)
    table = pa.table({"question": [r["question"] for r in rows], "answer": [r["answer"] for r in rows]})
    dst.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, dst / name)


def test_hf_parquet_source_matches_jsonl(gsm8k_source, tables, tmp_path):
    hub = tmp_path / "hub"
    for split in ("train", "test"):
        _write_raw_parquet(gsm8k_source, hub / "main", split, f"{split}-00000-of-00001.parquet")
    paths = gsm8k_mod.gsm8k(local_dir=tmp_path / "out", source=hub)
    for split in ("train", "test"):
        assert pq.read_table(paths[split]).equals(tables[split])


def test_plain_parquet_source_matches_jsonl(gsm8k_source, tables, tmp_path):
    for split in ("train", "test"):
        _write_raw_parquet(gsm8k_source, tmp_path / "src", split, f"{split}.parquet")
    paths = gsm8k_mod.gsm8k(local_dir=tmp_path / "out", source=tmp_path / "src")
    for split in ("train", "test"):
        assert pq.read_table(paths[split]).equals(tables[split])


def test_processed_source_passes_through(processed, tables, tmp_path):
    out, _ = processed
    paths = gsm8k_mod.gsm8k(local_dir=tmp_path / "again", source=out)
    for split in ("train", "test"):
        assert pq.read_table(paths[split]).equals(tables[split])


def test_module_is_callable_and_lazy_export(processed, tmp_path):
    from rlkit.datasets import gsm8k

    assert callable(gsm8k)
    paths = gsm8k(local_dir=tmp_path / "o", source=processed[0])
    assert pq.ParquetFile(paths["test"]).metadata.num_rows == 1319


def _tiny_source(folder: Path, train_lines: list[str], test_lines: list[str] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.jsonl").write_text("\n".join(train_lines) + "\n", encoding="utf-8")
    if test_lines is not None:
        (folder / "test.jsonl").write_text("\n".join(test_lines) + "\n", encoding="utf-8")
    return folder


GOOD = json.dumps({"question": "What is 2+2?", "answer": "2+2=4\n#### 4"})


def test_tiny_source_and_overwrite(tmp_path):
    src = _tiny_source(tmp_path / "src", [GOOD, json.dumps({"question": "Big?", "answer": "#### -1,234.5"})], [GOOD])
    out = tmp_path / "out"
    out.mkdir()
    (out / "train.parquet").write_text("stale")  # existing output is replaced
    paths = gsm8k_mod.gsm8k(local_dir=out, source=src)
    rows = pq.read_table(paths["train"]).to_pylist()
    assert [r["reward_model"]["ground_truth"] for r in rows] == ["4", "-1234.5"]
    assert rows[1]["extra_info"]["index"] == 1
    assert rows[0]["prompt"][0]["content"] == "What is 2+2?" + SUFFIX


def test_local_dir_expands_user(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    src = _tiny_source(tmp_path / "src", [GOOD], [GOOD])
    paths = gsm8k_mod.gsm8k(local_dir="~/data/gsm8k", source=src)
    assert paths["train"] == str(tmp_path / "data" / "gsm8k" / "train.parquet")


def test_interrupted_write_keeps_old_file(tmp_path, monkeypatch):
    src = _tiny_source(tmp_path / "src", [GOOD], [GOOD])
    out = tmp_path / "out"
    gsm8k_mod.gsm8k(local_dir=out, source=src)
    before = (out / "train.parquet").read_bytes()

    real_write = pq.write_table

    def half_write(table, where, *args, **kwargs):
        Path(where).write_bytes(b"PAR1 half")
        raise KeyboardInterrupt

    monkeypatch.setattr(pq, "write_table", half_write)
    src2 = _tiny_source(tmp_path / "src2", [GOOD, GOOD], [GOOD])
    with pytest.raises(KeyboardInterrupt):
        gsm8k_mod.gsm8k(local_dir=out, source=src2)
    monkeypatch.setattr(pq, "write_table", real_write)
    assert (out / "train.parquet").read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == ["test.parquet", "train.parquet"]


# --------------------------------------------------------------------- bad sources


def test_missing_split_file(tmp_path):
    src = _tiny_source(tmp_path / "src", [GOOD])  # no test.jsonl
    with pytest.raises(SourceFormatError) as exc:
        gsm8k_mod.gsm8k(local_dir=tmp_path / "out", source=src)
    assert "test.jsonl" in str(exc.value) and str(src) in str(exc.value)
    assert not (tmp_path / "out").exists()  # nothing written when a split is missing


def test_row_without_final_answer(tmp_path):
    bad = json.dumps({"question": "Q?", "answer": "the answer is 5"})
    src = _tiny_source(tmp_path / "src", [GOOD, bad], [GOOD])
    with pytest.raises(SourceFormatError) as exc:
        gsm8k_mod.gsm8k(local_dir=tmp_path / "out", source=src)
    msg = str(exc.value)
    assert f"{src / 'train.jsonl'}, line 2" in msg
    assert "####" in msg


def test_invalid_json_and_missing_keys(tmp_path):
    src = _tiny_source(tmp_path / "a", [GOOD, GOOD, "{not json"], [GOOD])
    with pytest.raises(SourceFormatError, match="line 3: invalid JSON"):
        gsm8k_mod.gsm8k(local_dir=tmp_path / "out", source=src)
    src = _tiny_source(tmp_path / "b", [GOOD], [json.dumps({"question": "Q"})])
    with pytest.raises(SourceFormatError, match=r"test\.jsonl, line 1: expected an object with 'question' and 'answer'"):
        gsm8k_mod.gsm8k(local_dir=tmp_path / "out", source=src)


def test_bad_parquet_row_and_columns(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    pq.write_table(pa.table({"question": ["a", "b"], "answer": ["#### 1", "no final"]}), src / "train.parquet")
    pq.write_table(pa.table({"question": ["a"], "answer": ["#### 1"]}), src / "test.parquet")
    with pytest.raises(SourceFormatError, match=r"train\.parquet, row 1: "):
        gsm8k_mod.gsm8k(local_dir=tmp_path / "out", source=src)
    pq.write_table(pa.table({"text": ["a"]}), src / "train.parquet")
    with pytest.raises(SourceFormatError, match="unrecognised columns"):
        gsm8k_mod.gsm8k(local_dir=tmp_path / "out", source=src)


def test_missing_source_folder(tmp_path):
    with pytest.raises(SourceFormatError, match="not found"):
        gsm8k_mod.gsm8k(local_dir=tmp_path / "out", source=tmp_path / "nope")


# --------------------------------------------------------------------- hub / offline


def test_datasets_not_installed(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` raise ImportError
    with pytest.raises(DatasetUnavailableError) as exc:
        gsm8k_mod.gsm8k(local_dir=tmp_path / "out")
    msg = str(exc.value)
    assert "datasets" in msg
    assert "gsm8k(source='path/with/train.jsonl')" in msg and "--source" in msg
    assert isinstance(exc.value, RuntimeError)
    assert isinstance(exc.value.__cause__, ImportError)


def test_hub_offline(monkeypatch, tmp_path):
    fake = types.ModuleType("datasets")

    def load_dataset(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'openai/gsm8k' on the Hub (LocalEntryNotFoundError)")

    fake.load_dataset = load_dataset
    monkeypatch.setitem(sys.modules, "datasets", fake)
    with pytest.raises(DatasetUnavailableError) as exc:
        gsm8k_mod.gsm8k(local_dir=tmp_path / "out")
    msg = str(exc.value)
    assert "Couldn't reach" in msg and "--source" in msg
    assert isinstance(exc.value.__cause__, ConnectionError)


def test_hub_path_with_fake_datasets(monkeypatch, tmp_path):
    calls = []
    fake = types.ModuleType("datasets")

    def load_dataset(*args, **kwargs):
        calls.append(args)
        return {
            "train": [{"question": "A?", "answer": "x\n#### 1,000"}, {"question": "B?", "answer": "#### 2"}],
            "test": [{"question": "C?", "answer": "#### 3"}],
        }

    fake.load_dataset = load_dataset
    monkeypatch.setitem(sys.modules, "datasets", fake)
    paths = gsm8k_mod.gsm8k(local_dir=tmp_path / "out")
    assert calls == [("openai/gsm8k", "main")]
    train = pq.read_table(paths["train"])
    assert train.schema.remove_metadata().equals(EXPECTED_SCHEMA)
    assert [r["reward_model"]["ground_truth"] for r in train.to_pylist()] == ["1000", "2"]
    assert pq.read_table(paths["test"]).to_pylist()[0]["extra_info"] == {
        "split": "test", "index": 0, "answer": "#### 3", "question": "C?"
    }


def test_prepared_folder_is_used_without_the_hub(monkeypatch, tmp_path):
    """gsm8k(local_dir) with both files already there uses them (offline); overwrite=True asks the hub."""
    calls = []
    fake = types.ModuleType("datasets")

    def load_dataset(*args, **kwargs):
        calls.append(args)
        return {"train": [{"question": "A?", "answer": "#### 1"}], "test": [{"question": "C?", "answer": "#### 3"}]}

    fake.load_dataset = load_dataset
    monkeypatch.setitem(sys.modules, "datasets", fake)
    first = gsm8k_mod.gsm8k(local_dir=tmp_path / "out")
    assert len(calls) == 1
    mtime = Path(first["train"]).stat().st_mtime_ns
    again = gsm8k_mod.gsm8k(local_dir=tmp_path / "out")
    assert again == first and len(calls) == 1 and Path(first["train"]).stat().st_mtime_ns == mtime
    gsm8k_mod.gsm8k(local_dir=tmp_path / "out", overwrite=True)
    assert len(calls) == 2


def test_prepared_folder_with_foreign_parquet_is_refused(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    for split in ("train", "test"):
        pq.write_table(pa.table({"question": ["q"]}), out / f"{split}.parquet")
    with pytest.raises(SourceFormatError, match="not GSM8K in verl's schema.*overwrite=True"):
        gsm8k_mod.gsm8k(local_dir=out)


# --------------------------------------------------------------------- CLI / imports


def test_cli(gsm8k_source, tmp_path):
    out = tmp_path / "cli"
    proc = subprocess.run(
        [sys.executable, "-m", "rlkit.datasets.gsm8k", "--local_dir", str(out), "--source", str(gsm8k_source)],
        cwd=REPO, env=_env_with_repo(), capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        f"train: {out / 'train.parquet'} (7473 rows)",
        f"test: {out / 'test.parquet'} (1319 rows)",
    ]
    assert "RuntimeWarning" not in proc.stderr


def test_cli_error(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "rlkit.datasets.gsm8k", "--local_dir", str(tmp_path / "o"), "--source", str(tmp_path / "missing")],
        cwd=REPO, env=_env_with_repo(), capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: GSM8K source folder not found")


def test_import_is_light():
    code = (
        "import sys, rlkit.datasets as d; "
        "print(sorted(m for m in ('torch','pandas','pyarrow','transformers') if m in sys.modules)); "
        "print(sorted(d.__all__))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_env_with_repo(), capture_output=True, text=True, check=True)
    assert proc.stdout.splitlines() == ["[]", "['DatasetUnavailableError', 'PromptSampler', 'RLDataset', 'RolloutBatch', 'gsm8k']"]
