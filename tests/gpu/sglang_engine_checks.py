"""GPU checks of SGLangRollout, run as a script: SGLang kills the process that launched a failing
engine, so pytest starts this in a subprocess (tests/gpu/test_sglang_engine.py) and reads its JSON.

    python tests/gpu/sglang_engine_checks.py OUT.json
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_trained import markov_batch, train_tiny_qwen2  # noqa: E402

N_PROMPTS, PROMPT_LEN, NEW_TOKENS = 64, 16, 32


def free_gib() -> float:
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    return torch.cuda.mem_get_info()[0] / 2**30


def main(out_path: str) -> None:
    from transformers import AutoModelForCausalLM

    from rlkit.rollout import SamplingParams
    from rlkit.rollout.hf import HFRollout
    from rlkit.rollout.sglang import SGLangRollout

    res: dict = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__}
    tmp = Path(tempfile.mkdtemp())
    t = time.time()
    info_a = train_tiny_qwen2(str(tmp / "A"), seed=1)
    info_b = train_tiny_qwen2(str(tmp / "B"), seed=2)
    res.update(train_s=time.time() - t, loss_a=info_a["loss"], loss_b=info_b["loss"], entropy_floor=info_a["entropy_floor"])

    def hf(path):  # bf16 on the GPU, as the engine
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).cuda().eval()

    hf_a, hf_b = hf(str(tmp / "A")), hf(str(tmp / "B"))
    prompts = markov_batch(info_a["p1"], info_a["p2"], N_PROMPTS, PROMPT_LEN, torch.Generator().manual_seed(7), "cuda").cpu().tolist()
    greedy = SamplingParams(max_new_tokens=NEW_TOKENS, do_sample=False, ignore_eos=True)
    sampled = SamplingParams(max_new_tokens=NEW_TOKENS, temperature=1.0, ignore_eos=True)

    def hf_greedy(model):
        return HFRollout(model, pad_token_id=0, eos_token_ids=[]).generate(prompts, greedy).response_ids

    @torch.no_grad()
    def hf_logprobs(model, responses):
        x = torch.tensor([p + r for p, r in zip(prompts, responses)], device="cuda")
        logits = model(x).logits[:, PROMPT_LEN - 1 : -1].float()
        return torch.log_softmax(logits, -1).gather(-1, x[:, PROMPT_LEN:, None]).squeeze(-1).cpu()

    free_before = free_gib()
    t = time.time()
    eng = SGLangRollout(str(tmp / "A"), gpu_memory_utilization=0.3, enforce_eager=True, load_format="auto")
    res["engine_start_s"] = time.time() - t
    free_awake = free_gib()
    res["engine_footprint_gib"] = free_before - free_awake

    # 1. same weights: greedy continuations and per-token log-probs
    t = time.time()
    out = eng.generate(prompts, greedy)
    res["first_generate_s"] = time.time() - t
    ref = hf_greedy(hf_a)
    res["greedy_match_fraction"] = sum(a == b for a, b in zip(out.response_ids, ref)) / N_PROMPTS
    res["greedy_logprob_mad"] = (torch.tensor(out.log_probs) - hf_logprobs(hf_a, out.response_ids)).abs().mean().item()
    torch.manual_seed(0)
    smp = eng.generate(prompts, sampled)
    res["sampled_logprob_mad"] = (torch.tensor(smp.log_probs) - hf_logprobs(hf_a, smp.response_ids)).abs().mean().item()
    res["sampled_logprob_mean"] = float(torch.tensor(smp.log_probs).mean())
    before_sleep = out.response_ids

    # 2. new weights (fp32, as the trainer holds them) -> outputs follow them
    actor_b = AutoModelForCausalLM.from_pretrained(str(tmp / "B"), dtype=torch.float32).cuda()
    t = time.time()
    eng.update_weights(actor_b.named_parameters())
    res["update_weights_s"] = time.time() - t
    out_b = eng.generate(prompts, greedy)
    res["after_update_match_new_fraction"] = sum(a == b for a, b in zip(out_b.response_ids, hf_greedy(hf_b))) / N_PROMPTS
    res["after_update_match_old_fraction"] = sum(a == b for a, b in zip(out_b.response_ids, ref)) / N_PROMPTS
    actor_a = AutoModelForCausalLM.from_pretrained(str(tmp / "A"), dtype=torch.float32).cuda()
    eng.update_weights(actor_a.named_parameters())

    # 3. sleep frees the engine's memory, wake takes it back with the weights pushed again
    free_pre_sleep = free_gib()
    t = time.time()
    eng.sleep()
    res["sleep_s"] = time.time() - t
    free_asleep = free_gib()
    res["freed_gib"] = free_asleep - free_pre_sleep
    res["freed_fraction_of_footprint"] = res["freed_gib"] / res["engine_footprint_gib"]
    errors = {}
    try:
        eng.generate(prompts, greedy)
    except RuntimeError as e:
        errors["generate_while_asleep"] = str(e)
    try:
        eng.wake_up()
    except ValueError as e:
        errors["wake_without_weights"] = str(e)
    res["errors"] = errors
    t = time.time()
    eng.wake_up(actor_a.named_parameters())
    res["wake_s"] = time.time() - t
    res["retaken_gib"] = free_asleep - free_gib()
    after = eng.generate(prompts, greedy)
    res["after_wake_match_before_sleep_fraction"] = sum(a == b for a, b in zip(after.response_ids, before_sleep)) / N_PROMPTS
    eng.shutdown()
    res["free_after_shutdown_gib"] = free_gib()
    res["free_before_engine_gib"] = free_before
    Path(out_path).write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main(sys.argv[1])
