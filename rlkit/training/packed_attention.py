"""Attention over packed sequences (``use_remove_padding``) for Hugging Face models, with sdpa kernels.

Packing puts the real tokens of a micro-batch one after another in a single row (see
:class:`rlkit.datasets.packing.PackedLayout`); each sequence must then attend only to itself. This
module registers one attention function with transformers (``attn_implementation="rlkit_packed"``):

* called with ``cu_seq_lens_q`` (the sequence boundaries, passed as keyword arguments of the model's
  forward, which transformers hands down to every attention call - the same keywords its own
  flash-attention path uses), it runs causal attention within each sequence: torch's
  variable-length flash kernel (``torch.nn.attention.varlen.varlen_attn``) on CUDA when this torch
  has it, else ``scaled_dot_product_attention`` with ``is_causal=True`` sequence by sequence;
* called without them (generation, padded batches), it is transformers' ``sdpa`` attention, mask and all.

No ``(N, N)`` mask is ever built: the mask function registered beside the attention returns no mask
when the model is called without an attention mask (a packed row has no padding), and sdpa's mask
otherwise. flash-attn (the package) is not needed; verl's
``use_remove_padding`` uses it, and it has no build for every torch/CUDA pair.

>>> from rlkit.training.packed_attention import ATTN_IMPLEMENTATION, register
>>> register()
'rlkit_packed'
"""
from __future__ import annotations

import functools
import inspect

import torch

__all__ = ["ATTN_IMPLEMENTATION", "register", "packed_forward_kwargs", "PackedAttentionNotUsed", "calls"]

ATTN_IMPLEMENTATION = "rlkit_packed"
_CALLS = [0]  # packed attention calls so far: lets a caller check the model passed the boundaries down


class PackedAttentionNotUsed(RuntimeError):
    """The model's forward did not hand the sequence boundaries to its attention layers."""


def calls() -> int:
    """How many packed attention calls have run in this process (a counter; compare before and after)."""
    return _CALLS[0]


@torch.compiler.disable
def _count() -> None:
    # kept out of compiled graphs (a graph break in a compiled layer) so that the counter moves on every
    # call; traced, it would be baked in as a constant and recompile the layer at each call
    _CALLS[0] += 1


@functools.lru_cache(maxsize=1)
def _varlen():
    """(varlen_attn, its keyword style) when this torch has the variable-length kernel, else None."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    params = inspect.signature(varlen_attn).parameters
    if "window_size" in params:
        return varlen_attn, "window", "enable_gqa" in params
    if "is_causal" in params:
        return varlen_attn, "is_causal", "enable_gqa" in params
    return None


def _causal_by_sequence(q, k, v, cu: list[int], scaling: float | None, groups: int) -> torch.Tensor:
    """(1, H, N, D) q and (1, Hkv, N, D) k, v -> (N, H, D): causal attention within each [cu[i], cu[i+1])."""
    outs = []
    for s, e in zip(cu[:-1], cu[1:]):
        outs.append(torch.nn.functional.scaled_dot_product_attention(
            q[:, :, s:e], k[:, :, s:e], v[:, :, s:e], is_causal=True, scale=scaling, enable_gqa=groups > 1))
    return torch.cat(outs, dim=2)[0].transpose(0, 1)


def packed_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
                     cu_seq_lens_q: torch.Tensor | None = None, max_length_q: int | None = None, **kwargs):
    """transformers' attention interface: (1, H, N, D) query, (1, Hkv, N, D) key/value -> ((1, N, H, D), None)."""
    if cu_seq_lens_q is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    if query.shape[0] != 1:
        raise ValueError(f"packed attention wants one packed row, got a batch of {query.shape[0]}")
    if kwargs.get("sliding_window"):
        raise NotImplementedError("use_remove_padding with sliding-window attention layers is not supported yet; "
                                  "set use_remove_padding=False for this model")
    _count()
    groups = query.shape[1] // key.shape[1]
    kernel = _varlen() if query.is_cuda and query.dtype in (torch.float16, torch.bfloat16) else None
    default_scale = scaling is None or abs(scaling - query.shape[-1] ** -0.5) < 1e-9
    if kernel is None or (kernel[1] == "is_causal" and not default_scale):  # older kernels take no scale
        return _causal_by_sequence(query, key, value, cu_seq_lens_q.tolist(), scaling, groups).unsqueeze(0), None
    fn, style, gqa = kernel
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # (N, H, D)
    if groups > 1 and not gqa:
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    cu = cu_seq_lens_q.to(device=q.device, dtype=torch.int32)
    m = int(max_length_q) if max_length_q is not None else int((cu[1:] - cu[:-1]).max())
    extra = {"enable_gqa": True} if groups > 1 and gqa else {}
    if style == "window":
        out = fn(q, k, v, cu, cu, m, m, window_size=(-1, 0), scale=scaling, **extra)
    else:
        out = fn(q, k, v, cu, cu, m, m, is_causal=True, **extra)
    return out.unsqueeze(0), None


def register() -> str:
    """Register ``rlkit_packed`` with transformers' attention and mask registries (idempotent); returns the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    def mask(*args, attention_mask=None, **kwargs):
        # no padding mask: a packed row (its sequences are kept apart by the boundaries) or one unpadded
        # sequence (causal); with one: sdpa's mask for the padded batch
        return None if attention_mask is None else sdpa_mask(*args, attention_mask=attention_mask, **kwargs)

    AttentionInterface.register(ATTN_IMPLEMENTATION, packed_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTN_IMPLEMENTATION, mask)
    return ATTN_IMPLEMENTATION


def packed_forward_kwargs(cu_seqlens: torch.Tensor, max_seqlen: int) -> dict:
    """Keyword arguments for a model's forward over one packed row: no attention mask, and the sequence
    boundaries for the attention layers."""
    return {"attention_mask": None, "cu_seq_lens_q": cu_seqlens, "cu_seq_lens_k": cu_seqlens,
            "max_length_q": int(max_seqlen), "max_length_k": int(max_seqlen)}
