"""The seed's single-node PPO command scaled to one GPU, run by the worker group with SGLang beside the
FSDP2 shards: Qwen2.5-0.5B shape with random weights, GSM8K, TP=1, FSDP world size 1, param and
optimizer offload and gradient checkpointing on for actor and critic, 3 steps - once through
``Experiment.step()`` (its memory trace kept) and once through ``python -m rlkit.main_ppo``.

Needs the Qwen2.5 tokenizer (``RLKIT_QWEN_TOKENIZER``, default ``../shared/tokenizers/qwen2.5``) and the
GSM8K jsonl (``RLKIT_GSM8K_SOURCE``, default ``../shared/data/gsm8k``). ``RLKIT_GPU_OUT=DIR`` keeps the
results: ``group_sglang_experiment.json`` (metrics and per-phase memory), ``group_sglang_memory_trace.json``
and ``group_sglang_main_ppo.json``.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu
REPO = Path(__file__).resolve().parents[2]
STEPS = 3
GIB = 2**30


def _source(env: str, default: Path) -> Path:
    path = Path(os.environ.get(env, str(default)))
    if not path.exists():
        pytest.skip(f"{path} not found: set {env}")
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    pytest.importorskip("sglang")
    pytest.importorskip("ray")
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from rlkit.bench.rollout import SHAPES
    from rlkit.datasets import gsm8k

    tok_dir = _source("RLKIT_QWEN_TOKENIZER", REPO.parent / "shared/tokenizers/qwen2.5")
    data_src = _source("RLKIT_GSM8K_SOURCE", REPO.parent / "shared/data/gsm8k")
    root = tmp_path_factory.mktemp("seed1gpu")
    model = root / "qwen2.5-0.5b-random"
    torch.manual_seed(0)
    Qwen2ForCausalLM(Qwen2Config(max_position_embeddings=4096, rope_theta=1e6, **SHAPES["0.5b"])).to(
        torch.bfloat16).save_pretrained(model)  # on the CPU: this process never touches the GPU
    AutoTokenizer.from_pretrained(tok_dir).save_pretrained(model)
    files = gsm8k(local_dir=root / "gsm8k", source=str(data_src))
    return model, files, root


def seed_command(model: Path, files: dict, out: Path) -> list[str]:
    """The seed's 4-GPU command with its sizes scaled to one GPU and a 0.5B model (see the module docstring)."""
    return [
        f"data.train_files={files['train']}", f"data.val_files={files['test']}",
        "data.train_batch_size=64", "data.max_prompt_length=512", "data.max_response_length=256",
        "actor_rollout_ref.rollout.name=sglang", f"actor_rollout_ref.model.path={model}",
        "actor_rollout_ref.actor.optim.lr=1e-6", "actor_rollout_ref.actor.ppo_mini_batch_size=16",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4",
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=8",
        "actor_rollout_ref.model.enable_gradient_checkpointing=True",
        "actor_rollout_ref.actor.fsdp_config.param_offload=True",
        "actor_rollout_ref.actor.fsdp_config.optimizer_offload=True",
        "actor_rollout_ref.rollout.tensor_model_parallel_size=1",
        "actor_rollout_ref.rollout.gpu_memory_utilization=0.6",
        "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=4",
        "critic.optim.lr=1e-5", f"critic.model.path={model}", "critic.ppo_micro_batch_size_per_gpu=4",
        "critic.model.enable_gradient_checkpointing=True",
        "critic.model.fsdp_config.param_offload=True", "critic.model.fsdp_config.optimizer_offload=True",
        "algorithm.kl_ctrl.kl_coef=0.001", "trainer.logger=['console','jsonl']", "trainer.val_before_train=False",
        "trainer.n_gpus_per_node=1", "trainer.nnodes=1", "trainer.save_freq=-1", "trainer.test_freq=-1",
        f"trainer.default_local_dir={out}", f"trainer.total_training_steps={STEPS}",
    ]


def check_rows(rows: list[dict]) -> None:
    assert [int(r["step"]) for r in rows] == list(range(1, STEPS + 1))
    for r in rows:
        assert r["response_length/mean"] > 0 and r["timing_s/gen"] > 0
        assert math.isfinite(r["actor/grad_norm"]) and math.isfinite(r["critic/vf_loss"])
    # the engine holds the actor's weights after every push: both give the sampled tokens nearly the same
    # probability (bf16 engine vs bf16-compute FSDP actor)
    assert max(r["training/rollout_probs_diff_mean"] for r in rows) < 0.05


def phase_memory(mem, step: int) -> dict:
    """Per phase of ``step`` (at its end): GPU used (NVML, every process) and the rank's torch allocation, GiB."""
    out = {}
    rows = mem[(mem["step"] == step) & (mem["event"] == "end") & (mem["gpu"] >= 0)]
    for phase, g in rows.groupby("phase", sort=False):
        by = g.groupby("metric")["bytes"].max()
        out[phase] = {m: round(float(by[m]) / GIB, 3) for m in ("used", "torch_allocated", "torch_peak_allocated")
                      if m in by}
    return out


def test_seed_command_scaled_to_one_gpu_via_experiment(inputs):
    from rlkit import Experiment, PPOConfig

    model, files, root = inputs
    cfg = PPOConfig.from_overrides(seed_command(model, files, root / "exp"))
    t0 = time.time()
    exp = Experiment(cfg)
    start_s = time.time() - t0
    step_s = []
    for _ in range(STEPS):
        t = time.time()
        exp.step()
        step_s.append(time.time() - t)
    history = exp.history
    mem = exp.memory
    keep = os.environ.get("RLKIT_GPU_OUT")
    if keep:
        exp.save_memory_trace(Path(keep, "group_sglang_memory_trace.json"),
                              meta={"what": "seed command scaled to one GPU, worker group + SGLang, 3 steps"})
    exp.shutdown()

    rows = history.to_dict(orient="records")
    phases = phase_memory(mem, STEPS)
    result = {"what": "Experiment.step() x3: seed single-node command scaled to one GPU (Qwen2.5-0.5B shape, random "
                      "weights), worker group of 1 rank, SGLang TP=1 beside FSDP2, param+optimizer offload, "
                      "gradient checkpointing", "command": seed_command(Path("<model>"), {"train": "<train>", "test": "<test>"},
                                                                        Path("<out>")),
              "startup_s": start_s, "step_s": step_s, "memory_gib_step3": phases,
              "history": [{k: v for k, v in r.items() if k.startswith(("step", "timing_s/", "perf/", "actor/", "critic/vf",
                                                                       "critic/score", "response_length/mean",
                                                                       "training/"))} for r in rows]}
    if keep:
        Path(keep, "group_sglang_experiment.json").write_text(json.dumps(result, indent=1, default=float))
    print(json.dumps({k: result[k] for k in ("startup_s", "step_s", "memory_gib_step3")}, indent=1))
    check_rows(rows)
    # offload: while the engine generates, the training process holds almost nothing on the GPU (the
    # actor's and critic's fp32 weights and AdamW state, ~16 GiB, wait on the CPU)
    assert phases["gen"]["torch_allocated"] < 1.0
    assert phases["update_actor"]["torch_peak_allocated"] > phases["gen"]["torch_allocated"]


def test_seed_command_scaled_to_one_gpu_via_main_ppo(inputs):
    model, files, root = inputs
    out = root / "main_ppo"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               RLKIT_PROGRESS="0")
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "rlkit.main_ppo", *seed_command(model, files, out)],
                          capture_output=True, text=True, env=env, cwd=root, timeout=900)
    wall = time.time() - t0
    assert proc.returncode == 0, proc.stderr[-6000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    keep = os.environ.get("RLKIT_GPU_OUT")
    if keep:
        Path(keep, "group_sglang_main_ppo.json").write_text(json.dumps(
            {"what": "python -m rlkit.main_ppo, the same command, 3 steps", "wall_s": wall, "metrics": rows},
            indent=1, default=float))
        Path(keep, "group_sglang_main_ppo_stderr_tail.txt").write_text(proc.stderr[-8000:])
    check_rows(rows)


def test_rank_engine_follows_the_actor(tmp_path):
    """The weight push from FSDP shards into the engine beside them, checked where it can fail: a tiny
    model trained to a peaked distribution (random weights give every token ~1/vocab, so any weights
    would pass), generate with SGLang, recompute the log-probs with the FSDP actor; after an actor
    update (lr 1e-2) and a wake-up (push), again. Stale or garbled engine weights would show as gaps
    of the size of the update's shift."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("sglang")
    import torch

    sys.path.insert(0, str(REPO / "tests" / "distributed"))
    sys.path.insert(0, str(REPO / "tests" / "gpu"))
    from test_group_cpu import config
    from tiny import char_tokenizer
    from tiny_trained import VOCAB, train_tiny_qwen2

    from rlkit.distributed.group import WorkerGroup

    model = tmp_path / "markov"
    info = train_tiny_qwen2(str(model), seed=1)
    char_tokenizer().save_pretrained(model)  # ids 0..100 of the model's 512; prompts are token ids
    cfg = config(str(model), 1, micro=4)
    for key, value in {"rollout.name": "sglang", "rollout.tensor_model_parallel_size": 1,
                       "rollout.gpu_memory_utilization": 0.3, "rollout.enforce_eager": True}.items():
        section, name = key.split(".")
        cfg.actor_rollout_ref[section][name] = value
    cfg.data.max_response_length = 16
    cfg.trainer.device = "cuda"
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(2, VOCAB, (8, 4), generator=g).tolist()
    ray.init(num_cpus=4, num_gpus=1, include_dashboard=False, ignore_reinit_error=True)
    try:
        group = WorkerGroup(cfg, timeout_s=300)
        try:
            def roll():
                group.wake_rollout()
                b = group.generate(prompts)
                group.sleep_rollout()
                lp = group.compute_log_prob(b)["log_probs"]
                return b, lp, (lp - b["rollout_log_probs"]).abs()[b["response_mask"].bool()]

            b1, lp1, gap1 = roll()
            b1["old_log_probs"] = lp1
            b1["advantages"] = torch.randn(len(b1), 1, generator=g).sign() * b1["response_mask"]
            metrics = group.update_actor(b1, step=1)
            group.sync_rollout_weights()  # asleep: nothing moves until the next wake-up
            b2, lp2, gap2 = roll()
            shift = (group.compute_log_prob(b1)["log_probs"] - lp1).abs()[b1["response_mask"].bool()]
        finally:
            group.shutdown()
    finally:
        ray.shutdown()
    result = {"card": torch.cuda.get_device_name(0), "torch": torch.__version__, "markov_train_loss": info["loss"],
              "gap_before_update": {"mean": gap1.mean().item(), "max": gap1.max().item()},
              "gap_after_update_and_push": {"mean": gap2.mean().item(), "max": gap2.max().item()},
              "actor_logprob_shift_from_update": {"mean": shift.mean().item()},
              "sampled_logprob_mean": b1["rollout_log_probs"][b1["response_mask"].bool()].mean().item(),
              "actor_metrics": metrics}
    print(json.dumps(result, indent=1, default=float))
    if os.environ.get("RLKIT_GPU_OUT"):
        Path(os.environ["RLKIT_GPU_OUT"], "group_sglang_weight_push.json").write_text(
            json.dumps(result, indent=1, default=float))
    assert gap1.mean().item() < 0.05 and gap2.mean().item() < 0.05  # bf16 engine vs bf16-compute FSDP actor
    assert shift.mean().item() > 5 * max(gap1.mean().item(), gap2.mean().item())  # the update is visible
