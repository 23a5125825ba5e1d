"""Packed forward passes (use_remove_padding) equal padded ones and one-row-at-a-time ones.

fp64 on the CPU: the padded pass masks with sdpa, the packed one runs causal sdpa per sequence;
both must agree to rounding (measured: 0 to 1e-15 in fp64)."""
from __future__ import annotations

import copy

import pytest
import torch

from rlkit.datasets import RolloutBatch
from rlkit.training import models, packed_attention
from rlkit.training.worker import response_log_probs, response_values


def batch() -> RolloutBatch:
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 60, (n,), generator=g).tolist() for n in (3, 1, 5, 2)]
    responses = [torch.randint(3, 60, (n,), generator=g).tolist() for n in (4, 1, 2, 6)]
    return RolloutBatch.from_generation(prompts, responses, None, pad_id=0)


def tiny(kind: str):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    dims = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                intermediate_size=64)
    model = Qwen2ForCausalLM(Qwen2Config(**dims)) if kind == "qwen2" else LlamaForCausalLM(LlamaConfig(**dims))
    return model.double().eval()


def packed_copy(model):
    out = copy.deepcopy(model)
    name = packed_attention.register()
    for m in out.modules():
        if hasattr(m, "config"):
            m.config._attn_implementation = name
    return out


@pytest.mark.parametrize("kind", ["qwen2", "llama"])
def test_packed_log_probs_equal_padded_and_one_row_at_a_time(kind):
    b = batch()
    model = tiny(kind)
    packed = packed_copy(model)
    mask = b["response_mask"]
    with torch.no_grad():
        lp, ent = response_log_probs(model, b, 0.7, with_entropy=True)
        before = packed_attention.calls()
        lp_p, ent_p = response_log_probs(packed, b, 0.7, with_entropy=True, packed=True)
        assert packed_attention.calls() == before + 2  # one call per layer
        assert (lp_p * (1 - mask)).abs().max() == 0  # nothing outside the responses
        assert (lp - lp_p).mul(mask).abs().max() < 1e-12 and (ent - ent_p).mul(mask).abs().max() < 1e-12
        for i in range(len(b)):  # each row alone, no padding at all
            ids = b["input_ids"][i][b["attention_mask"][i].bool()]
            n = int(mask[i].sum())
            logp = torch.log_softmax(model(input_ids=ids[None]).logits[0] / 0.7, -1)
            alone = logp[-n - 1 : -1].gather(-1, ids[-n:, None])[:, 0]
            assert (alone - lp_p[i, :n]).abs().max() < 1e-12


def test_packed_gradients_equal_padded():
    b = batch()
    model = tiny("qwen2")
    packed = packed_copy(model)
    mask = b["response_mask"]
    weights = torch.randn(mask.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    (response_log_probs(model, b, 1.0)[0] * mask * weights).sum().backward()
    (response_log_probs(packed, b, 1.0, packed=True)[0] * mask * weights).sum().backward()
    worst = max((p.grad - q.grad).abs().max().item() for p, q in zip(model.parameters(), packed.parameters()))
    assert worst < 1e-12


def test_packed_values_equal_padded():
    from transformers import Qwen2Config, Qwen2Model

    torch.manual_seed(0)
    backbone = Qwen2Model(Qwen2Config(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, intermediate_size=64))
    critic = models.ValueModel(backbone, 32, seed=3).double().eval()
    packed = packed_copy(critic)
    b = batch()
    with torch.no_grad():
        v = response_values(critic, b)
        v_p = response_values(packed, b, packed=True)
    assert v.abs().max() > 0 and (v - v_p).abs().max() < 1e-12


def test_a_model_that_drops_the_boundaries_is_refused():
    class Dropping(torch.nn.Module):  # a wrapper that does not pass the attention keywords on
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, position_ids, attention_mask, logits_to_keep, use_cache, **ignored):
            return self.inner(input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask,
                              logits_to_keep=logits_to_keep, use_cache=use_cache)

    with pytest.raises(packed_attention.PackedAttentionNotUsed, match="set use_remove_padding=False"):
        response_log_probs(Dropping(packed_copy(tiny("qwen2"))), batch(), 1.0, packed=True)


def test_loading_packed_with_another_attention_is_refused(tmp_path):
    from tiny import char_tokenizer, make_tiny_model

    path = make_tiny_model(tmp_path / "m", char_tokenizer())
    model = models.load_causal_lm(path, torch.float32, packed=True)
    assert model.config._attn_implementation == "rlkit_packed"
    with pytest.raises(ValueError, match="attn_implementation='eager'; drop one of the two"):
        models.load_causal_lm(path, torch.float32, {"attn_implementation": "eager"}, packed=True)
