"""The worker group on one GPU: NCCL process group, FSDP2 with bf16 compute and fp32 master weights.

The CPU tests (tests/distributed/test_group_cpu.py) prove 2 ranks equal 1 in fp32 with gloo; this
runs the GPU branch of the same code: a 1-rank group's log-probs against the plain (unsharded) model
on the same GPU under bf16 autocast (FSDP2 mixed precision in the group: both round to bf16, so they
agree to bf16 noise, not bit for bit), then one actor update that moves the weights and stays finite.

Set RLKIT_GPU_OUT=DIR to keep the numbers.
"""
from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import pytest
import torch

from tiny import char_tokenizer, make_tiny_model

pytestmark = pytest.mark.gpu
HERE = Path(__file__).resolve().parent


def test_one_gpu_group_matches_the_plain_model_and_updates(tmp_path):
    ray = pytest.importorskip("ray")
    sys.path.insert(0, str(HERE.parent / "distributed"))
    from test_group_cpu import config, make_batch

    from transformers import AutoModelForCausalLM

    from rlkit.distributed.group import WorkerGroup
    from rlkit.training.worker import response_log_probs

    model = make_tiny_model(tmp_path / "m", char_tokenizer(), hidden=64, layers=2, heads=4, kv_heads=2,
                            intermediate=128)
    cfg = config(model, 1, micro=4)
    cfg.trainer.device = "cuda"
    batch = make_batch()
    ray.init(num_cpus=4, num_gpus=1, include_dashboard=False, ignore_reinit_error=True)
    try:
        group = WorkerGroup(cfg, timeout_s=300)
        try:
            info = group.call_rank0("describe")
            assert "cuda" in info["device"] and info["backend"] == "nccl"
            lp_group = group.compute_log_prob(batch)["log_probs"]
            before = group.call_rank0("full_state_dict")["actor"]
            metrics = group.update_actor(batch, step=1)
            after = group.call_rank0("full_state_dict")["actor"]
            snaps, _ = group.take_snapshots()
        finally:
            group.shutdown()
    finally:
        ray.shutdown()
    plain = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).cuda().eval()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        lp_worker = response_log_probs(plain, batch.to("cuda"), cfg.actor_rollout_ref.rollout.temperature)[0].cpu()
    mask = batch["response_mask"].bool()
    gap = (lp_group - lp_worker).abs()[mask]
    moved = max((after[k].float() - before[k].float()).abs().max().item() for k in before)
    result = {"card": torch.cuda.get_device_name(0), "torch": torch.__version__,
              "log_prob_gap_mean": gap.mean().item(), "log_prob_gap_max": gap.max().item(),
              "max_param_change": moved, "metrics": metrics, "snapshots": len(snaps)}
    print(json.dumps(result, indent=1, default=float))
    if os.environ.get("RLKIT_GPU_OUT"):
        Path(os.environ["RLKIT_GPU_OUT"], "group_one_gpu.json").write_text(json.dumps(result, indent=1, default=float))

    assert gap.mean().item() < 0.05 and gap.max().item() < 0.5  # bf16 rounding of logits over a ~100-token vocab
    assert all(math.isfinite(v) for v in metrics.values()) and metrics["actor/grad_norm"] > 0
    assert 1e-4 < moved < 1.0  # lr 1e-2, one AdamW step per mini-batch: every weight moves, none explodes
    assert all(after[k].dtype == torch.float32 for k in after)  # fp32 master weights
