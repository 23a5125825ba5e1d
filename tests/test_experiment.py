"""End-to-end: the whole PPO loop on tiny real models (no mocked parts)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rewards_for_tests import digit_fraction  # the easy behaviour the learning test rewards
from tiny import char_tokenizer, make_tiny_model, toy_parquet

from rlkit import Experiment, PPOConfig

REPO = Path(__file__).resolve().parents[1]




@pytest.fixture(scope="module")
def char_model(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("char_model"), char_tokenizer(), hidden=32, layers=2)


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    """verl-schema parquet with 32 short prompts."""
    return toy_parquet(tmp_path_factory.mktemp("toy_data"))


def toy_overrides(model_dir, data_dir, **extra):
    o = {
        "data.train_files": f"{data_dir}/train.parquet", "data.val_files": f"{data_dir}/test.parquet",
        "data.train_batch_size": 8, "data.max_prompt_length": 32, "data.max_response_length": 8,
        "actor_rollout_ref.model.path": model_dir, "actor_rollout_ref.rollout.name": "hf",
        "actor_rollout_ref.rollout.n": 4, "actor_rollout_ref.actor.ppo_mini_batch_size": 4,
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu": 8,
        "actor_rollout_ref.actor.optim.lr": 3e-3, "critic.optim.lr": 3e-3,
        "trainer.n_gpus_per_node": 1, "trainer.device": "cpu", "trainer.logger": "['console']",
    }
    o.update(extra)
    return [f"{k}={v}" for k, v in o.items()]


@pytest.mark.slow
def test_reward_rises_on_easy_behaviour(char_model, toy_data):
    """Seeded: mean reward of the last 3 steps clearly above the first 3 (whole loop, GAE + critic)."""
    exp = Experiment(PPOConfig.from_overrides(toy_overrides(char_model, toy_data)), reward_fn=digit_fraction)
    hist = exp.run(24, progress=False)
    before = hist["critic/score/mean"].iloc[:3].mean()
    after = hist["critic/score/mean"].iloc[-3:].mean()
    print(f"digit-fraction reward: first 3 steps {before:.3f}, last 3 steps {after:.3f}")
    assert before < 0.25  # ~10 of 101 tokens are digits
    assert after > before + 0.3, (before, after)


def test_an_experiment_made_again_releases_the_first(char_model, toy_data):
    """A notebook cell run twice (``exp = Experiment(cfg)``): the first Experiment, dropped without ``shutdown()``,
    releases its rank once it is collected (models freed, the process group left), and the second one steps."""
    import gc
    import weakref

    from rlkit.training.rank_worker import _PROCESS_GROUP_USERS

    users = _PROCESS_GROUP_USERS[0]  # ranks of this process on its process group (0 unless a test left one)
    cfg = PPOConfig.from_overrides(toy_overrides(char_model, toy_data))
    exp = Experiment(cfg, reward_fn=digit_fraction)
    rank = weakref.ref(exp.worker.local)
    exp = Experiment(cfg, reward_fn=digit_fraction)
    gc.collect()
    assert rank() is None and _PROCESS_GROUP_USERS[0] == users + 1  # only the second one is left
    try:
        assert exp.step().step == 1
    finally:
        exp.shutdown()
    assert _PROCESS_GROUP_USERS[0] == users


def test_one_intra_op_thread_sets_one_and_restores_the_count():
    import torch

    from rlkit.experiment import one_intra_op_thread

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with one_intra_op_thread():
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with pytest.raises(KeyError), one_intra_op_thread():
            raise KeyError("an error inside still restores the count")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_the_drivers_own_math_runs_on_one_thread(char_model, toy_data, monkeypatch):
    """The driver's advantage, log-prob-gap and batch-metric math is shielded from busy processes on its cores
    (one_intra_op_thread); the process's thread count is back after the step."""
    import torch

    from rlkit import experiment

    seen = []

    def recording(fn):
        def record(*a, **k):
            seen.append((fn.__name__, torch.get_num_threads()))
            return fn(*a, **k)
        return record

    monkeypatch.setattr(experiment.algos, "compute_advantage", recording(experiment.algos.compute_advantage))
    monkeypatch.setattr(experiment, "_data_metrics", recording(experiment._data_metrics))
    monkeypatch.setattr(experiment, "_rollout_mismatch", recording(experiment._rollout_mismatch))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        Experiment(PPOConfig.from_overrides(toy_overrides(char_model, toy_data)), reward_fn=digit_fraction).step()
        assert seen == [("_rollout_mismatch", 1), ("compute_advantage", 1), ("_data_metrics", 1)]
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_step_result_contents(char_model, toy_data):
    exp = Experiment(PPOConfig.from_overrides(toy_overrides(char_model, toy_data)), reward_fn=digit_fraction)
    res = exp.step()
    assert res.step == 1 and exp.global_step == 1
    assert len(res.rollouts) == 8 * 4
    for col in ["prompt", "response", "ground_truth", "score", "reward", "response_length", "finish_reason"]:
        assert col in res.rollouts.columns
    assert set(res.rollouts["finish_reason"]) <= {"stop", "length"}
    assert res.rollouts["response_length"].max() <= 8
    for key in ["critic/score/mean", "critic/rewards/mean", "critic/advantages/mean", "critic/returns/mean",
                "critic/values/mean", "critic/vf_explained_var", "response_length/mean", "response_length/max",
                "response_length/min", "response_length/clip_ratio", "prompt_length/mean", "actor/pg_loss",
                "actor/pg_clipfrac", "actor/ppo_kl", "actor/entropy", "actor/grad_norm", "critic/vf_loss",
                "critic/vf_clipfrac", "critic/grad_norm", "timing_s/gen", "timing_s/step", "perf/throughput",
                "perf/total_num_tokens", "training/rollout_probs_diff_mean"]:
        assert key in res.metrics, key
    # the hf engine shares the actor's weights: its log-probs equal the actor's recomputation
    assert res.metrics["training/rollout_probs_diff_max"] < 1e-4
    assert res.metrics["training/rollout_probs_diff_valid"] == 1
    assert res.metrics["training/rollout_actor_probs_pearson_corr"] > 0.9999
    assert abs(res.metrics["rollout_corr/kl"]) < 1e-4 and abs(res.metrics["rollout_corr/chi2_token"]) < 1e-4
    assert res.metrics["rollout_corr/training_ppl"] == pytest.approx(res.metrics["rollout_corr/rollout_ppl"], rel=1e-4)
    # scores are the reward function's values, one per sample
    expected = [digit_fraction(None, r, None) for r in res.rollouts["response"]]
    assert res.rollouts["score"].tolist() == pytest.approx(expected)
    assert len(exp.history) == 1 and exp.history["step"].tolist() == [1]


def test_kl_loss_and_grpo_path(char_model, toy_data):
    ov = toy_overrides(char_model, toy_data, **{"algorithm.adv_estimator": "grpo",
                                               "actor_rollout_ref.actor.use_kl_loss": True})
    exp = Experiment(PPOConfig.from_overrides(ov), reward_fn=digit_fraction)
    assert not exp.worker.has_critic and exp.worker.has_ref
    res = exp.step()
    assert "actor/kl_loss" in res.metrics and res.metrics["actor/kl_loss"] >= 0
    assert "critic/values/mean" not in res.metrics


def _comparable(metrics):
    # timings and memory readings differ run to run; everything the algorithm computes must match
    return {k: v for k, v in metrics.items()
            if not k.startswith(("timing", "perf/throughput", "perf/time", "perf/max_memory", "perf/cpu_memory"))}


def test_save_resume_continues_exactly(char_model, toy_data, tmp_path):
    ov = toy_overrides(char_model, toy_data)
    straight = Experiment(PPOConfig.from_overrides(ov), reward_fn=digit_fraction)
    straight.run(3, progress=False)
    expected = _comparable(straight.history.iloc[-1].to_dict())

    first = Experiment(PPOConfig.from_overrides(ov), reward_fn=digit_fraction)
    first.run(2, progress=False)
    ckpt = first.save(tmp_path / "ckpt")
    first.save(tmp_path / "ckpt")  # overwriting a checkpoint with a newer one is allowed
    resumed = Experiment.resume(ckpt, reward_fn=digit_fraction)
    assert resumed.global_step == 2 and len(resumed.history) == 2
    res = resumed.step()
    assert res.step == 3
    assert _comparable(resumed.history.iloc[-1].to_dict()) == pytest.approx(expected)


def test_save_refuses_foreign_folder(char_model, toy_data, tmp_path):
    exp = Experiment(PPOConfig.from_overrides(toy_overrides(char_model, toy_data)), reward_fn=digit_fraction)
    precious = tmp_path / "mywork"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not an rlkit checkpoint"):
        exp.save(precious)
    assert (precious / "notes.txt").read_text() == "keep me"
    with pytest.raises(FileNotFoundError, match="not an rlkit checkpoint"):
        Experiment.resume(precious)


def test_interrupted_step_leaves_experiment_usable(char_model, toy_data):
    calls = {"n": 0}

    def flaky(data_source, solution_str, ground_truth, extra_info=None):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt  # the user pressed stop mid-step
        return digit_fraction(data_source, solution_str, ground_truth)

    exp = Experiment(PPOConfig.from_overrides(toy_overrides(char_model, toy_data)), reward_fn=flaky)
    pos = exp.sampler.state_dict()
    with pytest.raises(KeyboardInterrupt):
        exp.step()
    assert exp.global_step == 0 and exp.sampler.state_dict() == pos
    res = exp.step()
    assert res.step == 1 and len(res.rollouts) == 32


def test_reward_error_names_sample(char_model, toy_data):
    from rlkit.rewards import RewardError

    def broken(data_source, solution_str, ground_truth, extra_info=None):
        raise ZeroDivisionError("oops")

    exp = Experiment(PPOConfig.from_overrides(toy_overrides(char_model, toy_data)), reward_fn=broken)
    with pytest.raises(RewardError, match="toy/digits") as info:
        exp.step()
    assert isinstance(info.value.__cause__, ZeroDivisionError)


def test_validate(char_model, toy_data):
    exp = Experiment(PPOConfig.from_overrides(toy_overrides(char_model, toy_data)), reward_fn=digit_fraction)
    m = exp.validate()
    assert len(exp.last_validation) == 4
    # a reward returning a number: its core metric is acc, the score under val-aux (as verl 0.9 names them)
    assert m["val-core/toy/digits/acc/mean@1"] == pytest.approx(exp.last_validation["score"].mean())
    assert m["val-aux/toy/digits/reward/mean@1"] == m["val-core/toy/digits/acc/mean@1"]
    assert not any(k.startswith("val-core/") and "/reward/" in k for k in m)


def _read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_rollout_and_validation_dumps_follow_verl(char_model, tmp_path):
    """trainer.rollout_data_dir / validation_data_dir: <dir>/<global step>.jsonl with one line per response,
    verl's keys plus the reward's extra keys; the scores are the ones the step trained on and reported."""
    import numpy as np
    import pandas as pd

    data = tmp_path / "data"
    data.mkdir()
    rows = [{"data_source": "toy/digits", "prompt": [{"role": "user", "content": f"count {i}"}], "ability": "toy",
             "reward_model": {"style": "rule", "ground_truth": str(i)}, "extra_info": {"index": i}} for i in range(16)]
    pd.DataFrame(rows).to_parquet(data / "train.parquet")
    pd.DataFrame(rows[:3]).to_parquet(data / "test.parquet")

    def reward(data_source, solution_str, ground_truth, extra_info=None):  # a dict: its other keys are dumped too
        return {"score": digit_fraction(data_source, solution_str, ground_truth), "chars": len(solution_str)}

    rollout_dir, val_dir = tmp_path / "out" / "rollouts", tmp_path / "val"
    val_dir.mkdir()
    (val_dir / "notes.txt").write_text("keep me")
    ov = toy_overrides(char_model, data, **{"trainer.rollout_data_dir": rollout_dir,
                                            "trainer.validation_data_dir": val_dir})
    exp = Experiment(PPOConfig.from_overrides(ov), reward_fn=reward)
    val_metrics = {0: exp.validate()}
    steps = [exp.step(), exp.step()]
    val_metrics[2] = exp.validate()
    exp.shutdown()

    assert sorted(p.name for p in rollout_dir.iterdir()) == ["1.jsonl", "2.jsonl"]
    assert sorted(p.name for p in val_dir.iterdir()) == ["0.jsonl", "2.jsonl", "notes.txt"]
    assert (val_dir / "notes.txt").read_text() == "keep me"
    tok = exp.tokenizer
    for res in steps:
        lines = _read_jsonl(rollout_dir / f"{res.step}.jsonl")
        assert len(lines) == 8 * 4  # train_batch_size x rollout.n
        assert all(list(line) == ["input", "output", "gts", "score", "step", "chars"] for line in lines)
        assert [line["step"] for line in lines] == [res.step] * 32
        # the prompt's tokens without padding and special tokens ("<|user|>count i\n<|assistant|>" -> "count i",
        # the spaces as this tokenizer keeps them), beside its own ground truth i
        width = res.batch["prompts"].shape[1]
        real = res.batch["attention_mask"][:, :width].bool()
        prompts = [tok.decode(ids[m].tolist(), skip_special_tokens=True) for ids, m in zip(res.batch["prompts"], real)]
        assert [line["input"] for line in lines] == prompts
        assert ["".join(line["input"].split()) for line in lines] == [f"count{line['gts']}" for line in lines]
        assert [line["gts"] for line in lines] == res.rollouts["ground_truth"].tolist()
        lengths = res.batch["response_mask"].sum(-1).long().tolist()
        decoded = [tok.decode(ids[:n], skip_special_tokens=True) for ids, n in zip(res.batch["responses"].tolist(), lengths)]
        assert [line["output"] for line in lines] == decoded == res.rollouts["response"].tolist()
        assert any(decoded) and all(isinstance(text, str) for text in decoded)
        scores = [line["score"] for line in lines]
        assert scores == res.rollouts["score"].tolist()  # the per-sequence score the step trained on
        assert scores == pytest.approx([digit_fraction(None, line["output"], None) for line in lines], abs=1e-6)
        assert np.mean(scores) == pytest.approx(res.metrics["critic/score/mean"], abs=1e-6)
        assert [line["chars"] for line in lines] == [len(line["output"]) for line in lines]
        assert res.metrics["timing_s/dump_rollout_generations"] >= 0  # verl's timing name

    for step, metrics in val_metrics.items():
        lines = _read_jsonl(val_dir / f"{step}.jsonl")
        assert len(lines) == 3  # the validation set, val_kwargs.n=1
        assert all(list(line) == ["input", "output", "gts", "score", "step", "reward", "chars"] for line in lines)
        assert [line["step"] for line in lines] == [step] * 3
        assert [("".join(line["input"].split()), line["gts"]) for line in lines] == [(f"count{i}", str(i))
                                                                                       for i in range(3)]
        assert all(isinstance(line["output"], str) for line in lines)
        assert [line["reward"] for line in lines] == [line["score"] for line in lines]  # verl's validation lines
        assert [line["score"] for line in lines] == pytest.approx([digit_fraction(None, line["output"], None)
                                                                    for line in lines])
        assert np.mean([line["score"] for line in lines]) == pytest.approx(metrics["val-core/toy/digits/reward/mean@1"])
        assert [line["chars"] for line in lines] == [len(line["output"]) for line in lines]
    last = _read_jsonl(val_dir / "2.jsonl")
    assert [line["output"] for line in last] == exp.last_validation["response"].tolist()


def test_custom_chat_template_builds_every_prompt(char_model, toy_data):
    """actor_rollout_ref.model.custom_chat_template (verl): the tokenizer's chat template is replaced before any
    prompt is built - the datasets' prompts, the ids the step generates from, the ranks' tokenizer."""
    template = "{% for m in messages %}Q: {{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}A:{% endif %}"
    ov = toy_overrides(char_model, toy_data, **{"actor_rollout_ref.model.custom_chat_template": f'"{template}"'})
    cfg = PPOConfig.from_overrides(ov)
    assert cfg.actor_rollout_ref.model.custom_chat_template == template  # quoted on the command line, as in verl
    exp = Experiment(cfg, reward_fn=digit_fraction)
    assert exp.tokenizer.chat_template == exp.worker.tokenizer.chat_template == template
    # this tiny tokenizer, saved and loaded again, encodes no whitespace: the ids read "Q:count0A:"
    for ds in (exp.train_dataset, exp.val_dataset):
        item = ds[0]
        assert item["prompt_text"] == "Q: count 0\nA:"  # "<|user|>count 0\n<|assistant|>" with the model's own
        assert exp.tokenizer.decode(item["prompt_ids"]) == "Q:count0A:"
    res = exp.step()
    exp.shutdown()
    assert all(re.fullmatch(r"Q: count \d+\nA:", p) for p in res.rollouts["prompt"])
    width = res.batch["prompts"].shape[1]
    real = res.batch["attention_mask"][:, :width].bool()
    prompts = [exp.tokenizer.decode(ids[m].tolist()) for ids, m in zip(res.batch["prompts"], real)]
    assert prompts == ["".join(p.split()) for p in res.rollouts["prompt"]]  # the ids generated from
    assert all(re.fullmatch(r"Q:count\d+A:", p) for p in prompts)
    assert len(set(prompts)) == 8  # train_batch_size prompts, rollout.n=4 responses each


# ---------------------------------------------------------------------- GSM8K with the real Qwen2.5 tokenizer
@pytest.fixture(scope="module")
def gsm8k_files(tmp_path_factory, gsm8k_source):
    from rlkit.datasets import gsm8k

    return gsm8k(local_dir=tmp_path_factory.mktemp("gsm8k"), source=gsm8k_source)


@pytest.fixture(scope="module")
def qwen_tiny(tmp_path_factory, qwen_tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(qwen_tokenizer_dir)
    return make_tiny_model(tmp_path_factory.mktemp("qwen_tiny"), tok, hidden=16, layers=1, heads=2, kv_heads=1,
                           intermediate=32)


def gsm8k_overrides(model_dir, files, out_dir):
    return [
        f"data.train_files={files['train']}", f"data.val_files={files['test']}",
        "data.train_batch_size=2", "data.max_prompt_length=512", "data.max_response_length=16",
        "data.val_max_samples=4",
        f"actor_rollout_ref.model.path={model_dir}", "actor_rollout_ref.rollout.name=hf",
        "actor_rollout_ref.actor.optim.lr=1e-6", "actor_rollout_ref.actor.ppo_mini_batch_size=2",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2", "actor_rollout_ref.rollout.n=2",
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=4",
        "critic.optim.lr=1e-5", "critic.ppo_micro_batch_size_per_gpu=2",
        "algorithm.kl_ctrl.kl_coef=0.001", "trainer.logger=['console','jsonl']",
        "trainer.val_before_train=True", "trainer.n_gpus_per_node=1", "trainer.nnodes=1", "trainer.device=cpu",
        "trainer.save_freq=-1", "trainer.test_freq=2", "trainer.total_training_steps=2",
        f"trainer.default_local_dir={out_dir}",
    ]


@pytest.mark.slow
def test_gsm8k_two_steps_experiment(qwen_tiny, gsm8k_files, tmp_path):
    exp = Experiment(PPOConfig.from_overrides(gsm8k_overrides(qwen_tiny, gsm8k_files, tmp_path)))
    for expected_step in (1, 2):
        res = exp.step()
        assert res.step == expected_step
        assert len(res.rollouts) == 4
        assert res.rollouts["prompt"].str.contains("####").all()  # verl's instruction is in every prompt
        assert set(res.rollouts["score"]) <= {0.0, 1.0}
        assert res.rollouts["ground_truth"].str.fullmatch(r"-?[0-9.]+").all()
    assert "val-core/openai/gsm8k/acc/mean@1" in exp.validate()


@pytest.mark.slow
def test_gsm8k_two_steps_main_ppo(qwen_tiny, gsm8k_files, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "rlkit.main_ppo", *gsm8k_overrides(qwen_tiny, gsm8k_files, tmp_path)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [l for l in proc.stdout.splitlines() if l.startswith("step:")]
    assert [l.split(" - ")[0] for l in lines] == ["step:0", "step:1", "step:2"]  # val before train, 2 steps
    assert "critic/score/mean:" in lines[1] and "val-core/openai/gsm8k/acc/mean@1:" in lines[2]
    rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert "actor/pg_loss" in rows[2]


def test_main_ppo_rejects_bad_config(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "rlkit.main_ppo", "actor_rollout_ref.actor.optim.lrr=1e-6"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert "actor_rollout_ref.actor.optim.lr" in proc.stderr


def test_memory_recorded_at_every_phase_boundary(char_model, toy_data):
    exp = Experiment(PPOConfig.from_overrides(toy_overrides(char_model, toy_data)), reward_fn=digit_fraction)
    res = exp.step()
    mem = res.memory
    expected = {"step", "wake", "gen", "sleep", "reward", "old_log_prob", "values", "adv", "update_critic",
                "update_actor", "update_weights"}
    assert set(mem["phase"]) == expected
    for phase, g in mem.groupby("phase"):
        assert set(g["event"]) == {"start", "end"}, phase
    assert (mem["step"] == 1).all() and set(mem["metric"]) >= {"host_rss"}  # CPU: host memory only
    assert res.metrics["perf/cpu_memory_used_gb"] > 0
    assert res.metrics["timing_s/memory_snapshots"] < res.metrics["timing_s/step"]
    assert set(exp.memory["step"].dropna()) == {1}
    with pytest.raises(ValueError, match="no GPU memory snapshots"):
        exp.memory_balance()  # CPU: nothing to balance, and it says so


# ---------------------------------------------------------------------- the user's input is checked before models load
@pytest.fixture
def no_models(monkeypatch):
    """Fail the test if a worker (models) is built."""
    from rlkit.training.rank_worker import RankWorker

    def refuse(*a, **k):
        raise AssertionError("the worker was built before the input was checked")

    monkeypatch.setattr(RankWorker, "__init__", refuse)


def test_overlong_prompts_refused_before_models_load(char_model, toy_data, no_models):
    from rlkit.datasets.rl_dataset import PromptTooLongError

    ov = toy_overrides(char_model, toy_data, **{"data.max_prompt_length": 5})
    with pytest.raises(PromptTooLongError, match=r"data.train_files: 32 of 32 prompts are longer than "
                                                 r"data.max_prompt_length=5 .*data.truncation=left"):
        Experiment(PPOConfig.from_overrides(ov), reward_fn=digit_fraction)


def test_batch_larger_than_dataset_refused_before_models_load(char_model, toy_data, no_models):
    ov = toy_overrides(char_model, toy_data, **{"data.train_batch_size": 64})
    with pytest.raises(ValueError, match=r"data.train_batch_size=64 is larger than the training set \(32 prompts"):
        Experiment(PPOConfig.from_overrides(ov), reward_fn=digit_fraction)


def test_bad_parquet_schema_refused_before_models_load(char_model, tmp_path, no_models):
    pd = pytest.importorskip("pandas")
    pd.DataFrame({"question": ["q"], "answer": ["a"]}).to_parquet(tmp_path / "train.parquet")
    pd.DataFrame({"question": ["q"], "answer": ["a"]}).to_parquet(tmp_path / "test.parquet")
    with pytest.raises(KeyError, match="train.parquet"):
        Experiment(PPOConfig.from_overrides(toy_overrides(char_model, tmp_path)), reward_fn=digit_fraction)


def test_sglang_without_gpu_fails_at_once_naming_what_is_missing(char_model, toy_data, no_models):
    """No GPU here: the first error names the GPU (and packages), not the TP size, and nothing waits."""
    import time

    from rlkit.config import RuntimeRequirementError

    cfg = PPOConfig.from_overrides(toy_overrides(char_model, toy_data, **{
        "actor_rollout_ref.rollout.name": "sglang", "actor_rollout_ref.rollout.tensor_model_parallel_size": 1,
        "trainer.device": "cuda"}))
    t0 = time.monotonic()
    with pytest.raises(RuntimeRequirementError, match="needs an NVIDIA GPU with CUDA, and this machine has none"):
        Experiment(cfg, reward_fn=digit_fraction)
    assert time.monotonic() - t0 < 10


# ---------------------------------------------------------------------- small things a user meets
def test_repr_and_use_after_shutdown(char_model, toy_data):
    exp = Experiment(PPOConfig.from_overrides(toy_overrides(char_model, toy_data)), reward_fn=digit_fraction)
    assert repr(exp).startswith("Experiment(step 0/")
    assert "rollout=hf" in repr(exp) and "batch=8x4" in repr(exp) and "device=cpu" in repr(exp)
    exp.step()
    assert "step 1/" in repr(exp) and "last score=" in repr(exp)
    exp.shutdown()
    assert "shut down" in repr(exp)
    with pytest.raises(RuntimeError, match=r"step\(\) on an Experiment that was shut down.*Experiment.resume"):
        exp.step()
    with pytest.raises(RuntimeError, match="shut down"):
        exp.save("unused")


def test_show_rollouts_of_a_step_not_kept_says_so(char_model, toy_data):
    pytest.importorskip("IPython")
    exp = Experiment(PPOConfig.from_overrides(toy_overrides(char_model, toy_data)), reward_fn=digit_fraction)
    exp.run(2, progress=False)
    assert "<table" in exp.show_rollouts(step=1).data
    with pytest.raises(ValueError, match=r"no rollouts kept for step 99; this experiment holds steps 1\.\.2"):
        exp.show_rollouts(step=99)


def test_experiment_leaves_the_process_random_state_alone(char_model, toy_data, tmp_path):
    """Creating, stepping and resuming an experiment never moves or resets the global RNGs."""
    import random

    import numpy as np
    import torch

    exp = Experiment(PPOConfig.from_overrides(toy_overrides(char_model, toy_data)), reward_fn=digit_fraction)
    exp.step()
    ckpt = exp.save(tmp_path / "ckpt")
    torch.manual_seed(1234)
    random.seed(1234)
    np.random.seed(1234)
    expected = (torch.rand(3), random.random(), np.random.rand())
    torch.manual_seed(1234)
    random.seed(1234)
    np.random.seed(1234)
    resumed = Experiment.resume(ckpt, reward_fn=digit_fraction)
    resumed.step()
    assert torch.equal(torch.rand(3), expected[0])
    assert random.random() == expected[1] and np.random.rand() == expected[2]


def test_reward_kwargs_reach_the_builtin_gsm8k_scorer(qwen_tiny, gsm8k_files, tmp_path):
    """custom_reward_function.reward_kwargs without a path go to the built-in scorer (verl's format_score)."""
    ov = gsm8k_overrides(qwen_tiny, gsm8k_files, tmp_path) + [
        "+custom_reward_function.reward_kwargs.format_score=0.1", "+custom_reward_function.reward_kwargs.method=flexible"]
    exp = Experiment(PPOConfig.from_overrides(ov))
    assert exp.reward_fn("openai/gsm8k", "so it is 41", "42") == 0.1  # a number, the wrong one: format credit
    assert exp.reward_fn("openai/gsm8k", "so it is 42", "42") == 1.0
    assert exp.reward_fn("openai/gsm8k", "no idea", "42") == 0.0


def test_a_step_whose_scores_are_all_equal_warns(char_model, toy_data):
    from rlkit.experiment import NoLearningSignalWarning

    exp = Experiment(PPOConfig.from_overrides(toy_overrides(char_model, toy_data)), reward_fn=lambda *a, **k: 0.0)
    with pytest.warns(NoLearningSignalWarning, match="step 1: all 32 responses scored 0, .*stays 0"):
        exp.step()
    varied = Experiment(PPOConfig.from_overrides(toy_overrides(char_model, toy_data)), reward_fn=digit_fraction)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", NoLearningSignalWarning)
        varied.step()


@pytest.mark.parametrize("seed, shuffle", [(3, True), (None, True), (3, False)])
def test_max_samples_subsets_follow_data_seed_and_shuffle(char_model, toy_data, seed, shuffle):
    """verl's draw (numpy default_rng(seed).choice(rows, N, replace=False), in the order drawn) with
    data.shuffle, the first N rows without; data.seed=null reads as 1, like the prompt sampler."""
    import numpy as np
    import pandas as pd

    ov = toy_overrides(char_model, toy_data, **{"data.train_max_samples": 8, "data.val_max_samples": 2,
                                                "data.seed": "null" if seed is None else seed,
                                                "data.shuffle": shuffle})
    exp = Experiment(PPOConfig.from_overrides(ov), reward_fn=digit_fraction)
    try:
        rows = [exp.train_dataset[i]["index"] for i in range(len(exp.train_dataset))]
        total = len(pd.read_parquet(f"{toy_data}/train.parquet"))
        want = np.random.default_rng(seed or 1).choice(total, 8, replace=False).tolist() if shuffle else list(range(8))
        assert rows == want
        assert len(exp.val_dataset) == 2
    finally:
        exp.shutdown()


@pytest.mark.parametrize("warmup, first_actor_step", [(0, 1), (1, 1), (2, 2)])
def test_critic_warmup_follows_verls_rule(char_model, toy_data, warmup, first_actor_step):
    """verl updates the actor when trainer.critic_warmup <= global step (steps from 1): warmup 0 and 1
    both update at step 1, warmup 2 trains only the critic at step 1."""
    exp = Experiment(PPOConfig.from_overrides(toy_overrides(char_model, toy_data, **{"trainer.critic_warmup": warmup})),
                     reward_fn=digit_fraction)
    try:
        updated = ["actor/pg_loss" in exp.step().metrics for _ in range(2)]
        assert updated == [s >= first_actor_step for s in (1, 2)]
    finally:
        exp.shutdown()


def test_epoch_lr_and_entropy_metrics_follow_verl(char_model, toy_data):
    """training/epoch is the trained batch's epoch (32 prompts / 8 = 4 batches: step 4 is epoch 0);
    actor/lr is the rate the update used (2 warmup steps: 0, then lr/2, then lr); without
    calculate_entropy and entropy_coeff=0 the update computes no entropy, and actor/entropy is the
    old-log-prob pass's value aggregated with loss_agg_mode."""
    lr = 3e-3
    ov = toy_overrides(char_model, toy_data, **{"actor_rollout_ref.actor.optim.lr_warmup_steps": 2})
    exp = Experiment(PPOConfig.from_overrides(ov), reward_fn=digit_fraction)
    try:
        rows = [exp.step().metrics for _ in range(5)]
    finally:
        exp.shutdown()
    assert [r["training/epoch"] for r in rows] == [0, 0, 0, 0, 1]
    assert [r["actor/lr"] for r in rows[:3]] == pytest.approx([0.0, lr / 2, lr])
    assert all(0 < r["actor/entropy"] for r in rows)


def test_update_computes_the_entropy_only_when_used_or_asked():
    import torch

    from rlkit.datasets import RolloutBatch
    from rlkit.algos import token_logprobs
    from rlkit.training.worker import actor_micro_loss, update_entropy

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 5, generator=g)
    mb = RolloutBatch({"responses": torch.randint(0, 5, (2, 3), generator=g), "response_mask": torch.ones(2, 3),
                       "old_log_probs": -torch.rand(2, 3, generator=g), "advantages": torch.randn(2, 3, generator=g)})
    results = {}
    for coeff, calc in ((0.0, False), (0.0, True), (0.1, False)):
        cfg = PPOConfig.from_overrides([f"actor_rollout_ref.actor.entropy_coeff={coeff}",
                                        f"actor_rollout_ref.actor.calculate_entropy={calc}"])
        lp, ent = token_logprobs(logits.view(6, 5), mb["responses"].view(6), 1.0, update_entropy(cfg))
        assert (ent is not None) == (coeff != 0 or calc)
        results[(coeff, calc)] = actor_micro_loss(cfg, lp.view(2, 3), None if ent is None else ent.view(2, 3), mb)
    (loss0, row0), (loss1, row1), (loss2, row2) = results.values()
    assert "actor/entropy" not in row0 and loss0.item() == pytest.approx(row0["actor/pg_loss"])
    assert row1["actor/entropy"] > 0 and loss1.item() == pytest.approx(loss0.item())  # reported, not in the loss
    assert loss2.item() == pytest.approx(row2["actor/pg_loss"] - 0.1 * row2["actor/entropy"])


def test_aborted_responses_are_counted_apart():
    import torch

    from rlkit.datasets import RolloutBatch
    from rlkit.experiment import _data_metrics

    mask = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])  # lengths 3, 0, 1, 0
    z = torch.zeros(4, 3)
    batch = RolloutBatch({"response_mask": mask, "prompts": torch.ones(4, 2, dtype=torch.long),
                          "attention_mask": torch.cat([torch.ones(4, 2), mask], 1), "token_level_scores": z,
                          "token_level_rewards": z, "advantages": z, "returns": z})
    m = _data_metrics(batch, max_response_length=3, max_prompt_length=2)
    assert m["response/aborted_ratio"] == 0.5
    assert (m["response_length_non_aborted/mean"], m["response_length_non_aborted/max"],
            m["response_length_non_aborted/min"], m["response_length_non_aborted/clip_ratio"]) == (2.0, 3.0, 1.0, 0.5)
    assert m["response_length/mean"] == 1.0  # all four


def test_loss_scale_factor_divides_the_actors_summed_losses():
    """seq-mean-token-sum-norm: every actor term is its per-sequence sums' mean / loss_scale_factor (verl), or / R
    when null."""
    import torch

    from rlkit.datasets import RolloutBatch
    from rlkit.training.worker import actor_micro_loss

    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    lp = torch.log(torch.tensor([[0.5, 0.25, 0.9], [0.5, 0.9, 0.9]]))
    # ratio 1 everywhere (old == new), so the clipped loss per token is -A; advantages 1, 2 / 4 -> sums -3, -4, mean -3.5
    mb = RolloutBatch({"response_mask": mask, "old_log_probs": lp.clone(),
                       "advantages": torch.tensor([[1.0, 2.0, 9.0], [4.0, 9.0, 9.0]])})
    ent = torch.tensor([[1.0, 3.0, 5.0], [2.0, 5.0, 5.0]])  # masked sums 4, 2: mean 3
    for factor, divisor in ((None, 3.0), (4.0, 4.0)):
        cfg = PPOConfig.from_overrides(["actor_rollout_ref.actor.loss_agg_mode=seq-mean-token-sum-norm",
                                        f"actor_rollout_ref.actor.loss_scale_factor={'null' if factor is None else factor}",
                                        "actor_rollout_ref.actor.calculate_entropy=True"])
        loss, row = actor_micro_loss(cfg, lp, ent, mb)
        assert row["actor/pg_loss"] == pytest.approx(-3.5 / divisor)
        assert row["actor/entropy"] == pytest.approx(3.0 / divisor)
    with pytest.raises(ValueError, match=r"loss_scale_factor=0(\.0)?: must be > 0 or null"):
        PPOConfig.from_overrides(["actor_rollout_ref.actor.loss_scale_factor=0"])


def test_mfu_metrics_on_a_listed_card_and_none_on_a_cpu(char_model, toy_data, monkeypatch):
    """verl's perf/mfu/{actor,actor_infer,critic}: each phase's model FLOPs over its seconds and the card's peak;
    a CPU is not a listed card, so a CPU step has none - until the table lists one (a pretend 1 TFLOP/s here)."""
    import json
    from pathlib import Path

    from rlkit.diagnostics import flops

    cfg = PPOConfig.from_overrides(toy_overrides(char_model, toy_data))
    with Experiment(cfg, reward_fn=digit_fraction) as exp:
        assert not any(k.startswith("perf/mfu/") for k in exp.step().metrics)
    monkeypatch.setitem(flops.PEAK_BF16_TFLOPS, "cpu", 1.0)
    with Experiment(cfg, reward_fn=digit_fraction) as exp:
        res = exp.step()
    m, rows = res.metrics, len(res.batch)
    dims = {k: v for k, v in json.loads((Path(char_model) / "config.json").read_text()).items() if k in flops.MODEL_DIMS}
    fwd = {head: flops.forward_flops(dims, m["perf/total_num_tokens"], rows, head) for head in ("lm", "value")}
    assert m["perf/mfu/actor_infer"] == pytest.approx(fwd["lm"] / m["timing_s/old_log_prob"] / 1e12)
    assert m["perf/mfu/actor"] == pytest.approx(3 * fwd["lm"] / m["timing_s/update_actor"] / 1e12)
    assert m["perf/mfu/critic"] == pytest.approx(3 * fwd["value"] / m["timing_s/update_critic"] / 1e12)


def test_actor_loss_metric_is_the_whole_loss():
    """actor/loss (verl 0.9's) is what the update backpropagates: pg_loss - entropy_coeff * entropy + kl_loss_coef *
    kl_loss. By hand: ratio 1, A = (1, 3) -> pg -2; entropy (1, 3) -> 2; kl = log p - log p_ref = (0.2, 0.4) -> 0.3;
    -2 - 0.1 * 2 + 0.5 * 0.3 = -2.05."""
    import torch

    from rlkit.datasets import RolloutBatch
    from rlkit.training.worker import actor_micro_loss

    lp = torch.log(torch.tensor([[0.5, 0.25]]))
    mb = RolloutBatch({"response_mask": torch.ones(1, 2), "old_log_probs": lp.clone(),
                       "advantages": torch.tensor([[1.0, 3.0]]), "ref_log_prob": lp - torch.tensor([[0.2, 0.4]])})
    cfg = PPOConfig.from_overrides(["actor_rollout_ref.actor.entropy_coeff=0.1", "actor_rollout_ref.actor.use_kl_loss=True",
                                    "actor_rollout_ref.actor.kl_loss_coef=0.5", "actor_rollout_ref.actor.kl_loss_type=kl"])
    loss, row = actor_micro_loss(cfg, lp, torch.tensor([[1.0, 3.0]]), mb)
    assert (row["actor/pg_loss"].item(), row["actor/entropy"].item(), row["actor/kl_loss"].item()) == pytest.approx(
        (-2.0, 2.0, 0.3))
    assert row["actor/loss"].item() == pytest.approx(-2.05) and loss.item() == pytest.approx(-2.05)


def test_without_recomputing_the_old_log_probs_the_update_uses_its_own_detached():
    """recompute_old_log_prob=False: the old log-probs are the update's own, detached. The ratio is 1, so
    the loss is -mean(A) (token-mean) and the gradient is -A/T per token's log-prob, as the recomputed old
    log-probs of the same actor would give; old log-probs in the batch are not read."""
    import torch

    from rlkit.datasets import RolloutBatch
    from rlkit.training.worker import actor_micro_loss

    adv = torch.tensor([[1.0, -2.0, 0.5], [0.25, 1.0, -1.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    base = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -1.2, -4.0]])
    grads, losses, rows = {}, {}, {}
    for recompute, old in ((True, base.clone()), (False, base - 3.0)):  # False: this column is ignored
        lp = base.clone().requires_grad_(True)
        mb = RolloutBatch({"response_mask": mask, "advantages": adv, "old_log_probs": old})
        cfg = PPOConfig.from_overrides([f"actor_rollout_ref.actor.recompute_old_log_prob={recompute}",
                                        "actor_rollout_ref.actor.ppo_mini_batch_size=1024"])
        loss, row = actor_micro_loss(cfg, lp, None, mb)
        loss.backward()
        grads[recompute], losses[recompute], rows[recompute] = lp.grad, loss.item(), row
    # token-mean over the 5 valid tokens of -A * ratio, ratio 1: -(1 - 2 + 0.5 + 0.25 + 1) / 5 = -0.15
    assert losses[False] == pytest.approx(-0.15) and losses[True] == pytest.approx(-0.15)
    want = -adv * mask / 5  # d(loss)/d(log-prob) = -A / T on valid tokens, 0 on padding
    assert torch.allclose(grads[False], want) and torch.allclose(grads[True], want)
    assert float(rows[False]["actor/ppo_kl"]) == 0.0 and float(rows[False]["actor/pg_clipfrac"]) == 0.0
    # with the column read (the default), old log-probs 3 lower clip every token: the source really differs
    cfg = PPOConfig.from_overrides(["actor_rollout_ref.actor.ppo_mini_batch_size=1024"])
    clipped, _ = actor_micro_loss(cfg, base, None, RolloutBatch({"response_mask": mask, "advantages": adv,
                                                                  "old_log_probs": base - 3.0}))
    assert clipped.item() != pytest.approx(-0.15)


def test_recompute_old_log_prob_false_gives_the_recomputed_update_without_its_pass(char_model, toy_data):
    """One GRPO step from the same seed with and without the old-log-prob pass: the same responses, the same
    loss and the same actor afterwards (the ratio is 1 either way on an actor that has not moved); the step
    without it has no old_log_prob phase and reports the entropy only when the update computes it."""
    import torch

    results = {}
    for recompute in (True, False):
        ov = toy_overrides(char_model, toy_data, **{"algorithm.adv_estimator": "grpo",
                                                   "actor_rollout_ref.actor.ppo_mini_batch_size": 8,
                                                   "actor_rollout_ref.actor.recompute_old_log_prob": recompute})
        exp = Experiment(PPOConfig.from_overrides(ov), reward_fn=digit_fraction)
        try:
            before = exp.worker.call_rank0("full_state_dict")["actor"]
            res = exp.step()
            params = exp.worker.call_rank0("full_state_dict")["actor"]
        finally:
            exp.shutdown()
        assert any(not torch.equal(before[k], params[k]) for k in params)  # the update moved the actor
        results[recompute] = res, params
    (on, p_on), (off, p_off) = results[True], results[False]
    assert on.rollouts["response"].tolist() == off.rollouts["response"].tolist()
    assert "old_log_prob" in on.timing and "old_log_prob" not in off.timing
    assert "actor/entropy" in on.metrics and "actor/entropy" not in off.metrics
    assert off.metrics["actor/ppo_kl"] == 0.0 and off.metrics["actor/pg_clipfrac"] == 0.0
    assert off.metrics["actor/pg_loss"] == pytest.approx(on.metrics["actor/pg_loss"], abs=1e-6)
    # the same gradient: its norm to float32 rounding (the recomputed old log-probs come from another forward
    # pass, so the ratio there is 1 only to rounding; Adam's first step, lr * g / |g|, then magnifies rounding
    # in near-zero gradient entries, so the weights are compared where the gradient is clearly not zero)
    assert off.metrics["actor/grad_norm"] == pytest.approx(on.metrics["actor/grad_norm"], rel=1e-5)
    assert p_on.keys() == p_off.keys()
    moved = [torch.isclose(p_on[k], p_off[k], atol=1e-6).float().mean().item() for k in p_on]
    assert min(moved) > 0.99, moved  # 0.998 in the least-equal tensor when written
