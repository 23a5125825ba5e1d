"""The training worker: actor, critic, reference and rollout engine behind one narrow interface.

The controller (:class:`rlkit.Experiment`) never touches a model. It sends prompts or a
:class:`~rlkit.datasets.batch.RolloutBatch` (its module docstring has the shape table) and gets
tensors and metric dicts back. Today the worker lives in the controller's process (``hf`` on one
device); the same class runs inside a Ray actor when the engine must not share the notebook's
process (SGLang). Micro- and mini-batch sizes come from :class:`~rlkit.parallel.ParallelPlan`, the
same plan ``validate()`` checks.
"""
from __future__ import annotations

import contextlib
import functools
import time
from typing import Any, Callable

import torch

from rlkit import algos
from rlkit.datasets.batch import RolloutBatch
from rlkit.diagnostics import memory as memory_lib
from rlkit.parallel import ParallelPlan
from rlkit.rollout.base import SamplingParams, get_rollout_class
from rlkit.training import models
from rlkit.training.optim import build_optimizer, build_scheduler

Batch = RolloutBatch


def resolve_device(requested: str | None) -> torch.device:
    """``trainer.device``: 'cuda' falls back to CPU when no GPU is visible."""
    if requested in (None, "", "auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    if requested and requested.startswith("cuda") and torch.cuda.is_available():
        return torch.device(requested)
    return torch.device("cpu")


def iter_chunks(indices: torch.Tensor, size: int):
    for start in range(0, len(indices), size):
        yield indices[start : start + size]


def needs_reference(cfg) -> bool:
    return bool(cfg.actor_rollout_ref.actor.use_kl_loss or cfg.algorithm.use_kl_in_reward)


# ---------------------------------------------------------------------- shared by PPOWorker and RankWorker
def load_role_models(cfg, model_dir: str, device: torch.device | None, dtypes: dict[str, torch.dtype] | None = None,
                     place: Callable[[str, torch.nn.Module], torch.nn.Module] | None = None):
    """Load the roles a config trains: ``(actor, ref, critic)``; ref and critic are None when not needed.

    Args:
        cfg: the run's config (``actor_rollout_ref.model``, ``critic.model``, the estimator, the KL switches).
        model_dir: the actor's resolved folder (the critic uses it too unless ``critic.model.path`` differs).
        device: where each model goes right after it loads; None leaves it on the CPU.
        dtypes: per role (``"actor"``, ``"ref"``, ``"critic"``) the dtype to load in; float32 by default.
        place: ``place(role, model) -> model`` run on each model right after it loads (and moves),
            before the next one loads: a rank worker shards there, so at most one unsharded copy is held.

    The reference model comes back in eval mode without gradients. Models load in the order actor,
    ref, critic (a value head's random initialisation draws from the current random stream).
    """
    dtypes = dtypes or {}
    arr = cfg.actor_rollout_ref
    override = dict(arr.model.get("override_config") or {})
    trust = arr.model.get("trust_remote_code", False)

    def finish(role: str, model):
        if device is not None:
            model = model.to(device)
        return place(role, model) if place is not None else model

    actor = finish("actor", models.load_causal_lm(model_dir, dtypes.get("actor", torch.float32), override,
                                                  arr.model.enable_gradient_checkpointing, trust))
    ref = None
    if needs_reference(cfg):
        ref = models.load_causal_lm(model_dir, dtypes.get("ref", torch.float32), override, trust_remote_code=trust)
        ref = finish("ref", ref.eval().requires_grad_(False))
    critic = None
    if algos.estimator_needs_critic(cfg.algorithm.adv_estimator):
        c = cfg.critic
        critic_path = c.model.get("path") or arr.model.path
        critic_dir = (model_dir if critic_path == arr.model.path and not c.model.get("gguf_file")
                      else models.resolve_model_path(critic_path, c.model.get("gguf_file")))
        critic = finish("critic", models.load_value_model(
            critic_dir, dtypes.get("critic", torch.float32), dict(c.model.get("override_config") or {}),
            c.model.enable_gradient_checkpointing, c.model.get("trust_remote_code", False)))
    return actor, ref, critic


def eos_token_ids(tokenizer, model_dir: str) -> list[int]:
    """The tokenizer's eos plus the checkpoint's generation_config eos ids (every engine stops on these)."""
    from transformers import GenerationConfig

    ids = {tokenizer.eos_token_id}
    try:
        gen_eos = GenerationConfig.from_pretrained(model_dir).eos_token_id
    except OSError:  # no generation_config.json
        gen_eos = None
    if isinstance(gen_eos, int):
        ids.add(gen_eos)
    elif isinstance(gen_eos, (list, tuple)):
        ids.update(gen_eos)
    return sorted(i for i in ids if i is not None)


def sampling_params(cfg, stop_token_ids: list[int], validate: bool = False) -> SamplingParams:
    """``rollout.*`` (or ``rollout.val_kwargs.*`` with ``validate``) as engine-neutral SamplingParams."""
    r = cfg.actor_rollout_ref.rollout
    src = r.val_kwargs if validate else r
    return SamplingParams(
        max_new_tokens=int(cfg.data.max_response_length),
        n=int(src.n), temperature=float(src.temperature), top_p=float(src.top_p), top_k=int(src.top_k),
        do_sample=bool(src.do_sample), ignore_eos=bool(r.get("ignore_eos", False)),
        stop_token_ids=list(stop_token_ids),  # every engine stops on the same ids
    )


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` to ``dtype`` on ``device``, or nothing when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def critic_loss_agg_mode(cfg) -> str:
    """``critic.loss_agg_mode``, falling back to the actor's."""
    return cfg.critic.get("loss_agg_mode") or cfg.actor_rollout_ref.actor.loss_agg_mode


def actor_micro_loss(cfg, logits: torch.Tensor, mb: RolloutBatch) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO clipped policy loss (+ entropy bonus, + KL loss) of one micro-batch from the actor's
    :func:`response_logits`; every term aggregated with ``actor.loss_agg_mode`` over the same units.
    Returns the loss and its ``actor/*`` metrics."""
    a = cfg.actor_rollout_ref.actor
    agg = a.loss_agg_mode
    mask = mb["response_mask"]
    log_prob = algos.logprobs_from_logits(logits, mb["responses"])
    pg_loss, m = algos.compute_policy_loss(
        mb["old_log_probs"], log_prob, mb["advantages"], mask,
        clip_ratio_low=float(a.clip_ratio_low if a.get("clip_ratio_low") is not None else a.clip_ratio),
        clip_ratio_high=float(a.clip_ratio_high if a.get("clip_ratio_high") is not None else a.clip_ratio),
        clip_ratio_c=float(a.clip_ratio_c), loss_agg_mode=agg)
    entropy = algos.agg_loss(algos.entropy_from_logits(logits), mask, agg)
    # loss = L_clip - c_ent * H + c_kl * KL(pi || pi_ref)
    loss = pg_loss - float(a.entropy_coeff) * entropy
    row = {"actor/pg_loss": pg_loss.item(), "actor/pg_clipfrac": m["pg_clipfrac"],
           "actor/ppo_kl": m["ppo_kl"], "actor/pg_clipfrac_lower": m["pg_clipfrac_lower"],
           "actor/entropy": entropy.item()}
    if a.use_kl_loss:
        kl = algos.kl_penalty(log_prob, mb["ref_log_prob"], a.kl_loss_type)
        kl_loss = algos.agg_loss(kl, mask, agg)
        loss = loss + float(a.kl_loss_coef) * kl_loss
        row.update({"actor/kl_loss": kl_loss.item(), "actor/kl_coef": float(a.kl_loss_coef)})
    return loss, row


def critic_micro_loss(cfg, vpreds: torch.Tensor, mb: RolloutBatch) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped value loss of one micro-batch's value predictions towards ``returns``; the loss and its
    ``critic/*`` metrics."""
    loss, m = algos.compute_value_loss(vpreds, mb["values"], mb["returns"], mb["response_mask"],
                                       float(cfg.critic.cliprange_value), critic_loss_agg_mode(cfg))
    return loss, {"critic/vf_loss": loss.item(), "critic/vf_clipfrac": m["vf_clipfrac"],
                  "critic/vpred_mean": m["vpred_mean"]}


def response_logits(model, mb: RolloutBatch, temperature: float, device: torch.device | None = None,
                    autocast_dtype: torch.dtype | None = None) -> torch.Tensor:
    """(mb, R, V) fp32 logits predicting each response token, scaled by 1 / temperature (0 counts as 1);
    the forward runs under :func:`autocast` when ``autocast_dtype`` is given (PPOWorker on GPU)."""
    R = mb["responses"].shape[1]
    with autocast(device, autocast_dtype):
        out = model(input_ids=mb["input_ids"], attention_mask=mb["attention_mask"],
                    position_ids=mb["position_ids"], use_cache=False, logits_to_keep=R + 1)
    logits = out.logits[:, -R - 1 : -1].float()  # logits at position t predict token t+1
    return logits / (float(temperature) or 1.0)


class HoldsRoles:
    """What a worker in this process (:class:`PPOWorker`) and a rank worker
    (:class:`~rlkit.training.rank_worker.RankWorker`) both answer about what they hold: set
    ``ref``, ``critic`` (None when the run has none) and ``tokenizer``."""

    ref: Any
    critic: Any
    tokenizer: Any

    @property
    def has_ref(self) -> bool:
        return self.ref is not None

    @property
    def has_critic(self) -> bool:
        return self.critic is not None

    def get_tokenizer(self):
        return self.tokenizer


def progress_bar(total: int, desc: str, enabled: bool):
    """A transient tqdm bar over micro-batches or tokens (``leave=False``), or a disabled one."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, disable=not enabled, dynamic_ncols=True)


class PPOWorker(HoldsRoles):
    """Owns every model, optimizer and the rollout engine of one PPO run on one device.

    Args:
        cfg: a validated :class:`rlkit.PPOConfig`.
        total_training_steps: updates the lr schedule spans (warmup ratio, cosine decay); the
            controller may set it later with :meth:`set_total_training_steps`, before the first update.
        progress: show progress bars while generating.

    The worker records its memory (:func:`rlkit.diagnostics.memory.snapshot`) at engine start, model load
    and every phase the controller names (:meth:`memory_snapshot`), plus the engine's TP pre-flight
    reading; :meth:`take_snapshots` hands them over.
    """

    def __init__(self, cfg, total_training_steps: int = 1, progress: bool = False):
        self.cfg = cfg
        self.snapshots: list[dict] = []
        self.snapshot_seconds = 0.0
        self.total_training_steps = total_training_steps
        self.plan = ParallelPlan.from_config(cfg)  # per-rank batch sizes, the ones validate() checked
        self.load_time: float | None = None
        arr = cfg.actor_rollout_ref
        self.device = resolve_device(cfg.trainer.get("device", "cuda"))
        on_gpu = self.device.type == "cuda"
        # fp32 master weights everywhere; on GPU the math runs under bf16 autocast
        self.autocast_dtype = torch.bfloat16 if on_gpu else None
        self.progress = progress
        # the run's own random stream (sampling, initialisation): seeded from data.seed, saved in
        # checkpoints, and never the global state of the process this worker lives in
        self._rng_devices = [self.device.index or 0] if on_gpu else []
        with torch.random.fork_rng(devices=self._rng_devices):
            torch.manual_seed(int(cfg.data.get("seed", 1) or 1))
            self._rng = self._rng_now()

        self.model_dir = models.resolve_model_path(arr.model.path, arr.model.get("gguf_file"))
        self.tokenizer = models.load_tokenizer(self.model_dir, arr.model.get("tokenizer_path"),
                                               arr.model.get("trust_remote_code", False))
        engine_cls = get_rollout_class(arr.rollout.name)
        self.rollout = None
        if hasattr(engine_cls, "from_worker"):
            # an engine with its own GPU memory (SGLang) starts before any training state loads, so
            # every TP rank has the same free memory (SGLang's imbalance check), then sleeps until
            # the first generate, when wake_rollout() pushes the actor's weights into it
            self._init_snapshot("engine_start", "start")
            self.rollout = engine_cls.from_worker(self)  # runs the TP memory pre-flight first
            preflight = getattr(self.rollout, "preflight_snapshot", None)
            if preflight is not None:
                self.snapshots.append(preflight.to_dict())
            self.rollout.sleep()
            self._init_snapshot("engine_start", "end")
        self._init_snapshot("load_models", "start")

        with self._own_rng():
            self.actor, self.ref, self.critic = load_role_models(
                cfg, self.model_dir, self.device, {"ref": torch.bfloat16 if on_gpu else torch.float32})
        self.actor_optim = build_optimizer(self.actor.parameters(), arr.actor.optim)
        if self.critic is not None:
            self.critic_optim = build_optimizer(self.critic.parameters(), cfg.critic.optim)
        self.set_total_training_steps(self.total_training_steps)
        self.load_time = time.time()
        self._init_snapshot("load_models", "end")

        if self.rollout is None:  # `hf`: generates with the actor's own module
            self.rollout = engine_cls(self.actor, self.tokenizer.pad_token_id, self.eos_token_ids(),
                                      max_batch_size=arr.rollout.get("max_num_seqs") or None)
        self.rollout.progress = progress

    # ------------------------------------------------------------------ memory
    def memory_snapshot(self, step: int | None, phase: str, event: str) -> None:
        """Record this worker's GPUs and host memory now (kept until :meth:`take_snapshots`); torch's
        peak counters reset at each step start. A remote controller sends this without waiting: the
        worker runs calls in order, so the reading lands exactly between the phases around it."""
        t0 = time.perf_counter()
        if phase == "step" and event == "start" and self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self.snapshots.append(memory_lib.snapshot(rank=0, step=step, phase=phase, event=event).to_dict())
        self.snapshot_seconds += time.perf_counter() - t0

    def _init_snapshot(self, phase: str, event: str) -> None:
        self.memory_snapshot(None, phase, event)

    def take_snapshots(self) -> tuple[list[dict], float]:
        """The snapshots recorded since the last call (MemorySnapshot dicts), handed over once, and
        the seconds this worker spent taking them."""
        out, secs = self.snapshots, self.snapshot_seconds
        self.snapshots, self.snapshot_seconds = [], 0.0
        return out, secs

    def set_total_training_steps(self, total: int) -> None:
        """(Re)build the lr schedules for ``total`` updates; only before the first update."""
        self.actor_sched = build_scheduler(self.actor_optim, self.cfg.actor_rollout_ref.actor.optim, total)
        if self.critic is not None:
            self.critic_sched = build_scheduler(self.critic_optim, self.cfg.critic.optim, total)

    # ------------------------------------------------------------------ helpers
    @functools.cache
    def eos_token_ids(self) -> list[int]:
        """The tokenizer's eos plus the checkpoint's generation_config eos ids (:func:`eos_token_ids`)."""
        return eos_token_ids(self.tokenizer, self.model_dir)

    def _autocast(self):
        return autocast(self.device, self.autocast_dtype)

    def _rng_now(self) -> dict:
        return {"cpu": torch.get_rng_state(),
                "cuda": [torch.cuda.get_rng_state(d) for d in self._rng_devices]}

    @contextlib.contextmanager
    def _own_rng(self):
        """Run with this worker's random stream; the process's global state is left as it was."""
        with torch.random.fork_rng(devices=self._rng_devices):
            torch.set_rng_state(self._rng["cpu"])
            for d, state in zip(self._rng_devices, self._rng["cuda"]):
                torch.cuda.set_rng_state(state, d)
            try:
                yield
            finally:
                self._rng = self._rng_now()

    def _bar(self, total: int, desc: str):
        """A progress bar over micro-batches or tokens, shown when the worker was built with progress=True."""
        return progress_bar(total, desc, self.progress)

    def _response_logits(self, model, mb: Batch) -> torch.Tensor:
        """(mb, R, V) logits predicting each response token, scaled by 1 / temperature."""
        return response_logits(model, mb, self.cfg.actor_rollout_ref.rollout.temperature, self.device,
                               self.autocast_dtype)

    def _progress(self, items: list, desc: str):
        bar = self._bar(len(items), desc)
        try:
            for item in items:
                yield item
                bar.update(1)
        finally:
            bar.close()

    def _micro(self, role: str, fallback: int) -> int:
        """Responses per forward(/backward) of ``role`` on this rank (the plan's; a dynamic token
        budget is not implemented yet, so then the mini-batch or whole batch is one micro-batch)."""
        return max(1, int(self.plan.role(role).micro_batch_per_rank or fallback))

    # ------------------------------------------------------------------ rollout
    def sampling_params(self, validate: bool = False) -> SamplingParams:
        return sampling_params(self.cfg, self.eos_token_ids(), validate)

    def generate(self, prompt_ids: list[list[int]], validate: bool = False) -> RolloutBatch:
        """Sample ``n`` responses per prompt (prompt-major): a RolloutBatch with the generation
        tensors and a ``finish_reason`` column ("stop" | "length")."""
        sampling = self.sampling_params(validate)
        with self._own_rng():
            out = self.rollout.generate(prompt_ids, sampling)
        prompts = [p for p in prompt_ids for _ in range(sampling.n)]
        return RolloutBatch.from_generation(prompts, out.response_ids, out.log_probs, self.tokenizer.pad_token_id,
                                            columns={"finish_reason": out.finish_reasons})

    def wake_rollout(self) -> None:
        """Give the GPU to the engine: resume weights -> push the actor's -> resume the KV cache."""
        self.rollout.wake_up(self.actor.named_parameters())

    def sleep_rollout(self) -> None:
        """Give the GPU back to training (frees KV cache and weights when rollout.free_cache_engine)."""
        self.rollout.sleep()

    def sync_rollout_weights(self) -> None:
        """Push the actor's weights into an awake engine (free when it shares them); a sleeping
        engine gets them at its next wake-up instead."""
        if self.rollout.awake:
            self.rollout.update_weights(self.actor.named_parameters())

    def describe(self) -> dict:
        """What a remote controller needs to know about this worker."""
        return {"has_ref": self.has_ref, "has_critic": self.has_critic, "model_dir": self.model_dir,
                "device": str(self.device), "load_time": self.load_time}

    # ------------------------------------------------------------------ forward passes
    @torch.no_grad()
    def compute_log_prob(self, batch: Batch) -> dict[str, torch.Tensor]:
        """old_log_probs (B, R) and entropys (B, R) under the current actor."""
        return self._log_probs(self.actor, batch, with_entropy=True)

    @torch.no_grad()
    def compute_ref_log_prob(self, batch: Batch) -> torch.Tensor:
        if self.ref is None:
            raise RuntimeError("no reference model: it is loaded only with actor.use_kl_loss or algorithm.use_kl_in_reward")
        return self._log_probs(self.ref, batch, with_entropy=False)["log_probs"]

    def _log_probs(self, model, batch: Batch, with_entropy: bool) -> dict[str, torch.Tensor]:
        size = self._micro("ref" if model is self.ref else "rollout", len(batch))
        was_training = model.training
        model.eval()
        lps, ents = [], []
        try:
            for mb in self._progress(batch.split(size), "ref log-probs" if model is self.ref else "old log-probs"):
                mb = mb.to(self.device)
                logits = self._response_logits(model, mb)
                lps.append(algos.logprobs_from_logits(logits, mb["responses"]).cpu())
                if with_entropy:
                    ents.append(algos.entropy_from_logits(logits).cpu())
        finally:
            model.train(was_training)
        out = {"log_probs": torch.cat(lps)}
        if with_entropy:
            out["entropys"] = torch.cat(ents)
        return out

    @torch.no_grad()
    def compute_values(self, batch: Batch) -> torch.Tensor:
        """values (B, R): V(s_t) at the state before each response token."""
        size = self._micro("values", len(batch))
        self.critic.eval()
        vals = []
        for mb in self._progress(batch.split(size), "values"):
            vals.append(self._values(mb).cpu())
        self.critic.train()
        return torch.cat(vals)

    def _values(self, mb: Batch) -> torch.Tensor:
        mb = mb.to(self.device)
        R = mb["responses"].shape[1]
        with self._autocast():
            v = self.critic(mb["input_ids"], mb["attention_mask"], mb["position_ids"])
        # the value of the state that generates response token t sits at position P - 1 + t
        return v[:, -R - 1 : -1].float() * mb["response_mask"]

    # ------------------------------------------------------------------ updates
    def _minibatches(self, n: int, mini: int, epochs: int, shuffle: bool, seed: int):
        gen = torch.Generator().manual_seed(seed)
        for _ in range(epochs):
            order = torch.randperm(n, generator=gen) if shuffle else torch.arange(n)
            yield from iter_chunks(order, mini)

    def _train(self, role: str, model, optim, sched, batch: Batch, step: int, shuffle: bool, grad_clip: float,
               micro_loss) -> dict[str, float]:
        """The epoch / mini-batch / micro-batch loop shared by the actor and the critic.

        ``micro_loss(mb) -> (loss, metrics)`` gives the mean loss of one micro-batch; it is scaled by
        the micro-batch's share of the mini-batch, so the accumulated gradient is the mini-batch mean.
        One optimizer step per mini-batch (sizes from the plan), one lr-schedule step per call.
        """
        sizes = self.plan.role(role)
        mini = int(sizes.mini_batch_per_rank or len(batch))
        micro = self._micro(role, mini)
        epochs = int(sizes.epochs or 1)
        stats: dict[str, list[float]] = {}
        model.train()
        bar = self._bar(epochs * -(-len(batch) // micro), f"update {role}")
        for mini_idx in self._minibatches(len(batch), mini, epochs, shuffle, step):
            optim.zero_grad(set_to_none=True)
            for idx in iter_chunks(mini_idx, micro):
                bar.update(1)
                loss, row = micro_loss(batch.select(idx).to(self.device))
                (loss * len(idx) / len(mini_idx)).backward()
                _append(stats, row)
            _append(stats, {f"{role}/grad_norm": self._clip_and_step(model, optim, grad_clip)})
        bar.close()
        sched.step()
        out = {k: sum(v) / len(v) for k, v in stats.items()}
        out[f"{role}/lr"] = sched.get_last_lr()[0]
        return out

    def update_critic(self, batch: Batch, step: int) -> dict[str, float]:
        """Clipped value loss towards ``returns``; metrics ``critic/vf_loss``, ``critic/grad_norm``, ..."""
        c = self.cfg.critic

        def micro_loss(mb):
            return critic_micro_loss(self.cfg, self._values(mb), mb)

        return self._train("critic", self.critic, self.critic_optim, self.critic_sched, batch, step,
                           bool(c.get("shuffle", False)), float(c.grad_clip), micro_loss)

    def update_actor(self, batch: Batch, step: int) -> dict[str, float]:
        """PPO clipped policy loss (+ entropy bonus, + KL loss); metrics ``actor/pg_loss``, ..."""
        a = self.cfg.actor_rollout_ref.actor

        def micro_loss(mb):
            return actor_micro_loss(self.cfg, self._response_logits(self.actor, mb), mb)

        return self._train("actor", self.actor, self.actor_optim, self.actor_sched, batch, step, bool(a.shuffle),
                           float(a.grad_clip), micro_loss)

    @staticmethod
    def _clip_and_step(model, optim, grad_clip: float) -> float:
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        if not torch.isfinite(grad_norm):
            # as verl: a non-finite gradient skips the update instead of poisoning the weights
            optim.zero_grad(set_to_none=True)
            return float("nan")
        optim.step()
        return grad_norm.item()

    # ------------------------------------------------------------------ state
    def reset_after_interrupt(self) -> None:
        """Bring the worker back to a usable state after an interrupted call."""
        self.actor_optim.zero_grad(set_to_none=True)
        if self.critic is not None:
            self.critic_optim.zero_grad(set_to_none=True)
        self.actor.train()

    def state_dict(self) -> dict[str, Any]:
        """``{"actor": {"model", "optimizer"}, "critic": {...} (GAE only), "rng": this worker's random state}``;
        "optimizer" holds the AdamW state and the lr schedule."""
        state = {"actor": {"model": self.actor.state_dict(),
                           "optimizer": {"optim": self.actor_optim.state_dict(), "sched": self.actor_sched.state_dict()}},
                 "rng": self._rng}
        if self.critic is not None:
            state["critic"] = {"model": self.critic.state_dict(),
                               "optimizer": {"optim": self.critic_optim.state_dict(),
                                             "sched": self.critic_sched.state_dict()}}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load :meth:`state_dict` output. A role saved without its optimizer starts a fresh AdamW
        (its schedule still continues from the saved step count, when there is one). The learning
        rates are this worker's config's (a resumed run may change them)."""
        roles = [("actor", self.actor, self.actor_optim, self.actor_sched, self.cfg.actor_rollout_ref.actor.optim)]
        if self.critic is not None:
            if "critic" not in state:
                raise ValueError("checkpoint has no critic but this config trains one (algorithm.adv_estimator=gae)")
            roles.append(("critic", self.critic, self.critic_optim, self.critic_sched, self.cfg.critic.optim))
        for role, model, optim, sched, optim_cfg in roles:
            model.load_state_dict(state[role]["model"])
            saved = state[role].get("optimizer")
            if saved is not None:
                optim.load_state_dict(saved["optim"])
                sched.load_state_dict(saved["sched"])
            _set_base_lr(optim, sched, float(optim_cfg.lr))
        if state.get("rng") is not None:
            self._rng = state["rng"]
        self.sync_rollout_weights()

    def shutdown(self) -> None:
        if self.rollout is not None:
            self.rollout.shutdown()
            self.rollout = None


def _set_base_lr(optim, sched, lr: float) -> None:
    """Make ``lr`` the schedule's base learning rate, keeping its position (step count)."""
    sched.base_lrs = [lr] * len(optim.param_groups)
    for group, fn in zip(optim.param_groups, sched.lr_lambdas):
        group["initial_lr"] = lr
        group["lr"] = lr * fn(sched.last_epoch)
    sched._last_lr = [g["lr"] for g in optim.param_groups]


def _append(stats: dict[str, list[float]], row: dict[str, float]) -> None:
    for k, v in row.items():
        stats.setdefault(k, []).append(float(v))
