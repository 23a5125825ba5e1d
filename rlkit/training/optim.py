"""AdamW with verl's warmup / decay schedule (``*.optim.*`` keys)."""
from __future__ import annotations

import math

import torch


def warmup_steps(lr_warmup_steps: int, lr_warmup_steps_ratio: float, total_steps: int) -> int:
    """verl's rule: an explicit ``lr_warmup_steps >= 0`` wins, else ``ratio * total_steps``."""
    if lr_warmup_steps is not None and lr_warmup_steps >= 0:
        return int(lr_warmup_steps)
    return int(lr_warmup_steps_ratio * max(total_steps, 0))


def lr_multiplier(step: int, warmup: int, total: int, style: str, min_lr_ratio: float) -> float:
    """lr(step) / lr: linear warmup ``step / warmup`` (0 at step 0, as verl), then constant or
    cosine down to ``min_lr_ratio``."""
    if warmup > 0 and step < warmup:
        return step / warmup
    if style == "constant":
        return 1.0
    if style == "cosine":
        span = max(total - warmup, 1)
        progress = min(max(step - warmup, 0) / span, 1.0)
        # cosine from 1 to min_lr_ratio: m + (1 - m) * 0.5 * (1 + cos(pi * progress))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    raise ValueError(f"unknown warmup_style {style!r}; valid: constant, cosine")


def build_optimizer(params, optim_cfg) -> torch.optim.AdamW:
    """AdamW from an ``optim`` config section (lr, betas, weight_decay)."""
    params = [p for p in params if p.requires_grad]
    betas = tuple(float(b) for b in optim_cfg.get("betas", (0.9, 0.999)))
    return torch.optim.AdamW(params, lr=float(optim_cfg.lr), betas=betas,
                             weight_decay=float(optim_cfg.get("weight_decay", 0.01)))


def build_scheduler(opt, optim_cfg, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """verl's schedule (warmup steps or ratio, constant or cosine) over ``total_steps`` updates."""
    total = int(optim_cfg.get("total_training_steps", -1) or -1)
    total = total if total > 0 else total_steps
    warm = warmup_steps(optim_cfg.get("lr_warmup_steps", -1), float(optim_cfg.get("lr_warmup_steps_ratio", 0.0)), total)
    style = optim_cfg.get("warmup_style", "constant") or "constant"
    min_ratio = float(optim_cfg.get("min_lr_ratio", 0.0) or 0.0)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_multiplier(s, warm, total, style, min_ratio))
