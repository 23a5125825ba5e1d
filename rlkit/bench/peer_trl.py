"""The TRL 1.12.0 side of :mod:`rlkit.bench.peers`: the verl-style keys every side gets, run through TRL's trainers,
one rlkit-style jsonl row per training step.

    python -m rlkit.bench.peer_trl --metrics=peers/trl/metrics.jsonl actor_rollout_ref.model.path=peers/model \\
        data.train_files=$HOME/data/gsm8k/train.parquet algorithm.adv_estimator=grpo actor_rollout_ref.rollout.n=5 \\
        data.train_batch_size=256 actor_rollout_ref.actor.ppo_mini_batch_size=64 trainer.total_training_steps=7 ...

(``python -m rlkit.bench.peers --sides trl --dry-run`` prints the whole command.) The keys are read with rlkit's own
config (:meth:`rlkit.PPOConfig.from_overrides`) and mapped by :func:`ppo_args` and :func:`grpo_args`:
``algorithm.adv_estimator=gae`` runs ``trl.experimental.ppo.PPOTrainer`` (a value model from ``critic.model.path``),
``grpo`` runs ``trl.GRPOTrainer(use_vllm=False)`` with ``num_generations=rollout.n`` and ``beta=kl_loss_coef``
(with ``use_kl_loss``). Prompts come from :class:`rlkit.datasets.RLDataset` (``data.train_files``, its chat template,
``data.max_prompt_length`` and ``data.truncation``); rewards from :func:`rlkit.rewards.default_compute_score` (GSM8K's
scorer), as on the other sides. Each row: ``timing_s/step`` (wall seconds from the previous row, after
``torch.cuda.synchronize``), ``perf/total_num_tokens`` (prompt and response tokens, no padding),
``perf/throughput`` (those / seconds / 1 GPU: verl's definition), ``perf/max_memory_allocated_gb``
(``torch.cuda.max_memory_allocated() / 2**30``, on a GPU), ``critic/score/mean``, ``response_length/mean`` and the
timed phases.

Known differences from rlkit and verl:

* generation is Hugging Face ``generate`` on the training model (no SGLang): PPO generates in chunks of
  ``rollout.log_prob_micro_batch_size_per_gpu`` rows (TRL's ``local_rollout_forward_batch_size``, also its chunk for
  the reference and value passes), GRPO the step's whole batch in one call;
* phases: only ``timing_s/gen`` (TRL's generate call) and ``timing_s/reward`` (rlkit's scorer) are timed; old
  log-probs, reference, values, advantages and the updates are inside ``timing_s/step`` only;
* full-length responses: ``rollout.ignore_eos=True`` gives GRPO ``min_new_tokens = max_response_length`` and PPO no
  stop token; without it, as on the other sides, a response ends at EOS (random weights rarely emit it);
* TRL's PPO trains policy and value model as one model with one loss (``pg_loss + vf_coef * vf_loss``,
  ``vf_coef=1``; the actor's and the critic's learning rates as two AdamW parameter groups, no gradient clipping)
  and accumulates gradients over a step's micro-batches, so it takes one optimizer step per training step where
  rlkit and verl take one per mini-batch (the forward and backward work is the same); it always runs the reference
  pass (KL in the reward: ``kl_coef`` is ``algorithm.kl_ctrl.kl_coef`` with ``algorithm.use_kl_in_reward``, else 0);
  it keeps the step's generation logits in float32 (responses x ``max_response_length`` x vocabulary: 256 x 512
  with Qwen2.5's 151,936 is 80 GB, held twice while TRL joins the chunks - beyond one 80 GB card: lower
  ``--prompts`` for the gae side there); its prompts come from its own shuffled loader (each prompt ``rollout.n``
  times), not rlkit's sampler;
* precision: float32 weights (as rlkit's and verl's master weights) and, on a GPU, ``bf16=True`` with ``train()``
  under ``torch.autocast(bfloat16)``, so that PPO's generation, reference and value passes (outside accelerate's
  autocast in TRL) compute in bf16 as well; ``sdpa`` attention;
* one process on one device (``trainer.n_gpus_per_node * trainer.nnodes`` must be 1); a constant learning rate.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

ESTIMATORS = ("gae", "grpo")
TRL_VERSION = "1.12.0"
INSTALL = f"pip install trl=={TRL_VERSION}"
# verl's algorithm.kl_penalty -> TRL PPO's kl_estimator; actor.loss_agg_mode -> TRL GRPO's loss_type
KL_ESTIMATORS = {"kl": "k1", "k1": "k1", "low_var_kl": "k3", "k3": "k3"}
LOSS_TYPES = {"token-mean": "dapo", "seq-mean-token-mean": "grpo", "seq-mean-token-sum-norm": "dr_grpo"}
MODEL_LOAD = {"dtype": "float32", "attn_implementation": "sdpa"}


# ---------------------------------------------------------------------- the keys -> TRL's arguments
def load_config(overrides: list[str]):
    """rlkit's config of the verl-style ``overrides``, checked for what this driver can run (ValueError otherwise)."""
    from rlkit.config import PPOConfig

    cfg = PPOConfig.from_overrides(list(overrides))
    estimator = cfg.algorithm.adv_estimator
    if estimator not in ESTIMATORS:
        raise ValueError(f"algorithm.adv_estimator={estimator}: the TRL side runs {', '.join(ESTIMATORS)} "
                         "(gae: trl.experimental.ppo.PPOTrainer, grpo: trl.GRPOTrainer)")
    if not cfg.trainer.total_training_steps:
        raise ValueError("trainer.total_training_steps is not set: the TRL side runs that many steps")
    if int(cfg.trainer.n_gpus_per_node) * int(cfg.trainer.nnodes) != 1:
        raise ValueError("the TRL side runs one process on one device: set trainer.n_gpus_per_node=1 trainer.nnodes=1")
    trl_args(cfg, on_cuda=False)  # every mapping check, before anything loads
    return cfg


def batch_sizes(cfg) -> dict[str, int]:
    """Responses per step and per micro-batch, mini-batches per step, micro-batches per mini-batch (verl's actor
    keys: ``data.train_batch_size`` and ``ppo_mini_batch_size`` count prompts, the micro-batch responses; rlkit's
    config check has made each divide the next)."""
    a, n = cfg.actor_rollout_ref.actor, int(cfg.actor_rollout_ref.rollout.n)
    prompts, mini, micro = int(cfg.data.train_batch_size), int(a.ppo_mini_batch_size), a.ppo_micro_batch_size_per_gpu
    if not micro:
        raise ValueError("actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu is not set: it is TRL's "
                         "per_device_train_batch_size")
    return {"responses": prompts * n, "micro": int(micro), "mini_batches": prompts // mini,
            "accumulation": mini * n // int(micro)}


def check_constant_lr(optim, section: str) -> None:
    """ValueError unless ``optim`` (an ``optim`` section) asks for a constant learning rate without warmup."""
    style = optim.get("warmup_style") or optim.lr_scheduler_type
    if style != "constant" or int(optim.lr_warmup_steps) > 0 or float(optim.lr_warmup_steps_ratio) > 0:
        raise ValueError(f"{section}.optim: the TRL side runs a constant learning rate without warmup "
                         f"(got {style}, lr_warmup_steps={optim.lr_warmup_steps}, "
                         f"lr_warmup_steps_ratio={optim.lr_warmup_steps_ratio})")


def common_args(cfg, on_cuda: bool) -> dict:
    """The ``TrainingArguments`` keys both trainers take: the actor's optimizer, micro-batch, sampling temperature,
    precision, seed, folder; no checkpoints, no reporting, a log line per step."""
    o = cfg.actor_rollout_ref.actor.optim
    check_constant_lr(o, "actor_rollout_ref.actor")
    return dict(output_dir=str(cfg.trainer.default_local_dir), learning_rate=float(o.lr),
                weight_decay=float(o.weight_decay), adam_beta1=float(o.betas[0]), adam_beta2=float(o.betas[1]),
                lr_scheduler_type="constant", per_device_train_batch_size=batch_sizes(cfg)["micro"],
                temperature=float(cfg.actor_rollout_ref.rollout.temperature), bf16=on_cuda, use_cpu=not on_cuda,
                gradient_checkpointing=bool(cfg.actor_rollout_ref.model.enable_gradient_checkpointing),
                seed=int(cfg.data.seed or 1), logging_steps=1, report_to="none", save_strategy="no")


def ppo_args(cfg, on_cuda: bool) -> dict:
    """``trl.experimental.ppo.PPOConfig`` keys. TRL's rollout batch is ``per_device_train_batch_size x
    gradient_accumulation_steps``, split into ``num_mini_batches``; ``total_episodes`` counts responses."""
    a, r, alg, b = cfg.actor_rollout_ref.actor, cfg.actor_rollout_ref.rollout, cfg.algorithm, batch_sizes(cfg)
    if float(r.top_p) != 1.0 or int(r.top_k) > 0:
        raise ValueError("TRL's PPO samples with top_p=1 and no top-k: leave rollout.top_p and rollout.top_k unset")
    if alg.kl_penalty not in KL_ESTIMATORS:
        raise ValueError(f"algorithm.kl_penalty={alg.kl_penalty}: TRL's PPO has {', '.join(KL_ESTIMATORS)}")
    if float(a.clip_ratio_low) != float(a.clip_ratio_high):
        raise ValueError("TRL's PPO clips the ratio symmetrically: clip_ratio_low and clip_ratio_high must match")
    check_constant_lr(cfg.critic.optim, "critic")
    return dict(common_args(cfg, on_cuda), gradient_accumulation_steps=b["mini_batches"] * b["accumulation"],
                num_mini_batches=b["mini_batches"], num_ppo_epochs=int(a.ppo_epochs),
                total_episodes=int(cfg.trainer.total_training_steps) * b["responses"],
                response_length=int(cfg.data.max_response_length), stop_token=None if r.ignore_eos else "eos",
                local_rollout_forward_batch_size=int(r.log_prob_micro_batch_size_per_gpu or b["micro"]),
                kl_coef=float(alg.kl_ctrl.kl_coef) if alg.use_kl_in_reward else 0.0,
                kl_estimator=KL_ESTIMATORS[alg.kl_penalty], cliprange=float(a.clip_ratio_low),
                cliprange_value=float(cfg.critic.cliprange_value), vf_coef=1.0, gamma=float(alg.gamma),
                lam=float(alg.lam), whiten_rewards=False, num_sample_generations=0)


def grpo_args(cfg, on_cuda: bool) -> dict:
    """``trl.GRPOConfig`` keys: a generation of ``train_batch_size x n`` responses per step, one optimizer step per
    mini-batch (``gradient_accumulation_steps`` micro-batches), so ``max_steps`` is :func:`steps_per_row` x steps."""
    a, r, alg, b = cfg.actor_rollout_ref.actor, cfg.actor_rollout_ref.rollout, cfg.algorithm, batch_sizes(cfg)
    if a.loss_agg_mode not in LOSS_TYPES:
        raise ValueError(f"actor.loss_agg_mode={a.loss_agg_mode}: the TRL side maps {', '.join(LOSS_TYPES)}")
    if a.use_kl_loss and a.kl_loss_type not in ("low_var_kl", "k3"):
        raise ValueError(f"actor.kl_loss_type={a.kl_loss_type}: TRL's GRPO KL loss is low_var_kl (k3)")
    if alg.use_kl_in_reward:
        raise ValueError("algorithm.use_kl_in_reward: TRL's GRPO has no KL in the reward (use actor.use_kl_loss)")
    length = int(cfg.data.max_response_length)
    return dict(common_args(cfg, on_cuda), gradient_accumulation_steps=b["accumulation"],
                generation_batch_size=b["responses"], num_generations=int(r.n), max_completion_length=length,
                max_steps=int(cfg.trainer.total_training_steps) * steps_per_row(cfg), num_iterations=int(a.ppo_epochs),
                beta=float(a.kl_loss_coef) if a.use_kl_loss else 0.0, use_bias_correction_kl=False,
                epsilon=float(a.clip_ratio_low), epsilon_high=float(a.clip_ratio_high),
                loss_type=LOSS_TYPES[a.loss_agg_mode], entropy_coef=float(a.entropy_coeff),
                scale_rewards="group" if alg.norm_adv_by_std_in_grpo else "none", max_grad_norm=float(a.grad_clip),
                top_p=float(r.top_p), top_k=max(int(r.top_k), 0),
                generation_kwargs={"min_new_tokens": length} if r.ignore_eos else None,
                shuffle_dataset=bool(cfg.data.shuffle), disable_dropout=True, use_vllm=False,
                model_init_kwargs=dict(MODEL_LOAD))


def trl_args(cfg, on_cuda: bool) -> dict:
    """:func:`ppo_args` or :func:`grpo_args`, by ``algorithm.adv_estimator``."""
    estimator = cfg.algorithm.adv_estimator
    if estimator not in ESTIMATORS:
        raise ValueError(f"algorithm.adv_estimator={estimator}: the TRL side runs {', '.join(ESTIMATORS)}")
    return (ppo_args if estimator == "gae" else grpo_args)(cfg, on_cuda)


def steps_per_row(cfg) -> int:
    """Optimizer steps per training step: PPO 1 (see the module docstring), GRPO mini-batches x PPO epochs."""
    if cfg.algorithm.adv_estimator == "gae":
        return 1
    return batch_sizes(cfg)["mini_batches"] * int(cfg.actor_rollout_ref.actor.ppo_epochs)


def ppo_param_groups(cfg) -> list[dict]:
    """AdamW settings of the two models TRL's PPO trains as one: the policy with the actor's optimizer keys, the
    value model with the critic's."""
    def group(model, optim):
        return {"model": model, "lr": float(optim.lr), "weight_decay": float(optim.weight_decay),
                "betas": (float(optim.betas[0]), float(optim.betas[1]))}

    return [group("policy", cfg.actor_rollout_ref.actor.optim), group("value", cfg.critic.optim)]


def ppo_optimizer(policy, value_model, groups: list[dict]):
    """``(AdamW over both models' parameters with their :func:`ppo_param_groups`, a constant schedule)``."""
    import torch

    models = {"policy": policy, "value": value_model}
    opt = torch.optim.AdamW([dict({k: v for k, v in g.items() if k != "model"},
                                  params=[p for p in models[g["model"]].parameters() if p.requires_grad])
                             for g in groups])
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


# ---------------------------------------------------------------------- one row per training step
def metrics_row(step: int, seconds: float, prompt_tokens: int, response_lengths: list[int], scores: list[float],
                phases: dict[str, float], peak_gib: float | None = None, n_gpus: int = 1) -> dict:
    """One training step's rlkit-style metrics; ``perf/throughput`` is verl's: the step's tokens (prompts and
    responses, no padding) per second per GPU.

    >>> from rlkit.bench.peer_trl import metrics_row
    >>> row = metrics_row(3, 2.0, prompt_tokens=100, response_lengths=[50, 150], scores=[1.0, 0.0], phases={"gen": 1.5})
    >>> row["perf/total_num_tokens"], row["perf/throughput"], row["timing_s/gen"], row["critic/score/mean"]
    (300, 150.0, 1.5, 0.5)
    >>> sorted(k for k in row if k.startswith(("perf/", "timing_s/")))  # no memory peak given: none logged
    ['perf/throughput', 'perf/time_per_step', 'perf/total_num_tokens', 'timing_s/gen', 'timing_s/step']
    """
    tokens = prompt_tokens + sum(response_lengths)
    row = {"step": step, "timing_s/step": seconds, **{f"timing_s/{p}": s for p, s in phases.items()},
           "perf/total_num_tokens": tokens, "perf/time_per_step": seconds,
           "perf/throughput": tokens / max(seconds, 1e-9) / n_gpus}
    if response_lengths:
        row["response_length/mean"] = sum(response_lengths) / len(response_lengths)
    if scores:
        row["critic/score/mean"] = sum(scores) / len(scores)
    if peak_gib is not None:
        row["perf/max_memory_allocated_gb"] = peak_gib
    return row


class StepMetrics:
    """What a training step saw (tokens and scores from the reward side, seconds of its timed phases) and the clock
    between steps: every ``optimizer_steps`` optimizer steps, one :func:`metrics_row` appended to ``path`` (emptied
    first). ``sync`` waits for the device before each clock reading; ``peak_gib`` reads the memory peak (None: none).
    """

    def __init__(self, path, optimizer_steps: int = 1, sync=lambda: None, peak_gib=lambda: None,
                 clock=time.perf_counter):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("")
        self.optimizer_steps, self.sync, self.peak_gib, self.clock = optimizer_steps, sync, peak_gib, clock
        self.rows: list[dict] = []
        self._optimizer_steps_done, self._since = 0, None
        self._clear()

    def _clear(self) -> None:
        self.prompt_tokens, self.response_lengths, self.scores, self.phases = 0, [], [], {}

    def scored(self, prompt_tokens: int, response_lengths: list[int], scores: list[float]) -> None:
        """Count a scored batch of the current step."""
        self.prompt_tokens += prompt_tokens
        self.response_lengths += list(response_lengths)
        self.scores += list(scores)

    @contextlib.contextmanager
    def phase(self, name: str):
        """Add the seconds of the block to ``timing_s/<name>`` of the current step."""
        self.sync()
        start = self.clock()
        try:
            yield
        finally:
            self.sync()
            self.phases[name] = self.phases.get(name, 0.0) + self.clock() - start

    @contextlib.contextmanager
    def timing(self, owner, attribute: str, name: str):
        """While active, every call of ``owner.<attribute>`` counts as phase ``name``."""
        inner = getattr(owner, attribute)

        def timed(*args, **kwargs):
            with self.phase(name):
                return inner(*args, **kwargs)

        setattr(owner, attribute, timed)
        try:
            yield
        finally:
            setattr(owner, attribute, inner)

    def start(self) -> None:
        """The clock of the first step starts (training begins)."""
        self.sync()
        self._since = self.clock()

    def optimizer_step(self) -> dict | None:
        """An optimizer step ended; the row it completes (also written), else None."""
        self._optimizer_steps_done += 1
        if self._optimizer_steps_done % self.optimizer_steps:
            return None
        self.sync()
        now = self.clock()
        row = metrics_row(len(self.rows) + 1, now - self._since, self.prompt_tokens, self.response_lengths,
                          self.scores, self.phases, self.peak_gib())
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        self.rows.append(row)
        self._since = now
        self._clear()
        return row


def trainer_callback(metrics: StepMetrics):
    """A ``transformers.TrainerCallback`` that drives ``metrics``: the clock starts at ``on_train_begin``, every
    ``on_step_end`` (after an optimizer step) counts."""
    from transformers import TrainerCallback

    class Rows(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            metrics.start()

        def on_step_end(self, args, state, control, **kwargs):
            metrics.optimizer_step()

    return Rows()


def device_probes(on_cuda: bool) -> tuple:
    """``(sync, peak_gib)`` for :class:`StepMetrics`: CUDA's synchronize and allocated peak, or nothing on a CPU."""
    if not on_cuda:
        return (lambda: None), (lambda: None)
    import torch

    return torch.cuda.synchronize, (lambda: torch.cuda.max_memory_allocated() / 2**30)


# ---------------------------------------------------------------------- prompts and rewards
def score_texts(data_sources, texts, ground_truths, extra_infos) -> list[float]:
    """rlkit's score of each response (:func:`rlkit.rewards.default_compute_score` by ``data_source``)."""
    from rlkit import rewards

    scores, _ = rewards.score_responses(rewards.default_compute_score, list(data_sources), list(texts),
                                        list(ground_truths), list(extra_infos))
    return scores


def grpo_reward(metrics: StepMetrics):
    """TRL's GRPO reward function (it passes the dataset's columns by name): rlkit's scores of the completions,
    counted with their tokens into ``metrics``."""
    def rlkit_reward(prompts, completions, completion_ids, data_source, ground_truth, extra_info, prompt_tokens,
                     **_):
        with metrics.phase("reward"):
            scores = score_texts(data_source, completions, ground_truth, extra_info)
        metrics.scored(sum(prompt_tokens), [len(c) for c in completion_ids], scores)
        return scores

    return rlkit_reward


class PromptIndex:
    """The longest dataset prompt that begins a token sequence (TRL's PPO hands its reward model token ids only).

    >>> from rlkit.bench.peer_trl import PromptIndex
    >>> PromptIndex([[5, 6], [5], [5, 7, 8]]).find([5, 7, 8, 9, 9])  # (row, prompt length)
    (2, 3)
    """

    def __init__(self, prompts: list[list[int]]):
        self._rows: dict[int, dict[tuple, int]] = {}
        for row, ids in enumerate(prompts):
            self._rows.setdefault(len(ids), {})[tuple(ids)] = row
        self._lengths = sorted(self._rows, reverse=True)

    def find(self, ids: list[int]) -> tuple[int, int]:
        for n in self._lengths:
            if n > len(ids):
                continue
            row = self._rows[n].get(tuple(ids[:n]))
            if row is not None:
                return row, n
        raise KeyError(f"no dataset prompt begins this sequence of {len(ids)} tokens")


def score_sequences(sequences: list[list[int]], index: PromptIndex, items: list[dict], decode,
                    metrics: StepMetrics) -> list[float]:
    """rlkit's scores of prompt+response token sequences (no padding): each one's prompt and row found by ``index``
    in ``items`` (:class:`rlkit.datasets.RLDataset` items), the rest decoded by ``decode`` and scored."""
    found = [index.find(ids) for ids in sequences]
    rows = [items[row] for row, _ in found]
    texts = [decode(ids[n:]) for ids, (_, n) in zip(sequences, found)]
    scores = score_texts([r["data_source"] for r in rows], texts, [r["ground_truth"] for r in rows],
                         [r["extra_info"] for r in rows])
    metrics.scored(sum(n for _, n in found), [len(ids) - n for ids, (_, n) in zip(sequences, found)], scores)
    return scores


def ppo_reward_model(items: list[dict], tokenizer, metrics: StepMetrics):
    """A stand-in reward model for TRL's PPO, which calls ``getattr(m, m.base_model_prefix)(input_ids=...,
    attention_mask=..., ...)``, then ``m.score(hidden_states[-1])`` and reads the last response token's value:
    every position holds the sequence's :func:`score_sequences` score."""
    import types

    import torch

    index = PromptIndex([it["prompt_ids"] for it in items])

    def decode(ids):
        return tokenizer.decode(ids, skip_special_tokens=True)  # as rlkit decodes responses for the reward

    class RuleReward(torch.nn.Module):
        base_model_prefix = "scorer"

        def __init__(self):
            super().__init__()
            self.score = torch.nn.Identity()

        def scorer(self, input_ids, attention_mask, **_):
            with metrics.phase("reward"):
                seqs = [ids[mask].tolist() for ids, mask in zip(input_ids, attention_mask.bool())]
                scores = torch.tensor(score_sequences(seqs, index, items, decode, metrics), device=input_ids.device)
            return types.SimpleNamespace(hidden_states=(scores[:, None, None].expand(-1, input_ids.shape[1], 1),))

    return RuleReward()


def load_prompts(cfg, tokenizer) -> list[dict]:
    """Every training prompt, as :class:`rlkit.datasets.RLDataset` items (``data.*`` keys as rlkit reads them)."""
    from rlkit.datasets import RLDataset

    d = cfg.data
    ds = RLDataset(d.train_files, tokenizer, prompt_key=d.prompt_key, max_prompt_length=int(d.max_prompt_length),
                   truncation=d.truncation, filter_overlong_prompts=bool(d.filter_overlong_prompts),
                   max_samples=int(d.get("train_max_samples", -1) or -1), shuffle=bool(d.shuffle),
                   seed=int(d.seed or 1))
    ds.prompt_lengths()  # tokenizes every prompt in batches
    return list(ds)


# ---------------------------------------------------------------------- the trainers
def import_trl():
    """``trl``, or SystemExit saying how to install it."""
    try:
        import trl
    except ImportError as e:
        raise SystemExit(f"the TRL side needs TRL {TRL_VERSION} in {sys.executable}: {INSTALL} ({e})") from e
    if trl.__version__ != TRL_VERSION:
        print(f"peer_trl: TRL {trl.__version__} found; this driver follows TRL {TRL_VERSION}'s API ({INSTALL})",
              file=sys.stderr)
    return trl


def build_ppo(cfg, tokenizer, items: list[dict], metrics: StepMetrics, on_cuda: bool):
    """TRL's PPOTrainer: policy, value model (a one-label sequence classifier) and reference (TRL's copy)."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    load = dict(MODEL_LOAD, dtype=torch.float32)
    policy = AutoModelForCausalLM.from_pretrained(str(cfg.actor_rollout_ref.model.path), **load)
    value = AutoModelForSequenceClassification.from_pretrained(str(cfg.critic.model.path), num_labels=1, **load)
    n = int(cfg.actor_rollout_ref.rollout.n)
    data = Dataset.from_dict({"input_ids": [it["prompt_ids"] for it in items for _ in range(n)]})
    return PPOTrainer(args=PPOConfig(**ppo_args(cfg, on_cuda)), processing_class=tokenizer, model=policy,
                      ref_model=None, reward_model=ppo_reward_model(items, tokenizer, metrics), train_dataset=data,
                      value_model=value, eval_dataset=data, callbacks=[trainer_callback(metrics)],
                      optimizers=ppo_optimizer(policy, value, ppo_param_groups(cfg)))


def build_grpo(cfg, tokenizer, items: list[dict], metrics: StepMetrics, on_cuda: bool):
    """TRL's GRPOTrainer on the templated prompts, the model (and its reference) loaded by TRL."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    data = Dataset.from_list([{"prompt": it["prompt_text"], "data_source": it["data_source"],
                               "ground_truth": it["ground_truth"], "extra_info": it["extra_info"],
                               "prompt_tokens": len(it["prompt_ids"])} for it in items])
    return GRPOTrainer(model=str(cfg.actor_rollout_ref.model.path), reward_funcs=grpo_reward(metrics),
                       args=GRPOConfig(**grpo_args(cfg, on_cuda)), train_dataset=data, processing_class=tokenizer,
                       callbacks=[trainer_callback(metrics)])


def run(cfg, metrics_path) -> list[dict]:
    """Train with TRL on ``cfg`` (:func:`load_config`), one row per step to ``metrics_path``; the rows."""
    import_trl()
    import torch

    from rlkit.training.models import load_tokenizer

    on_cuda = cfg.trainer.device == "cuda" and torch.cuda.is_available()
    m = cfg.actor_rollout_ref.model
    tokenizer = load_tokenizer(str(m.path), m.get("tokenizer_path"), bool(m.get("trust_remote_code", False)))
    tokenizer.padding_side = "left"  # TRL's PPO pads the prompts with its collator
    items = load_prompts(cfg, tokenizer)
    metrics = StepMetrics(metrics_path, steps_per_row(cfg), *device_probes(on_cuda))
    if cfg.algorithm.adv_estimator == "gae":
        from trl.experimental.ppo import ppo_trainer

        trainer, generate = build_ppo(cfg, tokenizer, items, metrics, on_cuda), (ppo_trainer, "batch_generation")
    else:
        trainer = build_grpo(cfg, tokenizer, items, metrics, on_cuda)
        generate = (trainer, "_generate_single_turn")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if on_cuda else contextlib.nullcontext()
    with metrics.timing(*generate, "gen"), autocast:
        trainer.train()
    return metrics.rows


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(prog="python -m rlkit.bench.peer_trl", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--metrics", required=True, help="jsonl file for one row per training step")
    p.add_argument("overrides", nargs="*", help="verl-style key=value (rlkit.bench.peers.common_overrides)")
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.overrides)
    except ValueError as e:  # rlkit's ConfigError too
        raise SystemExit(f"peer_trl: {e}") from e
    rows = run(cfg, args.metrics)
    print(f"peer_trl: {len(rows)} steps, metrics in {args.metrics}", file=sys.stderr)
    return rows


if __name__ == "__main__":
    main()
