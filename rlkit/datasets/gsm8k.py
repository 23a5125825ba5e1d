"""GSM8K -> verl-schema parquet (``train.parquet`` / ``test.parquet``).

Each output row has verl's schema::

    data_source  = "openai/gsm8k"
    prompt       = [{"role": "user", "content": question + INSTRUCTION}]
    ability      = "math"
    reward_model = {"style": "rule", "ground_truth": "<number after ####, commas removed>"}
    extra_info   = {"split": "train"|"test", "index": i, "answer": answer, "question": question}

``gsm8k(local_dir="~/data/gsm8k")`` downloads from the Hugging Face hub (or reuses that folder
when it already holds both files); ``source=`` converts local files, here a one-question copy:

>>> import json, pathlib, tempfile
>>> from rlkit.datasets import gsm8k
>>> src = pathlib.Path(tempfile.mkdtemp())
>>> for split in ("train", "test"):
...     _ = (src / f"{split}.jsonl").write_text(json.dumps({"question": "1+1?", "answer": "1+1=2\\n#### 2"}) + "\\n")
>>> paths = gsm8k(local_dir=src / "out", source=src)
>>> sorted(paths), paths["train"].endswith("train.parquet")
(['test', 'train'], True)

or ``python -m rlkit.datasets.gsm8k --local_dir DIR [--source DIR]``.

``source`` is a folder holding ``train.jsonl``/``test.jsonl`` (the openai
grade-school-math files), or ``train.parquet``/``test.parquet`` (the raw
``openai/gsm8k`` parquet with ``question``/``answer`` columns, also found as
``train-00000-of-00001.parquet`` shards, directly or under ``main/``), or
parquet files that were already converted to the verl schema (these are
validated and copied through unchanged).

Files are written atomically (temporary file + ``os.replace``); with a ``source`` (or
``overwrite=True``) existing outputs are overwritten.

The module object itself is callable, so ``from rlkit.datasets import gsm8k;
gsm8k(...)`` works whether ``gsm8k`` resolves to this module or to the
function :func:`gsm8k` defined here.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import types
from pathlib import Path
from typing import Any, Iterable

__all__ = [
    "DATA_SOURCE",
    "INSTRUCTION",
    "DatasetUnavailableError",
    "SourceFormatError",
    "extract_ground_truth",
    "gsm8k",
    "make_row",
    "main",
]

DATA_SOURCE = "openai/gsm8k"
INSTRUCTION = 'Let\'s think step by step and output the final answer after "####".'
SPLITS = ("train", "test")
VERL_COLUMNS = ("data_source", "prompt", "ability", "reward_model", "extra_info")

_ANSWER_RE = re.compile(r"#### (\-?[0-9\.\,]+)")


class DatasetUnavailableError(RuntimeError):
    """The hub copy of openai/gsm8k could not be loaded (no ``datasets`` package, offline, ...)."""


class SourceFormatError(ValueError):
    """A local source file is missing or malformed."""


def extract_ground_truth(answer: str) -> str:
    """The number after the first ``#### `` in a GSM8K answer, commas removed.

    Raises ``ValueError`` when there is none.
    """
    match = _ANSWER_RE.search(answer)
    if match is None:
        raise ValueError("answer has no '#### <number>' final answer")
    return match.group(1).replace(",", "")


def make_row(question: str, answer: str, split: str, index: int) -> dict[str, Any]:
    """One verl-schema row."""
    return {
        "data_source": DATA_SOURCE,
        "prompt": [{"role": "user", "content": question + " " + INSTRUCTION}],
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": extract_ground_truth(answer)},
        "extra_info": {"split": split, "index": index, "answer": answer, "question": question},
    }


def _schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("data_source", pa.string()),
            ("prompt", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
            ("ability", pa.string()),
            ("reward_model", pa.struct([("style", pa.string()), ("ground_truth", pa.string())])),
            (
                "extra_info",
                pa.struct(
                    [
                        ("split", pa.string()),
                        ("index", pa.int64()),
                        ("answer", pa.string()),
                        ("question", pa.string()),
                    ]
                ),
            ),
        ]
    )


# --------------------------------------------------------------------------- sources


def _rows_from_pairs(pairs: Iterable[tuple[str, Any, Any]], split: str) -> list[dict[str, Any]]:
    """``pairs`` yields (location, question, answer); location names file and line/row for errors."""
    rows = []
    for index, (where, question, answer) in enumerate(pairs):
        if not isinstance(question, str) or not isinstance(answer, str):
            raise SourceFormatError(f"{where}: 'question' and 'answer' must be strings")
        try:
            rows.append(make_row(question, answer, split, index))
        except ValueError as e:
            tail = answer[-80:].replace("\n", "\\n")
            raise SourceFormatError(f"{where}: {e} (answer ends with {tail!r})") from None
    return rows


def _read_jsonl(path: Path) -> Iterable[tuple[str, Any, Any]]:
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}, line {lineno}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise SourceFormatError(f"{where}: invalid JSON ({e.msg})") from None
            if not isinstance(record, dict) or "question" not in record or "answer" not in record:
                raise SourceFormatError(f"{where}: expected an object with 'question' and 'answer' keys")
            yield where, record["question"], record["answer"]


def _split_files(folder: Path, split: str) -> tuple[str, list[Path]]:
    """('jsonl'|'parquet', files) for ``split`` in ``folder``."""
    jsonl = folder / f"{split}.jsonl"
    if jsonl.is_file():
        return "jsonl", [jsonl]
    single = folder / f"{split}.parquet"
    if single.is_file():
        return "parquet", [single]
    for sub in (folder, folder / "main"):
        shards = sorted(sub.glob(f"{split}-*.parquet"))
        if shards:
            return "parquet", shards
    raise SourceFormatError(
        f"no {split} split in {folder}: expected {split}.jsonl, {split}.parquet or "
        f"{split}-00000-of-0000N.parquet shards"
    )


def _read_source_split(folder: Path, split: str):
    """Returns (rows as list of dicts, None) for raw files or (None, pyarrow.Table) for verl files."""
    kind, files = _split_files(folder, split)
    if kind == "jsonl":
        return _rows_from_pairs(_read_jsonl(files[0]), split), None

    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = []
    for file in files:
        try:
            tables.append(pq.read_table(file))
        except Exception as e:  # pyarrow raises several types for corrupt files
            raise SourceFormatError(f"{file}: cannot read parquet ({type(e).__name__}: {e})") from e
    columns = set(tables[0].column_names)
    names = ", ".join(str(f) for f in files)

    if {"question", "answer"} <= columns:
        def pairs():
            for file, table in zip(files, tables):
                questions = table.column("question").to_pylist()
                answers = table.column("answer").to_pylist()
                for row, (q, a) in enumerate(zip(questions, answers)):
                    yield f"{file}, row {row}", q, a

        return _rows_from_pairs(pairs(), split), None

    if set(VERL_COLUMNS) <= columns:
        try:
            table = pa.concat_tables(tables)
        except pa.ArrowInvalid as e:
            raise SourceFormatError(f"{names}: shards have different schemas ({e})") from e
        for row, value in enumerate(table.column("reward_model").to_pylist()):
            if not isinstance(value, dict) or value.get("ground_truth") is None:
                raise SourceFormatError(f"{files[0] if len(files) == 1 else names}, row {row}: reward_model has no ground_truth")
        return None, table

    raise SourceFormatError(
        f"{names}: unrecognised columns {sorted(columns)}; expected raw GSM8K ('question', 'answer') "
        f"or verl-processed ({', '.join(VERL_COLUMNS)})"
    )


def _load_hub() -> dict[str, list[dict[str, Any]]]:
    how = (
        "Pass local files instead: gsm8k(source='path/with/train.jsonl') or "
        "`python -m rlkit.datasets.gsm8k --source DIR` (DIR holding train.jsonl/test.jsonl from "
        "https://github.com/openai/grade-school-math or the openai/gsm8k parquet files)."
    )
    try:
        import datasets
    except ImportError as e:
        raise DatasetUnavailableError(
            f"loading openai/gsm8k from the Hugging Face hub needs the 'datasets' package, which is not "
            f"installed (pip install datasets). {how}"
        ) from e
    try:
        dsd = datasets.load_dataset("openai/gsm8k", "main")
    except Exception as e:
        raise DatasetUnavailableError(
            f"could not load openai/gsm8k from the Hugging Face hub ({type(e).__name__}: {e}). "
            f"Offline or no access? {how}"
        ) from e
    out = {}
    for split in SPLITS:
        ds = dsd[split]
        pairs = ((f"openai/gsm8k[{split}] row {i}", r["question"], r["answer"]) for i, r in enumerate(ds))
        out[split] = _rows_from_pairs(pairs, split)
    return out


# --------------------------------------------------------------------------- writing


def _write_atomic(table, path: Path) -> None:
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def gsm8k(local_dir: str | os.PathLike = "~/data/gsm8k", source: str | os.PathLike | None = None,
          overwrite: bool = False) -> dict[str, str]:
    """Write GSM8K as verl-schema ``train.parquet``/``test.parquet`` into ``local_dir``.

    ``source=None``: when ``local_dir`` already holds both files in verl's schema they are used
    as they are (no download; ``overwrite=True`` downloads again); otherwise ``openai/gsm8k``
    (config ``main``) is downloaded with the ``datasets`` package, raising
    :class:`DatasetUnavailableError` when that is impossible. A ``source`` folder (see module
    doc) is always converted. Returns ``{"train": path, "test": path}`` (absolute path strings).
    """
    import pyarrow as pa

    out_dir = Path(local_dir).expanduser().resolve()

    if source is None and not overwrite:
        existing = _prepared(out_dir)
        if existing is not None:
            return existing
    if source is None:
        raw = _load_hub()
        tables = {split: None for split in SPLITS}
    else:
        src = Path(source).expanduser()
        if not src.is_dir():
            if src.is_file() and src.parent.is_dir():
                src = src.parent  # tolerate gsm8k(source="path/train.jsonl")
            else:
                raise SourceFormatError(f"GSM8K source folder not found: {src}")
        raw, tables = {}, {}
        for split in SPLITS:  # read (and validate) both splits before writing anything
            raw[split], tables[split] = _read_source_split(src, split)

    schema = _schema()
    paths = {}
    for split in SPLITS:
        table = tables[split]
        if table is None:
            table = pa.Table.from_pylist(raw[split], schema=schema)
        path = out_dir / f"{split}.parquet"
        _write_atomic(table, path)
        paths[split] = str(path)
    return paths


def _prepared(out_dir: Path) -> dict[str, str] | None:
    """Both splits already in ``out_dir`` in verl's schema, or None when a split is missing."""
    import pyarrow.parquet as pq

    paths = {split: out_dir / f"{split}.parquet" for split in SPLITS}
    if not all(p.is_file() for p in paths.values()):
        return None
    for split, path in paths.items():
        try:
            meta = pq.ParquetFile(path)
        except Exception as e:  # pyarrow raises several types for damaged files
            raise SourceFormatError(f"{path} exists but cannot be read as parquet ({type(e).__name__}: {e}); "
                                    "delete it or call gsm8k(..., overwrite=True)") from e
        missing = {"data_source", "prompt", "reward_model"} - set(meta.schema_arrow.names)
        if missing or meta.metadata.num_rows == 0:
            raise SourceFormatError(f"{path} exists but is not GSM8K in verl's schema (missing columns: "
                                    f"{sorted(missing) or 'none'}, rows: {meta.metadata.num_rows}); delete it or call "
                                    "gsm8k(..., overwrite=True)")
    return {split: str(p) for split, p in paths.items()}


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rlkit.datasets.gsm8k",
        description="Convert GSM8K to verl-schema train.parquet / test.parquet.",
    )
    parser.add_argument("--local_dir", "--local_save_dir", dest="local_dir", default="~/data/gsm8k",
                        help="output folder (default: ~/data/gsm8k)")
    parser.add_argument("--source", "--local_dataset_path", dest="source", default=None,
                        help="local folder with train.jsonl/test.jsonl or train/test parquet; "
                             "default: download openai/gsm8k from the Hugging Face hub")
    parser.add_argument("--overwrite", action="store_true",
                        help="download again even when local_dir already holds train/test parquet")
    args = parser.parse_args(argv)
    try:
        paths = gsm8k(local_dir=args.local_dir, source=args.source, overwrite=args.overwrite)
    except (DatasetUnavailableError, SourceFormatError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1

    import pyarrow.parquet as pq

    for split, path in paths.items():
        print(f"{split}: {path} ({pq.ParquetFile(path).metadata.num_rows} rows)")
    return 0


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        return self.gsm8k(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":
    sys.exit(main())
