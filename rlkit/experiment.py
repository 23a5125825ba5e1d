"""`Experiment`: the single controller of a PPO run, one ``step()`` at a time.

``step()`` reads top to bottom like the algorithm (cleanrl style): every phase is a numbered block,
timed by :class:`~rlkit.diagnostics.timing.PhaseTimer`. Models, optimizers and the rollout engine
live in the worker group (:class:`~rlkit.distributed.group.WorkerGroup`: FSDP2 rank workers, one per
GPU); the controller moves batches between its calls and does the cheap math (rewards, KL penalty,
advantages) itself.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from rlkit import algos
from rlkit import checkpoint as ckpt_lib
from rlkit.config import PPOConfig, check_runtime, validate
from rlkit.diagnostics import balance as memory_balance_lib
from rlkit.diagnostics import flops as flops_lib
from rlkit.diagnostics import memory as memory_lib
from rlkit.diagnostics.timing import PhaseTimer
from rlkit.loggers import dump_generations, pick_val_generations

if TYPE_CHECKING:  # the batch type, for annotations only
    from rlkit.datasets import RolloutBatch

KEEP_ROLLOUT_STEPS = 100  # rollout tables kept in memory for show_rollouts() / the dashboard


class NoLearningSignalWarning(UserWarning):
    """Every response of a step got the same score: the reward cannot tell them apart."""


def _warn_if_no_signal(step: int, rollouts: pd.DataFrame) -> None:
    scores = rollouts["score"]
    if len(scores) < 2 or scores.nunique() > 1:
        return
    value = float(scores.iloc[0])
    hint = ""
    if value == 0 and rollouts["data_source"].astype(str).str.contains("gsm8k").any():
        hint = (" GSM8K's 0/1 score rarely rewards a small model; give credit for a readable answer with "
                "+custom_reward_function.reward_kwargs.format_score=0.1 (and .method=flexible to read the last "
                "number of the response), or train longer responses (data.max_response_length).")
    why = ("with no reward anywhere the critic learns nothing and every advantage, loss and gradient stays 0"
           if value == 0 else "advantages come only from differences in the critic's per-token values")
    warnings.warn(f"step {step}: all {len(scores)} responses scored {value:g}, so the reward cannot tell them "
                  f"apart ({why}).{hint}", NoLearningSignalWarning, stacklevel=3)


class RolloutFrame(pd.DataFrame):
    """A DataFrame of rollouts that renders in notebooks as a readable table (long text cut,
    scores highlighted). Everything else is plain pandas."""

    @property
    def _constructor(self):
        return RolloutFrame

    def _repr_html_(self) -> str:
        from rlkit.viz.tables import rollouts_html

        return rollouts_html(pd.DataFrame(self), n=min(len(self), 20))


@contextlib.contextmanager
def one_intra_op_thread():
    """Run the driver's own small tensor math on one intra-op thread, then restore the count.

    With several threads, each parallel op waits for all of them. Busy processes on the same cores
    (the engine's scheduler, the training ranks) keep descheduling some of them. Measured on a 2-core
    CPU with 2 busy processes, GAE on 256 x 512 took 353 ms with 2 threads and 15 ms with one
    (medians of 4). The per-token loop it replaced took 204 ms and 33 ms.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class StepResult:
    """What one ``Experiment.step()`` produced.

    rollouts: one row per sample (prompt, response, ground_truth, score, reward, response_length,
              finish_reason, uid, data_source)
    metrics:  verl-named scalars (``critic/score/mean``, ``actor/pg_loss``, ``timing_s/gen``, ...)
    timing:   seconds per phase
    memory:   tidy per-GPU memory at every phase boundary of this step
              (step, phase, event, node, rank, gpu, metric, bytes, time)
    """

    step: int
    rollouts: pd.DataFrame
    metrics: dict[str, float]
    timing: dict[str, float]
    memory: pd.DataFrame = field(default=None, repr=False)
    batch: RolloutBatch = field(default=None, repr=False)

    def __repr__(self) -> str:
        keys = ["critic/score/mean", "critic/rewards/mean", "response_length/mean", "actor/pg_loss", "timing_s/step"]
        shown = ", ".join(f"{k}={self.metrics[k]:.4g}" for k in keys if k in self.metrics)
        return f"StepResult(step={self.step}, samples={len(self.rollouts)}, {shown})"

    def _repr_html_(self) -> str:
        from rlkit.viz.tables import rollouts_html

        head = self.__repr__().replace("&", "&amp;").replace("<", "&lt;")
        return f"<p><code>{head}</code></p>" + rollouts_html(self.rollouts, n=8)


def _as_config(config) -> DictConfig:
    if config is None:
        return PPOConfig.default()
    if isinstance(config, DictConfig):
        validate(config)
        return config
    if isinstance(config, dict):
        return PPOConfig.from_dict(config)
    if isinstance(config, (list, tuple)):
        return PPOConfig.from_overrides(list(config))
    raise TypeError(f"config must be a PPOConfig DictConfig, a dict or a list of 'key=value' overrides, got {type(config).__name__}")


class Experiment:
    """A PPO run you can step, inspect and checkpoint.

    Args:
        config: ``rlkit.PPOConfig`` (DictConfig), a nested dict, or verl-style overrides
            (``["data.train_batch_size=8", ...]``).
        reward_fn: optional callable ``(data_source, solution_str, ground_truth, extra_info) -> float | dict``;
            overrides ``custom_reward_function`` and the built-in per-data-source rewards.
        worker: an already-built :class:`~rlkit.distributed.group.WorkerGroup` to drive; by default
            one built from the config: one FSDP2 rank per GPU (``trainer.nnodes *
            trainer.n_gpus_per_node``) on Ray with SGLang beside the shards, or, for ``hf`` on one
            rank, that rank in this process (``WorkerGroup(cfg, local=True)``).

    The README's quick start is a complete example: build, ``step()``, ``run(n)``, ``validate()``,
    ``save()`` and ``resume()``.
    """

    def __init__(self, config=None, reward_fn: Callable | None = None, *, worker=None, progress: bool = False):
        from rlkit import rewards
        from rlkit.datasets.rl_dataset import PromptSampler

        self.config = cfg = _as_config(config)
        self.worker = None  # set last: everything that can fail on the user's input fails before models load
        if worker is None:
            check_runtime(cfg)  # a GPU, sglang and ray for rollout.name=sglang: say so now, never hang
        self.reward_fn = reward_fn or self._configured_reward_fn(rewards)
        self._score = rewards.score_responses
        self.kl_ctrl = algos.get_kl_controller(cfg.algorithm.kl_ctrl.type, float(cfg.algorithm.kl_ctrl.kl_coef),
                                               float(cfg.algorithm.kl_ctrl.target_kl), int(cfg.algorithm.kl_ctrl.horizon))
        # data first (files, schema, prompt lengths, batch vs dataset size), with the tokenizer alone
        self.tokenizer = worker.tokenizer if worker is not None else _load_tokenizer(cfg)
        self.train_dataset, self.val_dataset = _load_datasets(cfg, self.tokenizer)
        d = cfg.data
        self.sampler = PromptSampler(len(self.train_dataset), int(d.train_batch_size), shuffle=bool(d.shuffle),
                                     seed=int(d.get("seed", 1) or 1), drop_last=True,
                                     num_workers=int(d.dataloader_num_workers))  # verl's order for its settings
        self.total_training_steps = int(cfg.trainer.get("total_training_steps") or
                                        self.sampler.batches_per_epoch * int(cfg.trainer.total_epochs))
        from rlkit.parallel import ParallelPlan

        self.world_size = ParallelPlan.from_config(cfg).world_size or 1  # GPUs (or CPU ranks) of the run
        self.global_step = 0
        self._history: list[dict[str, Any]] = []
        self.val_history: list[dict[str, Any]] = []
        self.last_validation: pd.DataFrame | None = None
        self.last_val_generations: list[tuple[str, str, float]] = []  # trainer.log_val_generations' picks
        self.phase_callbacks: list[Callable[[str, str], None]] = []
        self.memory_recorder = memory_lib.MemoryRecorder()
        self._rollouts: list[pd.DataFrame] = []
        self._dashboards: list = []
        self.resumed_from: Path | None = None

        if worker is None:
            worker = _build_worker(cfg, self.total_training_steps, progress)
        else:
            worker.set_total_training_steps(self.total_training_steps)
        self.worker = worker
        self.memory_recorder.extend(self.worker.take_snapshots())  # engine start, model load
        # verl's perf/mfu/*: the model's dimensions and the card's bf16 peak (none on a CPU or an unlisted card)
        dims = flops_lib.model_dims(worker.model_dir) if getattr(worker, "model_dir", None) else None
        peak = flops_lib.peak_flops(getattr(worker, "device_name", None))
        self._mfu_basis = (dims, peak) if dims and peak else None

    # ------------------------------------------------------------------ setup helpers
    def _step_mfu(self, row: dict, rows: int) -> dict[str, float]:
        """verl's ``perf/mfu/{actor,actor_infer,critic}`` (:func:`rlkit.diagnostics.flops.step_mfu`); the
        critic's only when it is the actor's model with a value head."""
        dims, peak = self._mfu_basis
        cfg = self.config
        out = flops_lib.step_mfu(row, dims, rows, peak, self.world_size,
                                 int(cfg.actor_rollout_ref.actor.ppo_epochs), int(cfg.critic.get("ppo_epochs") or 1))
        if str(cfg.critic.model.get("path")) not in ("None", str(cfg.actor_rollout_ref.model.path)):
            out.pop("perf/mfu/critic", None)
        return out

    def _configured_reward_fn(self, rewards):
        crf = self.config.get("custom_reward_function") or {}
        kwargs = dict(crf.get("reward_kwargs") or {})
        if crf.get("path"):
            return rewards.load_custom_reward_function(crf.path, crf.get("name") or "compute_score", kwargs)
        if kwargs:  # e.g. format_score=0.1 for the built-in GSM8K scorer
            import functools

            return functools.partial(rewards.default_compute_score, **kwargs)
        return rewards.default_compute_score

    # ------------------------------------------------------------------ the PPO iteration
    def step(self) -> StepResult:
        """Run exactly one PPO iteration and return what it produced.

        If the call is interrupted (KeyboardInterrupt in a notebook, an exception in a reward
        function), the data position is rolled back and the worker reset, so the next ``step()``
        retries the same prompts. Parameter updates that completed before the interruption stay.
        With ``trainer.rollout_data_dir`` the step's responses are written to ``<dir>/<step>.jsonl`` in
        verl's format (:func:`rlkit.loggers.dump_generations`); a retried step replaces its file.
        """
        self._require_worker("step()")
        sampler_state = self.sampler.state_dict()
        n_records = len(self.memory_recorder.records)
        try:
            result = self._step()
        except BaseException:
            self.sampler.load_state_dict(sampler_state)
            del self.memory_recorder.records[n_records:]
            try:
                self.worker.reset_after_interrupt()
                self.worker.take_snapshots()  # drop the interrupted step's readings
            except Exception:  # a dead worker: the original error says why
                pass
            raise
        self.global_step += 1
        self._history.append({"step": self.global_step, **result.metrics})
        _warn_if_no_signal(result.step, result.rollouts)
        self._rollouts = (self._rollouts + [result.rollouts])[-KEEP_ROLLOUT_STEPS:]
        return result

    def _step(self) -> StepResult:
        cfg, worker = self.config, self.worker
        n = int(cfg.actor_rollout_ref.rollout.n)
        step = self.global_step + 1
        snapshot_s = [0.0]

        def record_memory(phase: str, event: str) -> None:  # at every phase boundary, on the GPU owner
            t0 = time.perf_counter()
            worker.memory_snapshot(step, phase, event)
            snapshot_s[0] += time.perf_counter() - t0

        timer = PhaseTimer([record_memory] + self.phase_callbacks)
        metrics: dict[str, float] = {}
        first_record = len(self.memory_recorder.records)

        with timer.phase("step"):
            # 1. next batch of prompts; one uid per prompt groups its n samples (GRPO/RLOO)
            epoch = self.sampler.epoch  # the batch's epoch (the sampler moves on after an epoch's last batch)
            items = [self.train_dataset[i] for i in self.sampler.next_batch()]

            # 2. generate n responses per prompt; the engine takes the GPU (wake) and gives it back (sleep)
            with timer.phase("wake"):
                worker.wake_rollout()
            with timer.phase("gen"):
                batch = worker.generate([it["prompt_ids"] for it in items])  # a RolloutBatch, prompt-major
            with timer.phase("sleep"):
                worker.sleep_rollout()
            batch.update(_row_columns(items, n, uid_prefix=f"{step}-"))
            if cfg.trainer.balance_batch:  # rows in training order, tokens balanced over the ranks (verl)
                batch = self._balance_batch(batch, metrics)
            mask = batch["response_mask"]
            responses_text = self._decode(batch)

            # 3. score the responses; the scalar sits on the last response token (verl's convention)
            with timer.phase("reward"):
                scores, extras = self._score_samples(batch, responses_text)
                batch["token_level_scores"] = _last_token_tensor(torch.tensor(scores, dtype=torch.float32), mask)

            # verl's trainer.rollout_data_dir: <dir>/<step>.jsonl, one line per response. Written before any
            # update, so a failed write leaves the models as they were and the step can be retried
            if cfg.trainer.get("rollout_data_dir"):
                with timer.phase("dump_rollout_generations"):
                    self._dump_generations("trainer.rollout_data_dir", step, self._decode_prompts(batch),
                                           responses_text, batch["ground_truth"],
                                           batch["token_level_scores"].sum(-1).tolist(), extras)

            # 4. old log-probs: recomputed by the actor, as verl does (not trusted from the engine); with
            #    recompute_old_log_prob=False the update's own log-probs stand in (one optimizer step per batch)
            a = cfg.actor_rollout_ref.actor
            if a.recompute_old_log_prob:
                with timer.phase("old_log_prob"):
                    out = worker.compute_log_prob(batch)
                    batch["old_log_probs"] = out["log_probs"]
                    # verl: this pass's entropy aggregated like the loss; an update that computes the entropy
                    # (actor.calculate_entropy or entropy_coeff != 0) reports its own value instead
                    with one_intra_op_thread():
                        metrics["actor/entropy"] = algos.agg_loss(out["entropys"], mask, a.loss_agg_mode,
                                                                  a.get("loss_scale_factor")).item()
                        metrics.update(_rollout_mismatch(batch["rollout_log_probs"], out["log_probs"], mask))

            # 5. reference log-probs (for the KL loss or the KL reward penalty)
            if worker.has_ref:
                with timer.phase("ref"):
                    batch["ref_log_prob"] = worker.compute_ref_log_prob(batch)

            # 6. values V(s_t) from the critic
            if worker.has_critic:
                with timer.phase("values"):
                    batch["values"] = worker.compute_values(batch)

            # 7. advantages (driver side, cheap): optional KL penalty in the reward, then the estimator
            with timer.phase("adv"), one_intra_op_thread():
                if cfg.algorithm.use_kl_in_reward:
                    rewards_t, current_kl = algos.apply_kl_penalty(
                        batch["token_level_scores"], batch["old_log_probs"], batch["ref_log_prob"], mask,
                        self.kl_ctrl.value, cfg.algorithm.kl_penalty)
                    batch["token_level_rewards"] = rewards_t
                    metrics.update({"actor/reward_kl_penalty": current_kl, "actor/reward_kl_penalty_coeff": self.kl_ctrl.value})
                    self.kl_ctrl.update(current_kl, len(batch))
                else:
                    batch["token_level_rewards"] = batch["token_level_scores"]
                adv, ret = algos.compute_advantage(
                    cfg.algorithm.adv_estimator, batch["token_level_rewards"], mask, values=batch.get("values"),
                    index=batch["uid"], gamma=float(cfg.algorithm.gamma), lam=float(cfg.algorithm.lam),
                    norm_adv_by_std_in_grpo=bool(cfg.algorithm.norm_adv_by_std_in_grpo))
                batch["advantages"], batch["returns"] = adv, ret

            # 8. critic update
            if worker.has_critic:
                with timer.phase("update_critic"):
                    metrics.update(worker.update_critic(batch, step))

            # 9. actor update once the critic has warmed up: from step critic_warmup on (verl's test,
            #    critic_warmup <= global step, steps counted from 1: 0 and 1 both update at step 1)
            if int(cfg.trainer.critic_warmup) <= step:
                with timer.phase("update_actor"):
                    metrics.update(worker.update_actor(batch, step))

            # 10. new weights into the rollout engine (a sleeping engine gets them at its next wake)
            with timer.phase("update_weights"):
                worker.sync_rollout_weights()

        with one_intra_op_thread():  # the driver's own math again, as the advantages
            metrics.update(_data_metrics(batch, int(cfg.data.max_response_length), int(cfg.data.max_prompt_length)))
        metrics.update(_timing_metrics(timer.timing, batch, n_gpus=self.world_size))
        if self._mfu_basis:
            metrics.update(self._step_mfu(metrics, len(batch)))
        metrics["training/global_step"] = step
        metrics["training/epoch"] = epoch
        for k, v in extras.items():
            values = [x for x in v if x is not None]
            if values:
                metrics[f"reward_extra/{k}/mean"] = float(np.mean(values))
        t0 = time.perf_counter()
        self.memory_recorder.extend(worker.take_snapshots())
        snapshot_s[0] += time.perf_counter() - t0  # the controller's cost: requests and collection
        step_records = self.memory_recorder.records[first_record:]
        metrics.update(memory_lib.peak_metrics(step_records))
        metrics["timing_s/memory_snapshots"] = snapshot_s[0]
        rollouts = self._rollout_frame(step, responses_text, batch)
        return StepResult(step=step, rollouts=rollouts, metrics=metrics, timing=dict(timer.timing),
                          memory=memory_lib.trace_frame(step_records), batch=batch)

    def _balance_batch(self, batch, metrics: dict[str, float]):
        """``trainer.balance_batch``, verl's classic ``_balance_batch``: the rows split into one group
        per data-parallel rank, equal in count and near-equal in tokens (``attention_mask``: prompt +
        response), rank r updating on group r in verl's order (:func:`rlkit.datasets.packing.balance_order`
        interleaves the groups into rlkit's global mini-batches); adds verl's ``global_seqlen/*`` metrics.

        Laid out with the actor's per-rank mini-batch. A critic with another ``ppo_mini_batch_size``
        cuts its mini-batches from the same order, so its ranks' rows differ from verl's (where each
        rank cuts its own group). With ``shuffle=True`` every update epoch draws its own order of the
        whole batch and the ranks' rows are no longer balanced (verl's workers never shuffle). The
        forward passes (old log-probs, reference, values) take contiguous parts of the reordered
        batch, balanced only with one mini-batch per step; their results do not depend on the split.
        """
        from rlkit.datasets.packing import balance_order
        from rlkit.parallel import ParallelPlan

        mini_per_rank = ParallelPlan.from_config(self.config).role("actor").mini_batch_per_rank
        order, balance_metrics = balance_order(batch["attention_mask"].sum(-1).tolist(), self.world_size,
                                               mini_per_rank)
        metrics.update(balance_metrics)
        return batch.select(order)

    def _score_samples(self, batch, texts: list[str]):
        """Reward each response against its row's ground truth; (scores, extra reward columns)."""
        return self._score(self.reward_fn, batch["data_source"], texts, batch["ground_truth"], batch["extra_info"])

    def _decode(self, batch) -> list[str]:
        lengths = batch["response_mask"].sum(-1).long().tolist()
        return [self.tokenizer.decode(ids[:L], skip_special_tokens=True)
                for ids, L in zip(batch["responses"].tolist(), lengths)]

    def _decode_prompts(self, batch) -> list[str]:
        """Each row's prompt as verl's dumps show it: its tokens without padding, special tokens skipped."""
        prompts = batch["prompts"]
        real = batch["attention_mask"][:, : prompts.shape[1]].bool()
        return [self.tokenizer.decode(ids[m].tolist(), skip_special_tokens=True) for ids, m in zip(prompts, real)]

    def _dump_generations(self, key: str, step: int, inputs: list[str], outputs: list[str], gts: list,
                          scores: list[float], extras: dict[str, list]) -> None:
        """``trainer.rollout_data_dir`` / ``trainer.validation_data_dir`` (``key``): ``<dir>/<step>.jsonl``
        in verl's format (:func:`rlkit.loggers.dump_generations`)."""
        dump_generations(OmegaConf.select(self.config, key), step, inputs, outputs, gts, scores, extras, key=key)

    def _rollout_frame(self, step, responses_text, batch) -> pd.DataFrame:
        mask = batch["response_mask"]
        return RolloutFrame({
            "step": step,
            "uid": batch["uid"],
            "data_source": batch["data_source"],
            "prompt": batch["prompt_text"],
            "response": responses_text,
            "ground_truth": batch["ground_truth"],
            "score": batch["token_level_scores"].sum(-1).tolist(),
            "reward": batch["token_level_rewards"].sum(-1).tolist(),
            "response_length": mask.sum(-1).long().tolist(),
            "finish_reason": batch["finish_reason"],
        })

    # ------------------------------------------------------------------ loops and views
    def run(self, n_steps: int, progress: bool = True) -> pd.DataFrame:
        """``step()`` ``n_steps`` times with a (notebook-aware) tqdm bar; returns the new history rows."""
        from tqdm.auto import tqdm

        start = len(self._history)
        bar = tqdm(range(n_steps), desc="PPO", disable=not progress)
        for _ in bar:
            res = self.step()
            for dash in self._dashboards:
                dash.refresh()
            bar.set_postfix(score=f"{res.metrics['critic/score/mean']:.3f}",
                            len=f"{res.metrics['response_length/mean']:.0f}")
        return pd.DataFrame(self._history[start:])

    @property
    def history(self) -> pd.DataFrame:
        """One row per finished step, verl metric names as columns."""
        return pd.DataFrame(self._history)

    @property
    def rollouts(self) -> pd.DataFrame:
        """Rollouts of the last steps (up to KEEP_ROLLOUT_STEPS), one row per sample."""
        return RolloutFrame(pd.concat(self._rollouts, ignore_index=True)) if self._rollouts else RolloutFrame()

    @property
    def memory_records(self) -> list:
        """Every memory snapshot so far (MemorySnapshot objects), worker start-up included."""
        return list(self.memory_recorder.records)

    @property
    def memory(self) -> pd.DataFrame:
        """Tidy per-GPU memory: step, phase, event, node, rank, gpu, metric, bytes, time."""
        return memory_lib.trace_frame(self.memory_recorder.records)

    def save_memory_trace(self, path: str | os.PathLike, meta: dict | None = None) -> Path:
        """Write the memory trace as JSON (``rlkit.diagnostics.memory.load_trace`` reads it back)."""
        meta = {"tp_size": int(self.config.actor_rollout_ref.rollout.tensor_model_parallel_size),
                "rollout": str(self.config.actor_rollout_ref.rollout.name), **(meta or {})}
        memory_lib.save_trace(path, self.memory_recorder.records, meta=meta)
        return Path(path)

    def memory_balance(self, step: int | None = None, phase: str | None = None):
        """SGLang's TP memory rule applied to the latest snapshot (or the last one of ``step``/``phase``):
        a :class:`~rlkit.diagnostics.balance.BalanceReport` (text, HTML in notebooks, ``.plot()``)."""
        records = [r for r in self.memory_recorder.records
                   if (step is None or r.step == step) and (phase is None or r.phase == phase) and r.gpus]
        if not records:
            raise ValueError("no GPU memory snapshots recorded yet (CPU run, or no step matches); "
                             "load a GPU trace with rlkit.diagnostics.memory.load_trace to study one")
        tp = int(self.config.actor_rollout_ref.rollout.tensor_model_parallel_size)
        latest = records[-1]
        groups = [list(range(i, i + tp)) for i in range(0, len(latest.gpus) - tp + 1, tp)] or None
        load_times = {0: self.worker.load_time} if getattr(self.worker, "load_time", None) else None
        return memory_balance_lib.balance_report([latest], tp_groups=groups, config=self.config, load_times=load_times)

    def plot(self):
        """One-figure summary: score/reward, response length, per-GPU memory, length histogram."""
        from rlkit.viz import plot_summary

        mem = self.memory
        has_gpu = len(mem) > 0 and (mem["metric"] == "used").any()  # a CPU run has host memory only
        return plot_summary(self.history, mem if has_gpu else None, self.rollouts if self._rollouts else None)

    def show_rollouts(self, step: int | None = None, n: int = 5, filter=None, page: int = 0):
        """Page through rollouts as an HTML table: ``filter`` is "correct" | "wrong" | "truncated",
        a pandas query string or a callable(row) -> bool; ``step`` defaults to the latest."""
        from IPython.display import HTML

        from rlkit.viz.tables import page_rollouts, rollouts_html

        if not self._rollouts:
            raise ValueError("no rollouts yet: call step() first (a resumed experiment starts with none)")
        kept = [int(f["step"].iloc[0]) for f in self._rollouts if len(f)]
        step = kept[-1] if step is None else step
        if step not in kept:
            shown = f"{kept[0]}..{kept[-1]}" if len(kept) > 1 else str(kept[0])
            raise ValueError(f"no rollouts kept for step {step}; this experiment holds steps {shown} "
                             f"(the last {KEEP_ROLLOUT_STEPS} steps of this session)")
        return HTML(rollouts_html(page_rollouts(self.rollouts, step=step, n=n, filter=filter, page=page), n=n))

    def dashboard(self):
        """Live ipywidgets panel (curves, per-GPU memory with step/phase selectors, newest samples);
        ``run()`` refreshes it after every step."""
        from rlkit.viz import Dashboard

        dash = Dashboard(lambda: self.history, lambda: self.memory, lambda: self.rollouts,
                         get_validation=lambda: pd.DataFrame(self.val_history))
        self._dashboards.append(dash)
        return dash

    def validate(self) -> dict[str, float]:
        """Score the validation set with ``rollout.val_kwargs`` (greedy by default), named as verl names
        it (:mod:`rlkit.rewards.validation`): ``val-core/<data_source>/acc/mean@N`` for a float score (verl 0.9 records
        it as ``acc`` too; a dict without ``acc`` gives ``.../reward/...``), with ``std@N``, ``best@k``,
        ``worst@k`` and ``maj@k`` for ``val_kwargs.n > 1``, and ``val-aux/<data_source>/response_length/mean``.
        The per-response table is kept in ``self.last_validation``; with ``trainer.validation_data_dir`` it
        is also written, in verl's format, to ``<dir>/<global_step>.jsonl`` (:func:`rlkit.loggers.dump_generations`).
        With ``trainer.log_val_generations=N`` the N ``(input, output, score)`` samples verl would log
        (:func:`rlkit.loggers.pick_val_generations`) are kept in ``self.last_val_generations``; the main
        job hands them to its loggers (``Tracking.log_generations``).
        """
        from rlkit.rewards.validation import validation_metrics

        bs = int(self.config.data.get("val_batch_size") or len(self.val_dataset))
        dump = bool(self.config.trainer.get("validation_data_dir"))
        n_log = int(self.config.trainer.get("log_val_generations") or 0)
        self.worker.wake_rollout()
        try:
            rows, extras, inputs = self._validation_rows(bs, with_inputs=dump or n_log > 0)
        finally:
            self.worker.sleep_rollout()
        df = pd.DataFrame(rows)
        self.last_validation = df
        self.last_val_generations = (pick_val_generations(inputs, list(df["response"]), list(df["score"]), n_log)
                                     if n_log > 0 else [])
        infos = {"reward": list(df["score"]), **extras}
        metrics = validation_metrics(list(df["data_source"]), list(df["uid"]), infos)
        for ds, g in df.groupby("data_source"):
            metrics[f"val-aux/{ds}/response_length/mean"] = float(g["response_length"].mean())
        self.val_history.append({"step": self.global_step, **metrics})
        if dump:  # verl's trainer.validation_data_dir; its lines carry the same infos (``reward`` too)
            self._dump_generations("trainer.validation_data_dir", self.global_step, inputs, list(df["response"]),
                                   list(df["ground_truth"]), list(df["score"]), infos)
        return metrics

    def _validation_rows(self, bs: int, with_inputs: bool = False) -> tuple[list[dict], dict[str, list], list[str]]:
        """One row per response (``uid``: its prompt's index in the validation set), the reward's extra
        keys per response, and with ``with_inputs`` each response's decoded prompt (for the dump and
        ``trainer.log_val_generations``)."""
        rows, extras, inputs = [], {}, []
        for start in range(0, len(self.val_dataset), bs):
            items = [self.val_dataset[i] for i in range(start, min(start + bs, len(self.val_dataset)))]
            batch = self.worker.generate([it["prompt_ids"] for it in items], validate=True)
            n = len(batch) // len(items)
            batch.update(_row_columns(items, n))
            texts = self._decode(batch)
            if with_inputs:
                inputs += self._decode_prompts(batch)
            scores, more = self._score_samples(batch, texts)
            for key, values in more.items():
                extras.setdefault(key, [None] * len(rows)).extend(values)
            for key in set(extras) - set(more):
                extras[key].extend([None] * len(texts))
            lengths = batch["response_mask"].sum(-1).long().tolist()
            for i, (text, score, length) in enumerate(zip(texts, scores, lengths)):
                rows.append({"uid": start + i // n, "data_source": batch["data_source"][i], "prompt": batch["prompt_text"][i],
                             "response": text, "ground_truth": batch["ground_truth"][i], "score": score,
                             "response_length": length, "finish_reason": batch["finish_reason"][i]})
        return rows, extras, inputs

    # ------------------------------------------------------------------ checkpoints
    def save(self, directory: str | os.PathLike) -> Path:
        """Write a checkpoint that :meth:`resume` continues exactly (layout: :mod:`rlkit.checkpoint`).

        Written into a temporary folder beside ``directory`` and renamed into place, so an
        interrupted save leaves the previous checkpoint intact. Refuses to replace a non-empty
        folder that is not an rlkit checkpoint. ``actor.checkpoint.save_contents`` picks what is
        written (``model``, ``optimizer``, ``extra``); all three are needed to resume. On several
        ranks every rank writes its own shards (``torch.distributed.checkpoint``) into the temporary
        folder, so ``directory`` must be reachable under the same path from every node.
        """
        self._require_worker("save()")
        extra = {
            "sampler": self.sampler.state_dict(),
            "kl_ctrl": self.kl_ctrl.state_dict(),
            "global_step": self.global_step,
            "history": self._history,
            "val_history": self.val_history,
            "memory": [r.to_dict() for r in self.memory_recorder.records],
        }
        contents = list(self.config.actor_rollout_ref.actor.checkpoint.save_contents)
        return ckpt_lib.write(directory, extra=extra, config_yaml=OmegaConf.to_yaml(self.config),
                              global_step=self.global_step, contents=contents,
                              write_worker=self.worker.checkpoint_writer())  # every rank writes its shards

    @classmethod
    def resume(cls, directory: str | os.PathLike, reward_fn: Callable | None = None, *, config=None,
               progress: bool = False, log: Callable[[str], None] | None = None) -> "Experiment":
        """Rebuild an experiment from :meth:`save` output: models, optimizers, KL controller, the
        run's random state and data position, so the next ``step()`` is the one the original run
        would have taken.

        ``config`` (a PPOConfig, dict or overrides; default: the saved one) may change what can
        change on resume: step counts, logging, save/test frequency and validation settings are
        applied; learning rates and other training settings are applied with a warning; keys that
        define the saved run (model, training data, batch shape, estimator) are refused with a
        :class:`~rlkit.checkpoint.CheckpointError` listing them. What is resumed and what changed
        is reported through ``log`` (default: stderr) and kept in ``exp.resume_report``.
        The checkpoint is checked (every file whole) before any model loads.
        """
        log = log or (lambda line: print(f"[rlkit] {line}", file=sys.stderr, flush=True))
        ck = ckpt_lib.inspect(directory)
        saved_cfg = PPOConfig.from_yaml(ck.config_path)
        cfg, changes = saved_cfg, ckpt_lib.ResumeChanges()
        if config is not None:
            cfg = _as_config(config)
            changes = ckpt_lib.compare_configs(saved_cfg, cfg)
            if changes.refused:
                raise ckpt_lib.CheckpointError(ckpt_lib.refusal_message(ck.path, changes))
        extra = ck.load_extra()  # damaged files fail here, before the models load
        if not ck.has_role("actor"):
            raise ckpt_lib.CheckpointError(f"{ck.path} holds no actor weights (saved contents: {', '.join(ck.contents)}); "
                                           "it cannot resume a run")
        _refuse_other_world_size(cfg, ck)  # before any model or rank starts
        state = ck.load_worker_state(["actor", "critic"])  # sharded: the ranks read their own shards
        if isinstance(state, dict):
            state["rng"] = extra.get("worker_rng")
        exp = cls(cfg, reward_fn=reward_fn, progress=progress)
        exp.worker.load_state_dict(state)
        exp.sampler.load_state_dict(extra["sampler"])
        exp.kl_ctrl.load_state_dict(extra["kl_ctrl"])
        exp.global_step = int(extra["global_step"])
        exp._history = list(extra["history"])
        exp.val_history = list(extra["val_history"])
        exp.memory_recorder.clear()
        exp.memory_recorder.extend(extra.get("memory", []))
        exp.resumed_from = ck.path
        report = [f"resumed {_home_relative(ck.path)} at step {exp.global_step} of {exp.total_training_steps} "
                  f"(epoch {exp.sampler.epoch}; {ck.describe()})"]
        if changes.applied or changes.warned:
            report.append("changed on resume:")
            report += changes.lines()
        if isinstance(state, ckpt_lib.ShardedState):
            missing = [] if state.with_optimizer else list(state.roles)
        else:
            missing = [r for r in state if r != "rng" and state[r].get("optimizer") is None]
            report.append(f"note: single-process checkpoint (saved by an older rlkit) loaded into {exp.worker.world_size} "
                          "rank(s); checkpoints from now on are sharded")
        if missing:
            report.append(f"warning: no optimizer state saved for {', '.join(missing)} "
                          "(checkpoint.save_contents); AdamW starts fresh")
        if exp.global_step >= exp.total_training_steps:
            report.append(f"note: step {exp.global_step} already reaches trainer.total_training_steps="
                          f"{exp.total_training_steps}; raise it to train further")
        exp.resume_report = report
        for line in report:
            log(line)
        return exp

    def shutdown(self) -> None:
        """Release the rollout engine and models (a new Experiment can start cleanly after this)."""
        if self.worker is not None:
            self.worker.shutdown()
            self.worker = None

    def _require_worker(self, what: str) -> None:
        if self.worker is None:
            raise RuntimeError(f"{what} on an Experiment that was shut down (its models and engine are released); "
                               "create a new rlkit.Experiment(config) or rlkit.Experiment.resume(checkpoint_dir)")

    def __repr__(self) -> str:
        cfg = self.config
        arr = cfg.actor_rollout_ref
        state = "shut down" if self.worker is None else f"device={getattr(self.worker, 'device', '?')}"
        last = self._history[-1] if self._history else {}
        score = f", last score={last['critic/score/mean']:.4g}" if "critic/score/mean" in last else ""
        return (f"Experiment(step {self.global_step}/{self.total_training_steps}, model={arr.model.path}, "
                f"rollout={arr.rollout.name}, adv_estimator={cfg.algorithm.adv_estimator}, "
                f"batch={cfg.data.train_batch_size}x{arr.rollout.n}, {state}{score})")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.shutdown()


# ---------------------------------------------------------------------- setup helpers
def _files(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def _home_relative(path: Path) -> str:
    """``~/...`` for a path under the home folder (logs and notebook outputs stay machine-neutral)."""
    path = Path(path).expanduser().absolute()
    try:
        return str(Path("~") / path.relative_to(Path.home()))
    except ValueError:
        return str(path)


def _refuse_other_world_size(cfg, ck: ckpt_lib.Checkpoint) -> None:
    """A sharded checkpoint resumes only on as many ranks as saved it: refused here, before any model or rank
    starts."""
    from rlkit.parallel import ParallelPlan

    ck.require_world_size(ParallelPlan.from_config(cfg).world_size or 1)


def _build_worker(cfg, total_training_steps: int, progress: bool):
    """A :class:`~rlkit.distributed.group.WorkerGroup` of FSDP2 rank workers, one per GPU (CPU ranks with
    ``trainer.device=cpu``): on Ray for ``rollout.name=sglang`` (SGLang kills the process that starts a
    failing engine, so it never starts here) and for several ranks, in this process for ``hf`` on one
    rank. Checkpoints are sharded per rank (``torch.distributed.checkpoint``)."""
    from rlkit.distributed.group import WorkerGroup
    from rlkit.parallel import ParallelPlan

    local = cfg.actor_rollout_ref.rollout.name == "hf" and (ParallelPlan.from_config(cfg).world_size or 1) == 1
    return WorkerGroup(cfg, progress=progress, total_training_steps=total_training_steps, local=local)


def _load_tokenizer(cfg):
    """The actor's tokenizer (``model.custom_chat_template`` applied), without loading any weights."""
    from rlkit.training import models

    m = cfg.actor_rollout_ref.model
    return models.model_tokenizer(m, models.resolve_model_path(m.path, m.get("gguf_file")))


def _load_datasets(cfg, tokenizer):
    """Train and validation RLDatasets, checked now: files exist and follow verl's schema, every
    prompt fits max_prompt_length (with truncation=error), a batch fits the training set."""
    from rlkit.datasets.rl_dataset import PromptTooLongError, RLDataset

    d = cfg.data
    out = []
    for key, max_key in (("train_files", "train_max_samples"), ("val_files", "val_max_samples")):
        if not d.get(key):
            raise ValueError(f"data.{key} is not set; prepare GSM8K with rlkit.datasets.gsm8k() and pass "
                             f"data.{key}=~/data/gsm8k/{'train' if key == 'train_files' else 'test'}.parquet")
        files = _files(d[key])
        for f in files:
            if not Path(f).expanduser().exists():
                raise FileNotFoundError(f"data.{key}: {f} not found; run `python -m rlkit.datasets.gsm8k --local_dir DIR` "
                                        "or point data.train_files / data.val_files at verl-schema parquet files")
        ds = RLDataset(files, tokenizer, prompt_key=d.prompt_key, max_prompt_length=int(d.max_prompt_length),
                       truncation=d.truncation, filter_overlong_prompts=bool(d.filter_overlong_prompts),
                       max_samples=int(d.get(max_key, -1) or -1), shuffle=bool(d.get("shuffle", True)),
                       seed=int(d.get("seed") or 1))  # null: 1, as the sampler (a resumed run draws the same rows)
        if len(ds) == 0:
            raise ValueError(f"data.{key}: no prompts left in {', '.join(files)} (data.{max_key}, filtering)")
        if d.truncation == "error" and not d.filter_overlong_prompts:
            lengths = ds.prompt_lengths()
            over = [i for i, n in enumerate(lengths) if n > int(d.max_prompt_length)]
            if over:
                raise PromptTooLongError(
                    f"data.{key}: {len(over)} of {len(lengths)} prompts are longer than data.max_prompt_length="
                    f"{d.max_prompt_length} (the longest has {max(lengths)} tokens; first: row {over[0]}). Fix: "
                    f"data.max_prompt_length={max(lengths)}, data.truncation=left|right|middle, or "
                    "data.filter_overlong_prompts=True")
        out.append(ds)
    train, val = out
    if int(d.train_batch_size) > len(train):
        raise ValueError(f"data.train_batch_size={d.train_batch_size} is larger than the training set "
                         f"({len(train)} prompts in {', '.join(_files(d.train_files))}). Fix: "
                         f"data.train_batch_size<={len(train)} or more data")
    return train, val


# ---------------------------------------------------------------------- pure helpers


def _row_columns(items: list[dict], n: int, uid_prefix: str | None = None) -> dict[str, list]:
    """Per-row columns for ``n`` samples of each dataset item (prompt-major, as generate returns
    them); ``uid`` groups a prompt's samples (GRPO/RLOO baselines)."""
    cols = {key: [it[src] for it in items for _ in range(n)]
            for key, src in (("data_source", "data_source"), ("ground_truth", "ground_truth"),
                             ("extra_info", "extra_info"), ("prompt_text", "prompt_text"))}
    if uid_prefix is not None:
        cols["uid"] = [f"{uid_prefix}{i}" for i in range(len(items)) for _ in range(n)]
    return cols


def _last_token_tensor(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B,) scores -> (B, R) with each score on the last response token."""
    out = torch.zeros_like(mask, dtype=torch.float32)
    last = (mask.sum(-1).long() - 1).clamp(min=0)
    out[torch.arange(len(scores)), last] = scores
    return out


def _rollout_mismatch(rollout_lp, actor_lp, mask) -> dict[str, float]:
    """The engine's policy against the trainer's on the sampled tokens, as verl 0.9 logs it
    (:mod:`rlkit.algos.mismatch`): ``training/rollout_probs_diff_{valid,max,mean,std}`` and
    ``training/rollout_actor_probs_pearson_corr`` (token probabilities), ``rollout_corr/*`` (KL, perplexities,
    chi-squared of the importance ratio). The first thing to check when PPO misbehaves."""
    d = algos.probs_diff_metrics(rollout_lp, actor_lp, mask)
    out = {f"training/rollout_probs_diff_{k}": d[k] for k in ("valid", "max", "mean", "std")}
    out["training/rollout_actor_probs_pearson_corr"] = d["pearson_corr"]
    if d["valid"]:
        out.update({f"rollout_corr/{k}": v for k, v in algos.offpolicy_metrics(actor_lp, rollout_lp, mask).items()})
    return out


def _stats(prefix: str, x: torch.Tensor) -> dict[str, float]:
    if x.numel() == 0:
        return {}
    return {f"{prefix}/mean": x.float().mean().item(), f"{prefix}/max": x.float().max().item(),
            f"{prefix}/min": x.float().min().item()}


def _data_metrics(batch, max_response_length: int, max_prompt_length: int) -> dict[str, float]:
    mask = batch["response_mask"].bool()
    resp_len = mask.sum(-1).float()
    prompt_len = batch["attention_mask"][:, : batch["prompts"].shape[1]].sum(-1).float()
    m = {}
    m.update(_stats("critic/score", batch["token_level_scores"].sum(-1)))
    m.update(_stats("critic/rewards", batch["token_level_rewards"].sum(-1)))
    m.update(_stats("critic/advantages", batch["advantages"][mask]))
    m.update(_stats("critic/returns", batch["returns"][mask]))
    if "values" in batch:
        m.update(_stats("critic/values", batch["values"][mask]))
        m["critic/vf_explained_var"] = algos.explained_variance(batch["values"], batch["returns"], batch["response_mask"]).item()
    m.update(_stats("response_length", resp_len))
    m["response_length/clip_ratio"] = (resp_len >= max_response_length).float().mean().item()
    # verl: a response of length 0 was aborted; the non-aborted ones get their own length statistics
    aborted = resp_len == 0
    kept = resp_len[~aborted]
    m["response/aborted_ratio"] = aborted.float().mean().item()
    if kept.numel():
        m.update(_stats("response_length_non_aborted", kept))
        m["response_length_non_aborted/clip_ratio"] = (kept >= max_response_length).float().mean().item()
    else:
        m.update({f"response_length_non_aborted/{k}": 0.0 for k in ("mean", "max", "min", "clip_ratio")})
    m.update(_stats("prompt_length", prompt_len))
    m["prompt_length/clip_ratio"] = (prompt_len >= max_prompt_length).float().mean().item()
    return m


def _timing_metrics(timing: dict[str, float], batch, n_gpus: int = 1) -> dict[str, float]:
    resp_tokens = batch["response_mask"].sum().item()
    total_tokens = batch["attention_mask"].sum().item()
    m = {f"timing_s/{k}": v for k, v in timing.items()}
    for k, v in timing.items():
        tokens = resp_tokens if k == "gen" else total_tokens
        if k != "step" and tokens:
            m[f"timing_per_token_ms/{k}"] = 1000 * v / tokens
    m["perf/total_num_tokens"] = total_tokens
    m["perf/time_per_step"] = timing.get("step", 0.0)
    m["perf/throughput"] = total_tokens / max(timing.get("step", 0.0), 1e-9) / n_gpus
    return m
