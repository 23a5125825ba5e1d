"""Model FLOPs and MFU of the training phases, from a model's dimensions (pure data).

* a forward pass costs ``2 * N * T`` FLOPs plus attention ``2 * L * d * s**2`` per sequence (causal:
  ``QK^T`` and ``AV`` over half the square), where ``N`` counts the weights a token passes through
  (:func:`weights_per_token`: embeddings excluded, the LM head included, or the critic's value head; Qwen2's
  q/k/v biases included, a few thousand weights other architectures lack), ``T`` the batch's tokens, ``L``
  layers, ``d`` the hidden size and ``s`` the mean sequence length (exact when every sequence has the same
  length); a backward pass costs twice the forward, so an update is 3x (recomputation under gradient
  checkpointing is not counted: *model* FLOPs);
* MFU = FLOPs / seconds / peak, against a card's dense bf16 peak from its data sheet (:func:`peak_flops`).

The e2e benchmark reports these per phase; every step reports verl's ``perf/mfu/*`` from them
(:func:`step_mfu`).
"""
from __future__ import annotations

import json
from pathlib import Path

MODEL_DIMS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size",
              "vocab_size")

# dense bf16 peak from the vendors' data sheets (TFLOP/s), matched on torch.cuda.get_device_name()
PEAK_BF16_TFLOPS = {"H100 80GB HBM3": 989.4, "H100 SXM": 989.4, "H100 PCIe": 756.0, "H200": 989.4,
                    "A100": 312.0}
# phase -> (role, passes): forward passes count 1, updates 3 (forward + backward)
TRAINING_PHASES = {"old_log_prob": ("actor", 1), "ref": ("actor", 1), "values": ("critic", 1),
                   "update_critic": ("critic", 3), "update_actor": ("actor", 3)}


def weights_per_token(model_cfg: dict, head: str = "lm") -> int:
    """Weights one token's forward pass multiplies by (``head``: ``lm`` or ``value``).

    >>> from rlkit.diagnostics.flops import weights_per_token
    >>> qwen05 = dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
    ...               intermediate_size=4864, vocab_size=151936)
    >>> weights_per_token(qwen05), weights_per_token(qwen05, head="value")  # the first is Qwen2.5-0.5B's size
    (494032768, 357899009)
    """
    d, layers = model_cfg["hidden_size"], model_cfg["num_hidden_layers"]
    kv = d // model_cfg["num_attention_heads"] * model_cfg["num_key_value_heads"]
    attn = d * d + 2 * d * kv + d * d + d + 2 * kv  # q, k, v, o weights and the q/k/v biases (Qwen2)
    mlp = 3 * d * model_cfg["intermediate_size"]
    norms = 2 * d
    body = layers * (attn + mlp + norms) + d  # + the final norm
    return body + (model_cfg["vocab_size"] * d if head == "lm" else d + 1)


def forward_flops(model_cfg: dict, tokens: float, sequences: float, head: str = "lm") -> float:
    """FLOPs of one forward pass over ``sequences`` sequences of ``tokens`` tokens in all (the module docstring).

    >>> from rlkit.diagnostics.flops import forward_flops
    >>> cfg = dict(hidden_size=2, num_hidden_layers=1, num_attention_heads=1, num_key_value_heads=1,
    ...            intermediate_size=2, vocab_size=3)
    >>> # N = q 4 + k,v 8 + o 4 + biases 6 + mlp 12 + norms 4 + final norm 2 + head 6 = 46
    >>> forward_flops(cfg, tokens=8, sequences=2)  # 2*46*8 + 2*1*2*(8/2)**2*2
    864.0
    """
    s = tokens / sequences
    return 2.0 * weights_per_token(model_cfg, head) * tokens + 2.0 * model_cfg["num_hidden_layers"] * \
        model_cfg["hidden_size"] * s * s * sequences


def phase_mfu(row: dict, model_cfg: dict, rows_per_step: int, peak_flops: float, epochs: int = 1,
              critic_epochs: int | None = None) -> dict:
    """Model FLOPs and MFU of each training phase of one step's metrics ``row`` (``timing_s/*`` and
    ``perf/total_num_tokens``); phases that did not run are left out. Updates pass over the batch ``epochs``
    times (the critic's ``critic_epochs``, when given)."""
    tokens = float(row["perf/total_num_tokens"])
    per_role = {"actor": epochs, "critic": epochs if critic_epochs is None else critic_epochs}
    out = {}
    for phase, (role, passes) in TRAINING_PHASES.items():
        seconds = row.get(f"timing_s/{phase}")
        if not seconds:
            continue
        reps = passes * (per_role[role] if phase.startswith("update") else 1)
        flops = reps * forward_flops(model_cfg, tokens, rows_per_step, "lm" if role == "actor" else "value")
        out[phase] = {"seconds": seconds, "tflops": flops / 1e12, "tflops_per_s": flops / seconds / 1e12,
                      "mfu": flops / seconds / peak_flops if peak_flops else None}
    return out


def peak_flops(device_name: str | None) -> float | None:
    """A card's dense bf16 peak in FLOP/s from :data:`PEAK_BF16_TFLOPS` (matched on a part of
    ``torch.cuda.get_device_name()``), or None for a card (or CPU) not in it.

    >>> from rlkit.diagnostics.flops import peak_flops
    >>> peak_flops("NVIDIA H100 80GB HBM3"), peak_flops("cpu")
    (989400000000000.0, None)
    """
    tflops = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in (device_name or "")), None)
    return tflops * 1e12 if tflops else None


def model_dims(model_dir) -> dict | None:
    """The :data:`MODEL_DIMS` of a Hugging Face model folder's ``config.json`` (``num_key_value_heads``
    defaults to ``num_attention_heads``), or None when the file or one of them is missing (e.g. a
    multimodal config that nests its text model)."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        return None
    cfg = json.loads(path.read_text())
    cfg.setdefault("num_key_value_heads", cfg.get("num_attention_heads"))
    if any(not isinstance(cfg.get(k), int) for k in MODEL_DIMS):
        return None
    return {k: cfg[k] for k in MODEL_DIMS}


# verl's per-step MFU metric of each training phase it reports
STEP_MFU = {"update_actor": "perf/mfu/actor", "old_log_prob": "perf/mfu/actor_infer", "update_critic": "perf/mfu/critic"}


def step_mfu(row: dict, model_cfg: dict, rows_per_step: int, peak: float, n_gpus: int, actor_epochs: int = 1,
             critic_epochs: int = 1) -> dict[str, float]:
    """verl's ``perf/mfu/{actor,actor_infer,critic}`` of one step's metrics ``row`` (``timing_s/*``,
    ``perf/total_num_tokens``): each phase's model FLOPs (:func:`phase_mfu`) / its seconds / (``peak`` *
    ``n_gpus``). The seconds are the controller's, dispatch included, so this reads a little below what
    the GPUs did inside the phase (verl times the kernels' part).

    >>> from rlkit.diagnostics.flops import step_mfu
    >>> cfg = dict(hidden_size=2, num_hidden_layers=1, num_attention_heads=1, num_key_value_heads=1,
    ...            intermediate_size=2, vocab_size=3)
    >>> row = {"perf/total_num_tokens": 8, "timing_s/old_log_prob": 2.0, "timing_s/update_actor": 3.0}
    >>> step_mfu(row, cfg, rows_per_step=2, peak=100.0, n_gpus=2)  # 864 / 2 / 200; 3 * 864 / 3 / 200
    {'perf/mfu/actor': 4.32, 'perf/mfu/actor_infer': 2.16}
    """
    phases = phase_mfu(row, model_cfg, rows_per_step, peak * n_gpus, actor_epochs, critic_epochs)
    return dict(sorted((name, phases[phase]["mfu"]) for phase, name in STEP_MFU.items() if phase in phases))
