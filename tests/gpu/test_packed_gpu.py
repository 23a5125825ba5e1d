"""Packed sequences on the GPU: torch's variable-length flash kernel against padded sdpa, in bf16.

The CPU tests (tests/training/test_packed_attention.py) prove packed == padded in fp64 with sdpa run
sequence by sequence; on CUDA the packed path takes ``torch.nn.attention.varlen.varlen_attn`` where
this torch has it. Both sides compute in bf16, so they agree to bf16 noise: the check is that the
mean gap is at that level (a wrong mask or wrong boundaries moves log-probs by whole nats), and that
the fp32 sequence-by-sequence fallback agrees with the bf16 kernel. Also times one forward+backward of
a 0.5B-shaped model on 16 sequences both ways (the numbers go to RLKIT_GPU_OUT, not into asserts).

Set RLKIT_GPU_OUT=DIR to keep the numbers.
"""
from __future__ import annotations

import copy
import json
import os
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.gpu


def _batch(lengths, vocab, seed=0):
    from rlkit.datasets import RolloutBatch

    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(3, vocab, (p,), generator=g).tolist() for p, _ in lengths]
    responses = [torch.randint(3, vocab, (r,), generator=g).tolist() for _, r in lengths]
    return RolloutBatch.from_generation(prompts, responses, None, pad_id=0)


def _model(dims, dtype):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    return Qwen2ForCausalLM(Qwen2Config(**dims)).to("cuda", dtype)


def _packed(model):
    from rlkit.training import packed_attention

    out = copy.deepcopy(model)
    out.config._attn_implementation = packed_attention.register()
    return out


def _time(fn, reps=3):
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / reps


def test_varlen_kernel_matches_padded_sdpa_and_is_timed():
    from rlkit.training import packed_attention
    from rlkit.training.worker import response_log_probs

    assert torch.cuda.is_available()
    kernel = packed_attention._varlen()
    small = dict(vocab_size=1000, hidden_size=256, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2,
                 intermediate_size=512)
    b = _batch([(30, 50), (7, 3), (120, 200), (64, 1), (5, 90)], 1000).to("cuda")
    mask = b["response_mask"].bool()
    model = _model(small, torch.bfloat16).eval()
    with torch.no_grad():
        lp_pad = response_log_probs(model, b, 1.0)[0]
        lp_packed = response_log_probs(_packed(model), b, 1.0, packed=True)[0]
        lp_fp32 = response_log_probs(_packed(_model(small, torch.float32).eval()), b, 1.0, packed=True)[0]
    gap = (lp_pad - lp_packed).abs()[mask]
    gap32 = (lp_fp32 - lp_packed).abs()[mask]
    result = {"card": torch.cuda.get_device_name(0), "torch": torch.__version__,
              "varlen_kernel": None if kernel is None else kernel[1],
              "bf16_packed_vs_padded_gap_mean": gap.mean().item(), "bf16_packed_vs_padded_gap_max": gap.max().item(),
              "bf16_kernel_vs_fp32_by_sequence_gap_mean": gap32.mean().item()}
    assert gap.mean().item() < 0.05 and gap32.mean().item() < 0.05, result

    # a 0.5B shape: 16 sequences of GSM8K-like lengths (prompt ~100-250, response 512), forward + backward
    qwen05 = dict(vocab_size=151936, hidden_size=896, num_hidden_layers=24, num_attention_heads=14,
                  num_key_value_heads=2, intermediate_size=4864, tie_word_embeddings=True)
    g = torch.Generator().manual_seed(1)
    lengths = [(int(p), 512) for p in torch.randint(100, 250, (16,), generator=g)]
    big = _batch(lengths, 151936).to("cuda")
    model = _model(qwen05, torch.bfloat16).train()
    packed = _packed(model)
    m = big["response_mask"]

    def step(mdl, is_packed):
        mdl.zero_grad(set_to_none=True)
        (response_log_probs(mdl, big, 1.0, packed=is_packed)[0] * m).sum().backward()

    result["fwd_bwd_s_padded"] = _time(lambda: step(model, False))
    result["fwd_bwd_s_packed"] = _time(lambda: step(packed, True))
    result["tokens_real"] = int(big["attention_mask"].sum())
    result["tokens_padded"] = int(big["attention_mask"].numel())
    print(json.dumps(result, indent=1))
    if os.environ.get("RLKIT_GPU_OUT"):
        Path(os.environ["RLKIT_GPU_OUT"], "packed_attention_gpu.json").write_text(json.dumps(result, indent=1))
