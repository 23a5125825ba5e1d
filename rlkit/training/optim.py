"""AdamW with verl's warmup / decay schedule (``*.optim.*`` keys), and the size of AdamW's last step."""
from __future__ import annotations

import math

import torch

SCHEDULER_TYPES = ("constant", "cosine")


def warmup_steps(lr_warmup_steps: int, lr_warmup_steps_ratio: float, total_steps: int) -> int:
    """verl's rule: an explicit ``lr_warmup_steps >= 0`` wins, else ``int(ratio * total_steps)``."""
    if lr_warmup_steps is not None and lr_warmup_steps >= 0:
        return int(lr_warmup_steps)
    return int(lr_warmup_steps_ratio * max(total_steps, 0))


def scheduler_type(optim_cfg) -> str:
    """``lr_scheduler_type``, unless the deprecated ``warmup_style`` is set: then it wins (as in verl)."""
    style = optim_cfg.get("warmup_style", None)
    return str(style) if style is not None else str(optim_cfg.get("lr_scheduler_type", "constant") or "constant")


def lr_multiplier(step: int, warmup: int, total: int, style: str, min_lr_ratio: float | None,
                  num_cycles: float = 0.5) -> float:
    """lr(step) / lr, verl's schedules.

    Warmup (``step < warmup``): ``step / max(1, warmup)``, 0 at step 0. Then ``constant``: 1;
    ``cosine``: with ``p = (step - warmup) / max(1, total - warmup)`` and ``m = min_lr_ratio``
    (None counts as 0), ``max(m, m + (1 - m) * 0.5 * (1 + cos(2 * pi * num_cycles * p)))``: the
    default ``num_cycles=0.5`` falls from 1 to ``m`` over the decay; more cycles rise again.
    """
    if step < warmup:
        return step / max(1, warmup)
    if style == "constant":
        return 1.0
    if style == "cosine":
        m = 0.0 if min_lr_ratio is None else float(min_lr_ratio)
        progress = (step - warmup) / max(1, total - warmup)
        x = math.cos(math.pi * float(num_cycles) * 2.0 * progress)
        return max(m, m + (1 - m) * 0.5 * (1 + x))  # = x * (1-m)/2 + (1+m)/2
    raise ValueError(f"unknown lr_scheduler_type {style!r}; valid: {', '.join(SCHEDULER_TYPES)}")


def build_optimizer(params, optim_cfg) -> torch.optim.AdamW:
    """AdamW from an ``optim`` config section (lr, betas, weight_decay). Fused (one kernel for the
    whole update) when every parameter lives on a GPU; torch's default (for-each) implementation
    otherwise, e.g. for parameters offloaded to the CPU. The same arithmetic either way."""
    params = [p for p in params if p.requires_grad]
    betas = tuple(float(b) for b in optim_cfg.get("betas", (0.9, 0.999)))
    fused = bool(params) and all(p.device.type == "cuda" for p in params)
    return torch.optim.AdamW(params, lr=float(optim_cfg.lr), betas=betas,
                             weight_decay=float(optim_cfg.get("weight_decay", 0.01)), fused=fused or None)


def build_scheduler(opt, optim_cfg, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """verl's schedule (warmup steps or ratio; ``lr_scheduler_type`` constant or cosine with
    ``min_lr_ratio`` and ``num_cycles``) over ``total_steps`` updates."""
    total = int(optim_cfg.get("total_training_steps", -1) or -1)
    total = total if total > 0 else total_steps
    warm = warmup_steps(optim_cfg.get("lr_warmup_steps", -1), float(optim_cfg.get("lr_warmup_steps_ratio", 0.0)), total)
    style = scheduler_type(optim_cfg)
    if style not in SCHEDULER_TYPES:
        raise ValueError(f"unknown lr_scheduler_type {style!r}; valid: {', '.join(SCHEDULER_TYPES)}")
    min_ratio = optim_cfg.get("min_lr_ratio", 0.0)
    cycles = float(optim_cfg.get("num_cycles", 0.5))
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_multiplier(s, warm, total, style, min_ratio, cycles))


def adamw_step_norms(optim: torch.optim.AdamW, stepped: bool = True, chunk: int = 1 << 24) -> tuple[torch.Tensor, int]:
    """How far ``optim``'s last ``step()`` moved the weights, read back from its state; no copy of the weights.

    Returns ``(sums, steps)``: ``sums`` a float64 tensor ``[sum of squared changes, sum of squared weights]`` over
    this rank's parameters (the local shards of FSDP2's DTensors: all-reduce it over the ranks, then take the square
    root, for the global L2 norms ``||theta_new - theta_old||`` and ``||theta_new||``); ``steps`` AdamW's step count
    (0 before the first step). ``stepped=False`` (the step was skipped) counts no change.

    torch's AdamW (decoupled weight decay ``wd``, step ``t``, ``bc_i = 1 - beta_i ** t``) sets
    ``theta_new = theta_old * (1 - lr * wd) - (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps)``, so the change is
    ``theta_new - theta_old = -(lr * wd * theta_new + (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps)) / (1 - lr * wd)``
    with ``m``, ``v`` the moments after the step. Call it right after ``step()``, before the schedule changes the
    learning rate. Works ``chunk`` elements at a time, so its scratch memory stays below a few chunks of fp32.

    >>> import torch
    >>> from rlkit.training.optim import adamw_step_norms
    >>> w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    >>> opt = torch.optim.AdamW([w], lr=0.1, weight_decay=0.1)
    >>> w.grad = torch.tensor([0.5, -0.25])
    >>> opt.step()
    >>> sums, steps = adamw_step_norms(opt)
    >>> steps, round(sums[0].sqrt().item(), 4)  # first step: each weight moves by lr * (wd * w + sign(g))
    (1, 0.1628)
    """
    from torch.distributed.tensor import DTensor

    if not isinstance(optim, torch.optim.AdamW):
        raise TypeError(f"adamw_step_norms reads torch.optim.AdamW's state, got {type(optim).__name__}")
    local = lambda t: t.to_local() if isinstance(t, DTensor) else t  # noqa: E731
    sums, steps = None, 0
    for group in optim.param_groups:
        if group.get("amsgrad") or group.get("maximize"):
            raise ValueError("adamw_step_norms follows AdamW without amsgrad or maximize; this optimizer sets "
                             f"amsgrad={group.get('amsgrad')}, maximize={group.get('maximize')}")
        lr, wd, eps = float(group["lr"]), float(group["weight_decay"]), float(group["eps"])
        beta1, beta2 = (float(b) for b in group["betas"])
        for p in group["params"]:
            theta = local(p.detach()).reshape(-1)
            if sums is None:
                sums = torch.zeros(2, dtype=torch.float64, device=theta.device)
            state = optim.state.get(p, {})
            t = int(float(state["step"])) if "step" in state else 0
            steps = max(steps, t)
            for start in range(0, theta.numel(), chunk):
                w = theta[start:start + chunk].float()
                sums[1] += torch.dot(w, w).double()
                if not stepped or t == 0:
                    continue
                m = local(state["exp_avg"]).reshape(-1)[start:start + chunk].float()
                v = local(state["exp_avg_sq"]).reshape(-1)[start:start + chunk].float()
                step = m / (v.sqrt() / math.sqrt(1 - beta2 ** t) + eps) * (lr / (1 - beta1 ** t)) + w * (lr * wd)
                sums[0] += torch.dot(step, step).double() / (1 - lr * wd) ** 2
    if sums is None:
        sums = torch.zeros(2, dtype=torch.float64)
    return sums, steps
