"""Shared fixtures. Real data and tokenizers come from ../shared (never copied into the project)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/tiny.py helpers
SHARED = Path(os.environ.get("RLKIT_SHARED_DIR", REPO.parent / "shared"))


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} not found (set RLKIT_SHARED_DIR to the folder holding data/ and tokenizers/)")
    return path


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return _need(SHARED)


@pytest.fixture(scope="session")
def gsm8k_source() -> Path:
    """Folder with the original openai/grade-school-math train.jsonl / test.jsonl."""
    return _need(SHARED / "data" / "gsm8k")


@pytest.fixture(scope="session")
def qwen_tokenizer_dir() -> Path:
    return _need(SHARED / "tokenizers" / "qwen2.5")


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # pragma: no cover - torch is a hard dependency
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
