"""rlkit.diagnostics.flops: the FLOP count against a real model's weights, MFU by hand per phase and per step,
the card peaks and a model folder's dimensions."""
from __future__ import annotations

import json

import pytest

from rlkit.diagnostics import flops


def test_weights_per_token_counts_the_models_matmul_weights():
    """Loop over a real (tiny, untied) Qwen2's parameters: every weight except the input embedding."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    dims = dict(hidden_size=48, num_hidden_layers=3, num_attention_heads=6, num_key_value_heads=2,
                intermediate_size=80, vocab_size=97)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(tie_word_embeddings=False, **dims))
    counted = sum(p.numel() for name, p in model.named_parameters() if "embed_tokens" not in name)
    assert flops.weights_per_token(dims) == counted
    # the critic: the same body, a value head of hidden_size weights and one bias instead of the LM head
    assert flops.weights_per_token(dims, head="value") == counted - 97 * 48 + 48 + 1


def test_phase_mfu_by_hand():
    cfg = dict(hidden_size=2, num_hidden_layers=1, num_attention_heads=1, num_key_value_heads=1,
               intermediate_size=2, vocab_size=3)
    # 2 sequences, 8 tokens: actor forward 864 FLOPs (see forward_flops); critic N = 40 + 3 = 43
    row = {"perf/total_num_tokens": 8, "timing_s/old_log_prob": 2.0, "timing_s/update_actor": 4.0,
           "timing_s/update_critic": 1.0, "timing_s/gen": 9.0}
    out = flops.phase_mfu(row, cfg, rows_per_step=2, peak_flops=100.0, epochs=2)
    assert set(out) == {"old_log_prob", "update_actor", "update_critic"}  # gen is not a training phase
    assert out["old_log_prob"]["mfu"] == pytest.approx(864 / 2.0 / 100)
    assert out["update_actor"]["mfu"] == pytest.approx(2 * 3 * 864 / 4.0 / 100)  # 2 epochs x (fwd + bwd)
    critic_fwd = 2 * 43 * 8 + 128
    assert out["update_critic"]["tflops"] == pytest.approx(2 * 3 * critic_fwd / 1e12)


def test_step_mfu_names_verls_metrics_and_divides_by_every_gpu():
    cfg = dict(hidden_size=2, num_hidden_layers=1, num_attention_heads=1, num_key_value_heads=1,
               intermediate_size=2, vocab_size=3)
    # actor forward 864 FLOPs, critic forward 2 * 43 * 8 + 128 = 816 (test above); 2 GPUs of peak 100
    row = {"perf/total_num_tokens": 8, "timing_s/old_log_prob": 2.0, "timing_s/update_actor": 4.0,
           "timing_s/update_critic": 1.0, "timing_s/values": 1.0, "timing_s/ref": 1.0}
    out = flops.step_mfu(row, cfg, rows_per_step=2, peak=100.0, n_gpus=2, actor_epochs=2, critic_epochs=1)
    assert out == pytest.approx({"perf/mfu/actor": 2 * 3 * 864 / 4.0 / 200, "perf/mfu/actor_infer": 864 / 2.0 / 200,
                                 "perf/mfu/critic": 3 * 816 / 1.0 / 200})  # ref and values: verl has no key


def test_peak_flops_and_model_dims(tmp_path):
    assert flops.peak_flops("NVIDIA H200") == 989.4e12 and flops.peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert flops.peak_flops(None) is None and flops.peak_flops("NVIDIA GeForce RTX 4090") is None
    assert flops.model_dims(tmp_path) is None  # no config.json
    cfg = dict(hidden_size=8, num_hidden_layers=2, num_attention_heads=2, intermediate_size=16, vocab_size=11,
               model_type="llama")
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert flops.model_dims(tmp_path) == dict(hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                                              num_key_value_heads=2, intermediate_size=16, vocab_size=11)
    (tmp_path / "config.json").write_text(json.dumps({"text_config": cfg}))  # nested: not read
    assert flops.model_dims(tmp_path) is None
