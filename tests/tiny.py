"""Tiny randomly initialised models for tests (real transformers checkpoints on disk, seconds to run), and the
plain-loop references the loop-vs-vectorised tests share."""
from __future__ import annotations

import string

CHAR_TEMPLATE = (
    "{% for m in messages %}<|user|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def char_tokenizer():
    """A character-level fast tokenizer (~100 tokens) with a chat template and an eos."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|pad|>", "<|eos|>", "<|user|>", "<|assistant|>", "<|unk|>"]
    chars = list(string.ascii_letters + string.digits + string.punctuation + " \n")
    vocab = {t: i for i, t in enumerate(specials + chars)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|unk|>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # one char each
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<|pad|>", eos_token="<|eos|>", unk_token="<|unk|>",
        additional_special_tokens=["<|user|>", "<|assistant|>"],
    )
    fast.chat_template = CHAR_TEMPLATE
    return fast


def make_tiny_model(out_dir, tokenizer, hidden=32, layers=2, heads=4, kv_heads=2, intermediate=64, seed=0) -> str:
    """Save a random Qwen2 causal LM sized to ``tokenizer`` plus the tokenizer into ``out_dir``."""
    from rlkit.training.models import save_tiny_random_model

    return save_tiny_random_model(out_dir, tokenizer, hidden=hidden, layers=layers, heads=heads, kv_heads=kv_heads,
                                  intermediate=intermediate, seed=seed)


def toy_parquet(out_dir, n_train: int = 32, n_test: int = 4):
    """verl-schema train/test parquet with short prompts ``count i`` (data_source ``toy/digits``)."""
    from pathlib import Path

    import pandas as pd

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = [{"data_source": "toy/digits", "prompt": [{"role": "user", "content": f"count {i}"}], "ability": "toy",
             "reward_model": {"style": "rule", "ground_truth": ""}, "extra_info": {"split": "train", "index": i}}
            for i in range(n_train)]
    pd.DataFrame(rows).to_parquet(out / "train.parquet")
    pd.DataFrame(rows[:n_test]).to_parquet(out / "test.parquet")
    return out


def agg_loss_loop(loss: list[list[float]], mask: list[list[float]], mode: str) -> float:
    """Python-loop reference of ``rlkit.algos.agg_loss`` (lists in, a float out) for the loop-vs-vectorised tests."""
    rows = [[v for v, k in zip(lr, mr) if k] for lr, mr in zip(loss, mask)]
    toks = [v for r in rows for v in r]
    nonempty = [r for r in rows if r]
    if mode == "token-mean":
        return sum(toks) / len(toks) if toks else 0.0
    if mode == "seq-mean-token-sum":
        return sum(sum(r) for r in nonempty) / len(nonempty) if nonempty else 0.0
    if mode == "seq-mean-token-mean":
        return sum(sum(r) / len(r) for r in nonempty) / len(nonempty) if nonempty else 0.0
    if mode == "seq-mean-token-sum-norm":  # per-sequence sums' mean over the response length
        return sum(sum(r) for r in nonempty) / len(nonempty) / len(loss[0]) if nonempty else 0.0
    raise ValueError(mode)
