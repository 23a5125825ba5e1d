"""SGLang engine logic that needs no GPU: the TP memory rule, the env switch, weight buckets."""
from __future__ import annotations

import pytest
import torch

from rlkit.rollout.sglang import (
    TP_CHECK_ENV,
    apply_tp_memory_check,
    hf_param_name,
    tp_memory_imbalance,
    weight_buckets,
)

GiB = 2**30


def test_imbalance_rule_matches_sglang():
    # the seen failure: rank 0 free 77.14, rank 1 free 57.14 -> 57.14 < 0.9 * 77.14 = 69.43 on rank 0 only
    assert tp_memory_imbalance([int(77.14 * GiB), int(57.14 * GiB)]) == [0]
    # 10% difference is the edge: min 90 vs 0.9 * 100 = 90 is not "below"
    assert tp_memory_imbalance([100 * GiB, 90 * GiB]) == []
    assert tp_memory_imbalance([100 * GiB, 89 * GiB]) == [0]
    # every rank holding more than min/0.9 fails
    assert tp_memory_imbalance([50 * GiB, 80 * GiB, 80 * GiB, 52 * GiB]) == [1, 2]
    assert tp_memory_imbalance([]) == []


@pytest.mark.parametrize("mode,expected_env,effective", [
    ("error", "true", "error"), ("warn", "false", "warn"), ("off", "false", "off")])
def test_env_switch(mode, expected_env, effective):
    env = {}
    assert apply_tp_memory_check(mode, env) == effective
    assert env == {TP_CHECK_ENV: expected_env}


def test_legacy_variable_keeps_its_intended_meaning():
    # verl's page: SGL_DISABLE_TP_MEMORY_INBALANCE_CHECK=True meant "do not fail". SGLang 0.5.15 would copy
    # "True" onto the ENABLE variable and turn the check on; rlkit removes it and warns instead.
    env = {"SGL_DISABLE_TP_MEMORY_INBALANCE_CHECK": "True"}
    assert apply_tp_memory_check("error", env) == "warn"
    assert env == {TP_CHECK_ENV: "false"}
    env = {"SGL_DISABLE_TP_MEMORY_INBALANCE_CHECK": "false"}
    assert apply_tp_memory_check("error", env) == "error" and env == {TP_CHECK_ENV: "true"}
    env = {"SGLANG_DISABLE_TP_MEMORY_INBALANCE_CHECK": "1"}
    assert apply_tp_memory_check("off", env) == "off" and env == {TP_CHECK_ENV: "false"}


def test_bad_mode():
    with pytest.raises(ValueError, match="error, warn or off"):
        apply_tp_memory_check("maybe", {})


def test_param_names_lose_wrapper_prefixes():
    assert hf_param_name("_fsdp_wrapped_module.model.layers.0._checkpoint_wrapped_module.mlp.up_proj.weight") == \
        "model.layers.0.mlp.up_proj.weight"
    assert hf_param_name("model.embed_tokens.weight") == "model.embed_tokens.weight"


def test_weight_buckets_respect_size_and_cast():
    tensors = [(f"w{i}", torch.ones(256, dtype=torch.float32)) for i in range(5)]  # 512 bytes each in bf16
    buckets = list(weight_buckets(tensors, bucket_bytes=1024, dtype=torch.bfloat16, device="cpu"))
    assert [[n for n, _ in b] for b in buckets] == [["w0", "w1"], ["w2", "w3"], ["w4"]]
    assert all(t.dtype == torch.bfloat16 for b in buckets for _, t in b)
    big = list(weight_buckets([("a", torch.ones(10)), ("big", torch.ones(4096)), ("c", torch.ones(10))], 100,
                              torch.float32, "cpu"))
    assert [[n for n, _ in b] for b in big] == [["a"], ["big"], ["c"]]  # an oversized tensor goes alone
