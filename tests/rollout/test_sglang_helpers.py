"""SGLang engine logic that needs no GPU: the env switch, weight buckets, and the TP memory pre-flight
and OOM messages on fake NVML readings with a fake ``sglang`` (SGLang's rule itself is tested in
tests/diagnostics/test_balance.py)."""
from __future__ import annotations

import types
import warnings

import pytest
import torch

from rlkit.diagnostics import memory
from rlkit.diagnostics.balance import TPMemoryImbalanceError, TPMemoryImbalanceWarning
from rlkit.rollout import sglang as sglang_mod
from rlkit.rollout.sglang import (
    TP_CHECK_ENV,
    SGLangRollout,
    apply_tp_memory_check,
    hf_param_name,
    weight_buckets,
)

GiB = 2**30


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


# ------------------------------------------------------------------ pre-flight and OOM messages (fakes)
def nvml_gpus(*free_gib):
    return [{"name": "NVIDIA H100 80GB HBM3", "uuid": f"GPU-{i:04d}-0000", "total": 80 * GiB,
             "used": int((80 - f) * GiB)} for i, f in enumerate(free_gib)]


@pytest.fixture
def fake_gpus(monkeypatch):
    """``fake_gpus(77, 57)``: NVML reports these free GiB per GPU; torch sees as many GPUs (no context)."""
    from diagnostics.test_memory import use_nvml  # tests/ is on sys.path (conftest)

    def install(*free_gib):
        memory._reset_nvml_cache()
        use_nvml(monkeypatch, nvml_gpus(*free_gib))
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: len(free_gib))

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    yield install
    memory._reset_nvml_cache()


@pytest.fixture
def fake_sglang(monkeypatch):
    """A stand-in ``sglang`` whose ``Engine`` records its kwargs; TP switch variables restored afterwards."""
    started = []

    class Engine:
        def __init__(self, **kwargs):
            started.append(kwargs)

        def release_memory_occupation(self, tags):
            pass

    monkeypatch.setattr(sglang_mod, "import_sglang", lambda: types.SimpleNamespace(Engine=Engine))
    for name in (TP_CHECK_ENV, *sglang_mod.LEGACY_TP_CHECK_ENVS):
        monkeypatch.delenv(name, raising=False)
    return started


def test_engine_refuses_to_start_on_imbalanced_tp_group(fake_gpus, fake_sglang, tmp_path):
    """The engine runs the balance report's pre-flight itself, before SGLang could kill its launcher."""
    fake_gpus(77.14, 57.14)
    with pytest.raises(TPMemoryImbalanceError, match="GPU 1") as info:
        SGLangRollout(str(tmp_path), tp_size=2, tp_memory_check="error")
    assert fake_sglang == []  # SGLang never started
    assert info.value.report.failing == [0] and info.value.report.groups[0].short_ranks == [1]


def test_engine_warns_and_keeps_the_preflight_reading(fake_gpus, fake_sglang, tmp_path):
    fake_gpus(77.14, 57.14)
    with pytest.warns(TPMemoryImbalanceWarning, match="12.29"):
        eng = SGLangRollout(str(tmp_path), tp_size=2, tp_memory_check="warn")
    assert len(fake_sglang) == 1 and fake_sglang[0]["tp_size"] == 2
    snap = eng.preflight_snapshot
    assert (snap.phase, snap.event, snap.source) == ("engine_preflight", "start", "nvml")
    assert [round(g.free / GiB, 2) for g in snap.gpus] == [77.14, 57.14]


def test_engine_preflight_off_single_gpu_and_balanced(fake_gpus, fake_sglang, tmp_path):
    fake_gpus(77.14, 57.14)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(SGLangRollout(str(tmp_path), tp_size=2, tp_memory_check="off").preflight_snapshot.gpus) == 2
        # TP=1: nothing to compare; only the engine's own GPU is read
        assert [g.index for g in SGLangRollout(str(tmp_path), tp_size=1).preflight_snapshot.gpus] == [0]
        fake_gpus(80, 79)
        SGLangRollout(str(tmp_path), tp_size=2, tp_memory_check="error")
    assert len(fake_sglang) == 3


def test_engine_preflight_needs_tp_size_gpus(fake_gpus, fake_sglang, tmp_path):
    fake_gpus(80)
    with pytest.raises(RuntimeError, match=r"tensor_model_parallel_size=2 but this worker sees 1 GPU\(s\)"):
        SGLangRollout(str(tmp_path), tp_size=2)
    assert fake_sglang == []


def test_oom_message_names_each_gpu(fake_gpus):
    fake_gpus(77.14, 57.14)
    msg = sglang_mod._oom_message("starting", 0.5)
    assert "  GPU 0: free 77.14 GiB, used 2.86 GiB of 80.00 GiB\n  GPU 1: free 57.14 GiB, used 22.86 GiB" in msg
    assert "gpu_memory_utilization (now 0.5)" in msg


def _engine_from(overrides, tmp_path):
    from rlkit.config import PPOConfig

    cfg = PPOConfig.from_overrides(["actor_rollout_ref.rollout.name=sglang",
                                    "actor_rollout_ref.rollout.tensor_model_parallel_size=1", *overrides], check=False)
    return SGLangRollout.from_config(cfg, str(tmp_path))


def test_max_num_seqs_caps_running_requests_and_sizes_the_decode_graphs(fake_gpus, fake_sglang, tmp_path):
    """GRPO's 64 x 5 = 320 rows exceed SGLang's own graph limit (256 on an H100/H200): without
    cuda_graph_max_bs_decode the whole rollout would decode eagerly."""
    fake_gpus(80)
    _engine_from([], tmp_path)  # verl's default max_num_seqs=1024
    _engine_from(["actor_rollout_ref.rollout.max_num_seqs=320"], tmp_path)
    _engine_from(["actor_rollout_ref.rollout.max_num_seqs=320", "actor_rollout_ref.rollout.enforce_eager=True"],
                 tmp_path)
    assert [(k.get("max_running_requests"), k.get("cuda_graph_max_bs_decode"), k["disable_cuda_graph"])
            for k in fake_sglang] == [(1024, 1024, False), (320, 320, False), (320, None, True)]


def test_engine_kwargs_sglang_win_over_max_num_seqs(fake_gpus, fake_sglang, tmp_path):
    fake_gpus(80)
    _engine_from(["+actor_rollout_ref.rollout.engine_kwargs.sglang.cuda_graph_max_bs_decode=64",
                  "+actor_rollout_ref.rollout.engine_kwargs.sglang.max_running_requests=128"], tmp_path)
    assert (fake_sglang[0]["max_running_requests"], fake_sglang[0]["cuda_graph_max_bs_decode"]) == (128, 64)
