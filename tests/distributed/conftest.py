"""Fixtures shared by the Ray tests of this folder."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray of 2 CPUs for one test module (enough for 2 CPU ranks), shut down after it."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """The tiny character-level Qwen2 and its toy digit-prompt parquet (tests/tiny.py)."""
    from tiny import char_tokenizer, make_tiny_model, toy_parquet

    return make_tiny_model(tmp_path_factory.mktemp("m"), char_tokenizer()), toy_parquet(tmp_path_factory.mktemp("d"))
