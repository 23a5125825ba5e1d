"""rlkit.bench.peer_trl: peers' keys -> TRL 1.12.0's arguments by hand (gae: PPO, grpo: GRPO), the refusals, the
per-step rows, the reward side (prompt lookup, scores, tokens) and, where TRL is importable, its config classes
taking every mapped argument and two training steps of each trainer on a CPU through peers' own command."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import types

import pytest

from rlkit.bench import e2e, peer_trl, peers

DATA = {"train": "/d/train.parquet", "test": "/d/test.parquet"}


def keys(estimator, *override):
    """The keys peers passes to the trl side (``--override`` ones last)."""
    args = peers.build_parser().parse_args(["--estimator", estimator, *[f"--override={o}" for o in override]])
    return peers.common_overrides(args, "/m", DATA, "/o/trl")


def mapped(estimator, *override, on_cuda=True):
    return peer_trl.trl_args(peer_trl.load_config(keys(estimator, *override)), on_cuda)


COMMON = dict(output_dir="/o/trl", learning_rate=1e-6, weight_decay=0.01, adam_beta1=0.9, adam_beta2=0.999,
              lr_scheduler_type="constant", per_device_train_batch_size=8, temperature=1.0, bf16=True, use_cpu=False,
              gradient_checkpointing=False, seed=1, logging_steps=1, report_to="none", save_strategy="no")


def test_gae_maps_to_trl_ppo_by_hand():
    cfg = peer_trl.load_config(keys("gae"))
    # 256 prompts x 1 response in micro-batches of 8: TRL's rollout batch 8 x 32; mini-batches of 64 prompts: 4
    assert peer_trl.ppo_args(cfg, on_cuda=True) == dict(
        COMMON, gradient_accumulation_steps=32, num_mini_batches=4, num_ppo_epochs=1, total_episodes=7 * 256,
        response_length=512, stop_token="eos", local_rollout_forward_batch_size=16, kl_coef=0.0, kl_estimator="k1",
        cliprange=0.2, cliprange_value=0.5, vf_coef=1.0, gamma=1.0, lam=1.0, whiten_rewards=False,
        num_sample_generations=0)
    assert peer_trl.steps_per_row(cfg) == 1
    assert peer_trl.ppo_param_groups(cfg) == [
        {"model": "policy", "lr": 1e-6, "weight_decay": 0.01, "betas": (0.9, 0.999)},
        {"model": "value", "lr": 1e-5, "weight_decay": 0.01, "betas": (0.9, 0.999)}]  # critic.optim.lr


def test_grpo_maps_to_trl_grpo_by_hand():
    cfg = peer_trl.load_config(keys("grpo"))
    # 256 prompts x 5 = 1280 responses per generation; a mini-batch of 64 x 5 = 320 is 40 micro-batches of 8;
    # 4 mini-batches, so 4 optimizer steps per training step and 7 x 4 in all
    assert peer_trl.grpo_args(cfg, on_cuda=True) == dict(
        COMMON, gradient_accumulation_steps=40, generation_batch_size=1280, num_generations=5,
        max_completion_length=512, max_steps=28, num_iterations=1, beta=0.001, use_bias_correction_kl=False,
        epsilon=0.2, epsilon_high=0.2, loss_type="dapo", entropy_coef=0.0, scale_rewards="group", max_grad_norm=1.0,
        top_p=1.0, top_k=0, generation_kwargs=None, shuffle_dataset=True, disable_dropout=True, use_vllm=False,
        model_init_kwargs={"dtype": "float32", "attn_implementation": "sdpa"})
    assert peer_trl.steps_per_row(cfg) == 4


def test_the_switches_follow_the_keys():
    A, R = "actor_rollout_ref.actor", "actor_rollout_ref.rollout"
    # full-length responses: no stop token for PPO, min_new_tokens for GRPO
    assert mapped("gae", f"{R}.ignore_eos=True")["stop_token"] is None
    assert mapped("grpo", f"{R}.ignore_eos=True", "data.max_response_length=64")["generation_kwargs"] == {
        "min_new_tokens": 64}
    assert mapped("gae", "algorithm.use_kl_in_reward=True", "algorithm.kl_penalty=low_var_kl")[
        "kl_estimator"] == "k3"
    assert mapped("gae", "algorithm.use_kl_in_reward=True")["kl_coef"] == 0.001
    assert mapped("grpo", f"{A}.use_kl_loss=False")["beta"] == 0.0
    g = mapped("grpo", "algorithm.norm_adv_by_std_in_grpo=False", f"{A}.loss_agg_mode=seq-mean-token-sum-norm",
               f"{R}.top_k=50", f"{A}.ppo_epochs=2", f"{A}.ppo_mini_batch_size=128", on_cuda=False)
    assert (g["scale_rewards"], g["loss_type"], g["top_k"], g["bf16"], g["use_cpu"]) == ("none", "dr_grpo", 50,
                                                                                         False, True)
    # 2 mini-batches x 2 epochs = 4 optimizer steps per step; 128 x 5 / 8 = 80 micro-batches per mini-batch
    assert (g["num_iterations"], g["max_steps"], g["gradient_accumulation_steps"]) == (2, 28, 80)


@pytest.mark.parametrize("override, message", [
    (["algorithm.adv_estimator=rloo", "actor_rollout_ref.rollout.n=5"],
     "algorithm.adv_estimator=rloo: the TRL side runs gae, grpo"),
    (["trainer.total_training_steps=null"], "trainer.total_training_steps is not set"),
    (["trainer.n_gpus_per_node=2"], "one process on one device"),
    (["actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=null"], "ppo_micro_batch_size_per_gpu is not set"),
    (["actor_rollout_ref.actor.optim.lr_warmup_steps=10"], "constant learning rate without warmup"),
    (["actor_rollout_ref.rollout.top_p=0.9"], "TRL's PPO samples with top_p=1"),
    (["critic.optim.lr_scheduler_type=cosine"], "critic.optim: the TRL side runs a constant learning rate"),
])
def test_what_the_trl_side_cannot_run_is_refused_by_name(tmp_path, override, message):
    with pytest.raises(ValueError, match=message):
        peer_trl.load_config(keys("gae", *override))
    with pytest.raises(SystemExit, match=f"^peer_trl: .*{message}"):  # before anything loads
        peer_trl.main([f"--metrics={tmp_path / 'm.jsonl'}", *keys("gae", *override)])
    assert not (tmp_path / "m.jsonl").exists()


def test_grpo_refuses_a_kl_in_the_reward_and_unknown_loss_modes():
    with pytest.raises(ValueError, match="TRL's GRPO has no KL in the reward"):
        mapped("grpo", "algorithm.use_kl_in_reward=True")
    with pytest.raises(ValueError, match="loss_agg_mode=seq-mean-token-sum: the TRL side maps token-mean"):
        mapped("grpo", "actor_rollout_ref.actor.loss_agg_mode=seq-mean-token-sum")


def test_without_trl_the_driver_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "trl", None)  # `import trl` raises ImportError
    with pytest.raises(SystemExit, match=r"the TRL side needs TRL 1\.12\.0 in .*: pip install trl==1\.12\.0"):
        peer_trl.main([f"--metrics={tmp_path / 'm.jsonl'}", *keys("grpo")])
    assert not (tmp_path / "m.jsonl").exists()


def test_metrics_row_by_hand():
    row = peer_trl.metrics_row(2, 4.0, prompt_tokens=120, response_lengths=[10, 30, 20], scores=[1.0, 0.0, 0.5],
                               phases={"gen": 3.0, "reward": 0.25}, peak_gib=1.5, n_gpus=2)
    assert row == {"step": 2, "timing_s/step": 4.0, "timing_s/gen": 3.0, "timing_s/reward": 0.25,
                   "perf/total_num_tokens": 180, "perf/time_per_step": 4.0, "perf/throughput": 180 / 4.0 / 2,
                   "response_length/mean": 20.0, "critic/score/mean": 0.5, "perf/max_memory_allocated_gb": 1.5}


def test_step_metrics_write_one_row_per_training_step(tmp_path):
    times, reads = iter([10.0, 11.0, 13.5, 14.0, 15.0, 15.5, 18.0]), []
    path = tmp_path / "trl" / "metrics.jsonl"
    path.parent.mkdir()
    path.write_text('{"step": 9}\n')  # an earlier run's row goes
    m = peer_trl.StepMetrics(path, optimizer_steps=2, sync=lambda: reads.append("sync"),
                             peak_gib=lambda: 1.25, clock=lambda: reads.append("clock") or next(times))
    assert path.read_text() == ""
    m.start()  # 10
    with m.phase("gen"):  # 11 -> 13.5
        pass
    m.scored(100, [8, 8], [1.0, 0.0])
    assert m.optimizer_step() is None  # the first of the step's two optimizer steps
    first = m.optimizer_step()  # 14
    assert first == {"step": 1, "timing_s/step": 4.0, "timing_s/gen": 2.5, "perf/total_num_tokens": 116,
                     "perf/time_per_step": 4.0, "perf/throughput": 29.0, "response_length/mean": 8.0,
                     "critic/score/mean": 0.5, "perf/max_memory_allocated_gb": 1.25}
    owner = types.SimpleNamespace(double=lambda x: 2 * x)
    inner = owner.double
    with m.timing(owner, "double", "gen"):
        assert owner.double(3) == 6  # 15 -> 15.5
    assert owner.double is inner
    assert owner.double(1) == 2 and m.phases == {"gen": 0.5}  # outside the block: not timed
    m.optimizer_step()
    second = m.optimizer_step()  # 18
    assert second["timing_s/step"] == 4.0 and second["timing_s/gen"] == 0.5 and second["perf/total_num_tokens"] == 0
    assert "critic/score/mean" not in second
    assert reads == ["sync", "clock"] * 7  # the device is waited for before every reading
    assert peers.read_rlkit_metrics(path) == m.rows == [first, second]


def test_trainer_callback_drives_the_rows(tmp_path):
    times = iter([0.0, 2.0])
    m = peer_trl.StepMetrics(tmp_path / "m.jsonl", clock=lambda: next(times))
    cb = peer_trl.trainer_callback(m)
    cb.on_train_begin(None, None, None)
    cb.on_step_end(None, None, None)
    assert [r["timing_s/step"] for r in m.rows] == [2.0]


GSM8K_ROW = {"data_source": "openai/gsm8k", "extra_info": {"split": "train", "index": 0}}


def items_of(tok, prompts_and_truths):
    return [dict(GSM8K_ROW, prompt_ids=tok.encode(p), ground_truth=t) for p, t in prompts_and_truths]


def test_ppo_sequences_find_their_prompt_and_get_rlkits_gsm8k_score(tmp_path):
    from tiny import char_tokenizer

    tok = char_tokenizer()
    items = items_of(tok, [("Q1?", "72"), ("Q1?x", "5")])
    m = peer_trl.StepMetrics(tmp_path / "m.jsonl")
    index = peer_trl.PromptIndex([it["prompt_ids"] for it in items])
    seqs = [tok.encode("Q1?x so #### 5"), tok.encode("Q1? #### 7"), tok.encode("Q1?#### 72")]
    assert [index.find(s) for s in seqs] == [(1, 4), (0, 3), (0, 3)]

    def decode(ids):
        return tok.decode(ids, skip_special_tokens=True)

    assert peer_trl.score_sequences(seqs, index, items, decode, m) == [1.0, 0.0, 1.0]
    assert (m.prompt_tokens, m.response_lengths, m.scores) == (10, [10, 7, 7], [1.0, 0.0, 1.0])
    with pytest.raises(KeyError, match="no dataset prompt begins"):
        index.find(tok.encode("Q2? #### 1"))


def test_ppo_reward_model_answers_as_a_reward_model(tmp_path):
    """TRL's PPO calls ``getattr(m, m.base_model_prefix)(...)``, then ``m.score(hidden_states[-1])``, and reads the
    value at the last response token."""
    import torch
    from tiny import char_tokenizer

    tok = char_tokenizer()
    m = peer_trl.StepMetrics(tmp_path / "m.jsonl")
    model = peer_trl.ppo_reward_model(items_of(tok, [("Q1?", "72")]), tok, m)
    pad = tok.pad_token_id
    rows = [[pad, pad] + tok.encode("Q1?#### 72"), [pad] + tok.encode("Q1?#### 725")]  # left-padded
    ids = torch.tensor(rows)
    mask = ids != pad
    out = getattr(model, model.base_model_prefix)(input_ids=ids.masked_fill(~mask, 0), attention_mask=mask,
                                                  position_ids=mask.cumsum(1) - 1, return_dict=True,
                                                  output_hidden_states=True, use_cache=False)
    values = model.score(out.hidden_states[-1])
    assert values.shape == (2, 12, 1) and values[:, -1, 0].tolist() == [1.0, 0.0]
    assert (m.prompt_tokens, m.response_lengths, m.scores) == (6, [7, 8], [1.0, 0.0]) and "reward" in m.phases


def test_grpo_reward_scores_what_trl_passes(tmp_path):
    m = peer_trl.StepMetrics(tmp_path / "m.jsonl")
    fn = peer_trl.grpo_reward(m)
    scores = fn(prompts=["p", "p"], completions=["so #### 72", "#### 71"], completion_ids=[[1, 2, 3], [4, 5]],
                data_source=["openai/gsm8k"] * 2, ground_truth=["72", "72"], extra_info=[{}, {}],
                prompt_tokens=[40, 40], trainer_state=None, log_extra=None, log_metric=None)
    assert scores == [1.0, 0.0]
    assert (m.prompt_tokens, m.response_lengths, m.scores) == (80, [3, 2], [1.0, 0.0]) and "reward" in m.phases


# ---------------------------------------------------------------------- with TRL 1.12.0 importable
def test_trl_takes_every_mapped_argument(tmp_path):
    trl = pytest.importorskip("trl")
    from trl.experimental.ppo import PPOConfig

    out = f"trainer.default_local_dir={tmp_path}"
    g = trl.GRPOConfig(**mapped("grpo", out, on_cuda=False))
    assert (g.generation_batch_size, g.steps_per_generation, g.num_generations, g.beta) == (1280, 160, 5, 0.001)
    p = PPOConfig(**mapped("gae", out, on_cuda=False))
    assert (p.num_mini_batches, p.gradient_accumulation_steps, p.response_length) == (4, 32, 512)


@pytest.mark.parametrize("estimator", ["gae", "grpo"])
def test_trl_side_trains_two_steps_on_cpu_through_peers_command(tmp_path, gsm8k_source, qwen_tokenizer_dir,
                                                                  estimator):
    pytest.importorskip("trl")
    from rlkit.datasets import RLDataset, gsm8k
    from rlkit.training.models import load_tokenizer

    files = gsm8k(local_dir=tmp_path / "gsm8k", source=str(gsm8k_source))
    out = tmp_path / "out"
    _, model_cfg = e2e.make_model("tiny", str(qwen_tokenizer_dir), out / "model")
    n = 2 if estimator == "grpo" else 1
    A = "actor_rollout_ref.actor"
    override = ["data.max_response_length=8", "data.train_max_samples=16", "trainer.device=cpu",
                "actor_rollout_ref.rollout.ignore_eos=True", f"{A}.ppo_mini_batch_size=1",
                f"{A}.ppo_micro_batch_size_per_gpu={n}", f"critic.ppo_micro_batch_size_per_gpu={n}"]
    args = peers.build_parser().parse_args(["--estimator", estimator, "--out", str(out), "--data",
                                            str(tmp_path / "gsm8k"), "--prompts", "2", "--n", str(n), "--steps", "2",
                                            *[f"--override={o}" for o in override]])
    side = peers.plan_sides(args, ["trl"])["trl"]
    side["cwd"].mkdir(parents=True)
    proc = subprocess.run(side["argv"], cwd=side["cwd"], capture_output=True, text=True, timeout=900,
                          env=dict(os.environ, TRL_EXPERIMENTAL_SILENCE="1"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    rows = side["read"](side["metrics"])
    assert [r["step"] for r in rows] == [1, 2]
    # the tokens of a step: 2 prompts' tokens n times each and 2 x n responses of exactly 8 tokens (ignore_eos)
    lengths = RLDataset(files["train"], load_tokenizer(str(out / "model")), max_samples=16).prompt_lengths()
    two_prompts = {n * (a + b) for i, a in enumerate(lengths) for b in lengths[i + 1:]}
    for r in rows:
        assert r["response_length/mean"] == 8.0 and r["perf/total_num_tokens"] - 2 * n * 8 in two_prompts
        assert r["perf/throughput"] == pytest.approx(r["perf/total_num_tokens"] / r["timing_s/step"])
        assert 0.0 <= r["critic/score/mean"] <= 1.0 and r["timing_s/step"] > r["timing_s/gen"] > 0
        assert "timing_s/reward" in r and "perf/max_memory_allocated_gb" not in r  # no GPU
    s = peers.side_summary(rows, warmup=1, model_cfg=model_cfg, sequences=2 * n)
    assert s["steps_in_median"] == [2] and set(s["phase_s_median"]) == {"gen", "reward"}
    assert json.loads(json.dumps(s))["throughput_median"] > 0
