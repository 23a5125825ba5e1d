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


@pytest.fixture(scope="session")
def verl_091_src() -> str:
    """The unpacked verl 0.9.1 wheel at RLKIT_VERL_SRC (as .ci/run makes it): the folder holding ``verl/``."""
    src = os.environ.get("RLKIT_VERL_SRC")
    if not src:
        pytest.skip("set RLKIT_VERL_SRC to an unpacked verl 0.9.1 (the folder holding verl/)")
    if (Path(src) / "verl" / "version" / "version").read_text().strip() != "0.9.1":
        pytest.fail(f"RLKIT_VERL_SRC={src} is not verl 0.9.1")
    return src


@pytest.fixture(scope="session")
def verl_091_config(verl_091_src) -> dict:
    """verl 0.9.1's whole config tree with its defaults: its generated ``ppo_trainer.yaml``, as a plain dict."""
    import yaml

    path = Path(verl_091_src) / "verl" / "trainer" / "config" / "_generated_ppo_trainer.yaml"
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="session")
def verl_091(verl_091_src):
    """verl 0.9.1's own code, for the parity tests: :func:`verl_091_src` with the packages its loss modules
    import (tensordict, codetiming, orjson, datasets; .ci/run installs them)."""
    import importlib

    src = verl_091_src

    def installed(name):  # not a folder of the same name on the path (tests/datasets is a namespace package here)
        spec = importlib.util.find_spec(name)
        return spec is not None and spec.origin not in (None, "namespace")

    missing = [m for m in ("tensordict", "codetiming", "orjson", "datasets") if not installed(m)]
    if missing:
        pytest.skip(f"verl 0.9.1's loss modules need {missing}: pip install {' '.join(missing)}")
    if src not in sys.path:
        sys.path.append(src)
    import verl  # noqa: F401

    assert Path(verl.__file__).resolve().is_relative_to(Path(src).resolve()), f"another verl is installed: {verl.__file__}"
    return src


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
