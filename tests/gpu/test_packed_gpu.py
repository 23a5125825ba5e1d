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


def test_compiled_layers_match_eager_on_gpu_and_are_timed():
    """compile_layers (Inductor) on a packed bf16 model: response log-probs and gradients over micro-batches
    of different token counts match eager to bf16 noise, the changing lengths do not recompile (dynamic
    shapes), and one forward+backward of the 0.5B shape is timed both ways."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    from rlkit.training.fsdp import compile_layers
    from rlkit.training.worker import response_log_probs

    small = dict(vocab_size=1000, hidden_size=256, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2,
                 intermediate_size=512)
    batches = [_batch(lens, 1000, seed=i).to("cuda") for i, lens in
               enumerate([[(30, 50), (7, 3)], [(120, 200), (64, 1), (5, 90)], [(11, 13)] * 7, [(200, 300)]])]
    eager = _packed(_model(small, torch.bfloat16).train())
    comp = copy.deepcopy(eager)
    torch._dynamo.reset()
    counters.clear()
    assert compile_layers(comp) == 4
    gaps, grad_rel, graphs = [], [], []
    for b in batches:
        m = b["response_mask"]
        out = {}
        for name, mdl in (("eager", eager), ("compiled", comp)):
            mdl.zero_grad(set_to_none=True)
            lp = response_log_probs(mdl, b, 1.0, packed=True)[0]
            (lp * m).sum().backward()
            out[name] = (lp.detach(), {k: p.grad.float() for k, p in mdl.named_parameters()})
        gaps.append((out["eager"][0] - out["compiled"][0]).abs()[m.bool()].mean().item())
        grad_rel.append(max(((out["eager"][1][k] - g).norm() / out["eager"][1][k].norm().clamp_min(1e-12)).item()
                            for k, g in out["compiled"][1].items()))
        graphs.append(int(counters["stats"]["unique_graphs"]))
    result = {"card": torch.cuda.get_device_name(0), "torch": torch.__version__,
              "compiled_vs_eager_logprob_gap_mean": gaps, "compiled_vs_eager_grad_rel_max": grad_rel,
              "graphs_compiled_after_each_batch": graphs}
    print(json.dumps(result, indent=1))
    assert max(gaps) < 0.05 and max(grad_rel) < 0.1, result
    assert graphs[0] >= 1 and graphs[-1] == graphs[0], result  # dynamic shapes: new token counts do not recompile

    qwen05 = dict(vocab_size=151936, hidden_size=896, num_hidden_layers=24, num_attention_heads=14,
                  num_key_value_heads=2, intermediate_size=4864, tie_word_embeddings=True)
    g = torch.Generator().manual_seed(1)
    big = [_batch([(int(p), 512) for p in torch.randint(100, 250, (16,), generator=g)], 151936, seed=s).to("cuda")
           for s in range(2)]
    model = _packed(_model(qwen05, torch.bfloat16).train())
    compiled = copy.deepcopy(model)
    compile_layers(compiled)

    def step(mdl, b):
        mdl.zero_grad(set_to_none=True)
        (response_log_probs(mdl, b, 1.0, packed=True)[0] * b["response_mask"]).sum().backward()

    t0 = time.perf_counter()
    for b in big:  # two token counts: compiles once (dynamic) before timing
        step(compiled, b)
    torch.cuda.synchronize()
    result["compile_warmup_s"] = time.perf_counter() - t0
    result["fwd_bwd_s_packed_eager"] = _time(lambda: step(model, big[0]))
    result["fwd_bwd_s_packed_compiled"] = _time(lambda: step(compiled, big[0]))
    print(json.dumps(result, indent=1))
    if os.environ.get("RLKIT_GPU_OUT"):
        Path(os.environ["RLKIT_GPU_OUT"], "compiled_layers_gpu.json").write_text(json.dumps(result, indent=1))
