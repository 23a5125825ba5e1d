"""Record a real TP=2 memory trace with a deliberately induced imbalance (needs 2 GPUs + SGLang + Ray).

Another process holds HOG_GIB on the second GPU. With ``tp_memory_check=error`` rlkit's pre-flight
refuses to start the engine and explains why; with ``warn`` the run goes ahead and every phase of
two PPO steps is snapshotted on both GPUs. Set RLKIT_GPU_OUT=DIR to keep the trace
(``tp2_imbalance_trace.json``), which notebooks/02_memory_balance.ipynb and the README plots read.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu
HOG_GIB = 24


def _two_gpus():
    import torch

    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs")


@pytest.fixture
def toy_files(tmp_path):
    import pandas as pd
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from tiny import char_tokenizer

    tok = char_tokenizer()
    cfg = Qwen2Config(vocab_size=128, hidden_size=896, num_hidden_layers=24, num_attention_heads=14,
                      num_key_value_heads=2, intermediate_size=4864, max_position_embeddings=2048,
                      tie_word_embeddings=True, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    Qwen2ForCausalLM(cfg).save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    rows = [{"data_source": "toy/digits", "prompt": [{"role": "user", "content": f"count to {i}"}], "ability": "toy",
             "reward_model": {"style": "rule", "ground_truth": str(i)}, "extra_info": {"split": "train", "index": i}}
            for i in range(64)]
    pd.DataFrame(rows).to_parquet(tmp_path / "train.parquet")
    pd.DataFrame(rows[:8]).to_parquet(tmp_path / "test.parquet")
    return tmp_path


def digits(data_source, solution_str, ground_truth, extra_info=None):
    return sum(c.isdigit() for c in solution_str) / max(len(solution_str), 1)


def overrides(d, mode):
    return [f"data.train_files={d}/train.parquet", f"data.val_files={d}/test.parquet",
            "data.train_batch_size=8", "data.max_prompt_length=64", "data.max_response_length=64",
            f"actor_rollout_ref.model.path={d}/model", "actor_rollout_ref.rollout.name=sglang",
            "actor_rollout_ref.rollout.tensor_model_parallel_size=2", "actor_rollout_ref.rollout.n=2",
            "actor_rollout_ref.rollout.gpu_memory_utilization=0.3", "actor_rollout_ref.rollout.enforce_eager=True",
            f"actor_rollout_ref.rollout.tp_memory_check={mode}",
            "actor_rollout_ref.actor.ppo_mini_batch_size=4", "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4",
            "critic.ppo_micro_batch_size_per_gpu=4", "trainer.n_gpus_per_node=2", "trainer.logger=['console']"]


def test_record_tp2_trace_with_induced_imbalance(toy_files):
    _two_gpus()
    pytest.importorskip("sglang")
    ray = pytest.importorskip("ray")
    from rlkit import Experiment, PPOConfig
    from rlkit.diagnostics.memory import save_trace

    hog = subprocess.Popen(
        [sys.executable, "-c", f"import torch,time; x=torch.empty({HOG_GIB}<<30, dtype=torch.uint8, device='cuda'); "
         "x.fill_(1); torch.cuda.synchronize(); print('ready', flush=True); time.sleep(900)"],
        env=dict(os.environ, CUDA_VISIBLE_DEVICES="1"), stdout=subprocess.PIPE, text=True)
    try:
        assert hog.stdout.readline().strip() == "ready"
        refused = None
        try:
            Experiment(PPOConfig.from_overrides(overrides(toy_files, "error")), reward_fn=digits)
        except Exception as e:  # the pre-flight's report, raised in the worker before SGLang could kill it
            refused = str(e)
        assert refused is not None and "imbalance" in refused.lower()

        t = time.time()
        exp = Experiment(PPOConfig.from_overrides(overrides(toy_files, "warn")), reward_fn=digits)
        startup = time.time() - t
        meta = {
            "what": f"rlkit PPO, rollout.name=sglang, TP=2 on 2 GPUs, another process holding {HOG_GIB} GiB on GPU 1",
            "gpu": __import__("torch").cuda.get_device_name(0), "tp_size": 2, "hog_gib": HOG_GIB,
            "model": "Qwen2.5-0.5B layer shapes, 128-token vocabulary, random weights",
            "refused_with_tp_memory_check_error": refused, "startup_s": startup,
        }
        out = os.environ.get("RLKIT_GPU_OUT")
        try:
            results = [exp.step() for _ in range(2)]
            meta["step_seconds"] = [r.metrics["timing_s/step"] for r in results]
            meta["snapshot_seconds"] = [r.metrics["timing_s/memory_snapshots"] for r in results]
        finally:  # keep whatever was recorded, also when a step fails
            preflight = exp.memory_balance(phase="engine_preflight")
            latest = exp.memory_balance()
            meta.update(balance_at_engine_start=preflight.to_dict(), balance_latest=latest.to_dict())
            if out:
                save_trace(Path(out) / "tp2_imbalance_trace.json", exp.memory_records, meta=meta)
        mem = exp.memory
        print(str(preflight))
        print(str(latest))
        print(json.dumps({k: meta[k] for k in ("startup_s", "step_seconds", "snapshot_seconds")}))
        exp.shutdown()
    finally:
        hog.kill()
        ray.shutdown()

    assert not preflight.ok and not latest.ok  # the hog keeps the group unbalanced
    assert set(mem["gpu"]) >= {0, 1} and {"gen", "update_actor", "wake", "sleep"} <= set(mem["phase"])
