"""Rank functions for tests that spawn gloo process groups (a plain module: spawn pickles by name)."""
from __future__ import annotations

import datetime
import os

import torch


def init(rank: int, world: int, port: int) -> None:
    import torch.distributed as dist

    from rlkit.distributed.addresses import tcp_init_method

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=tcp_init_method("127.0.0.1", port), rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=120))


def finish() -> None:
    import torch.distributed as dist

    dist.barrier()  # no rank tears gloo down while another still talks to it
    dist.destroy_process_group()


def token_losses(model, ids: torch.Tensor) -> torch.Tensor:
    """(B, T-1) next-token NLL; the test's stand-in for a PPO loss."""
    logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()
    return torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")


def fsdp_step(rank: int, world: int, port: int, model_dir: str, ids: torch.Tensor, mask: torch.Tensor,
              max_norm: float, out_dir: str) -> None:
    """Shard the model (without and with CPU offload), take one AdamW step on this rank's rows with
    the loss normalised by the global token count, and save what the test compares."""
    from transformers import AutoModelForCausalLM

    import torch.distributed as dist
    from rlkit.training import fsdp

    init(rank, world, port)
    mesh = fsdp.device_mesh(world, -1, "cpu")
    results = {}
    for offload in (False, True):
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        fsdp.shard_model(model, mesh, param_dtype=None, reduce_dtype=torch.float32, offload=offload)
        before = fsdp.full_state_dict(model)
        optim = torch.optim.AdamW(model.parameters(), lr=1e-2)
        rows = ids.chunk(world)[rank], mask.chunk(world)[rank]
        global_tokens = mask.sum()
        loss = (token_losses(model, rows[0]) * rows[1]).sum() / global_tokens * world  # FSDP averages over ranks
        loss.backward()
        norm = fsdp.clip_grad_norm(model.parameters(), max_norm)
        optim.step()
        fsdp.offload_optimizer(optim)
        where = fsdp.optimizer_state_device(optim)
        fsdp.load_optimizer(optim, "cpu")
        results[offload] = {"before": before, "after": fsdp.full_state_dict(model), "norm": norm, "optim": where,
                            "rank0_only": list(fsdp.full_state_dict(model, rank0_only=True))}
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finish()
