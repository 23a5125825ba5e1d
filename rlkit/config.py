"""rlkit's run configuration, key-compatible with verl's ``ppo_trainer.yaml``.

A verl command line pastes straight in::

    >>> from rlkit.config import PPOConfig
    >>> cfg = PPOConfig.from_overrides([
    ...     "data.train_batch_size=256",
    ...     "actor_rollout_ref.actor.optim.lr=1e-6",
    ...     "actor_rollout_ref.actor.ppo_mini_batch_size=64",
    ...     "trainer.logger=['console']",
    ...     "trainer.n_gpus_per_node=1",
    ... ])
    >>> cfg.actor_rollout_ref.actor.optim.lr
    1e-06

The key tree, names and defaults follow verl (v0.4/v0.5 era, with a few later
keys); the handful of rlkit choices are marked ``rlkit:`` in the comments. The
result is an OmegaConf ``DictConfig`` backed by the dataclasses below, so every
assignment is type-checked. ``validate`` checks values and the batch-size
arithmetic before any model or data is loaded, and reports every problem at once.

Override syntax is Hydra's, as typed on a shell command line:

* ``key=value``   set a key (values parse like Hydra: ``1e-6`` float, ``True`` bool,
  ``null`` None, ``[a, 'b']`` list, ``{k: v}`` dict, ``${a.b}`` interpolation).
* ``+key=value``  add a key that does not exist yet; only possible inside the open
  dicts (``override_config``, ``engine_kwargs.sglang``, ``reward_kwargs`` ...).
* ``++key=value`` add or override.
* ``~key``        (delete) is not supported.

Inside an open dict, ``key=value`` also adds a missing key, because verl versions
differ in which keys they pre-populate there and there is no schema to protect.

This module imports only the standard library, omegaconf and rlkit.parallel (standard library only).
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import re
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from omegaconf import II, DictConfig, ListConfig, OmegaConf

from rlkit.parallel import ParallelPlan

__all__ = [
    "PPOConfig",
    "ConfigError",
    "ConfigWarning",
    "ParallelPlan",
    "RuntimeRequirementError",
    "check_runtime",
    "runtime_problems",
    "validate",
    "to_yaml",
    "to_overrides",
    "parse_override_value",
    "ROLLOUT_NAMES",
    "ROLLOUT_MODES",
    "ADV_ESTIMATORS",
    "LOSS_AGG_MODES",
    "KL_PENALTIES",
    "KL_CTRL_TYPES",
    "LOGGERS",
    "VERL_ONLY_LOGGERS",
    "TP_MEMORY_CHECKS",
    "LR_SCHEDULER_TYPES",
    "UNSUPPORTED_KEYS",
    "ACCEPTED_UNREAD_KEYS",
    "DEFAULT_MODEL",
]

# Names accepted by validate(). The lead may later source these from rlkit.algos;
# they are kept here so that importing the config stays free of torch.
ROLLOUT_NAMES = ("hf", "sglang")
ROLLOUT_MODES = ("sync", "async")
ADV_ESTIMATORS = ("gae", "grpo", "rloo", "reinforce_plus_plus")
LOSS_AGG_MODES = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")
# verl's estimators, and each with "+": the same value with k2's gradient (straight-through)
KL_PENALTIES = ("kl", "k1", "abs", "mse", "k2", "low_var_kl", "k3",
                "kl+", "k1+", "abs+", "mse+", "k2+", "low_var_kl+", "k3+")
KL_CTRL_TYPES = ("fixed", "adaptive")
LOGGERS = ("console", "jsonl", "tensorboard")
VERL_ONLY_LOGGERS = ("wandb", "mlflow", "swanlab", "vemlp_wandb", "clearml", "trackio", "file")
TP_MEMORY_CHECKS = ("error", "warn", "off")
TRUNCATIONS = ("error", "left", "right", "middle")
WARMUP_STYLES = ("constant", "cosine")  # deprecated optim.warmup_style, an alias of lr_scheduler_type
LR_SCHEDULER_TYPES = ("constant", "cosine")
RESUME_MODES = ("auto", "disable", "resume_path")
STRATEGIES = ("fsdp", "fsdp2")
DTYPES = ("bfloat16", "float16", "float32")
DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


# --------------------------------------------------------------------------- schema
# One dataclass per verl section. Fields typed Dict[str, Any] are open dicts (any
# key may be added); every other section rejects unknown keys.

@dataclass
class CustomClsConfig:
    path: Optional[str] = None  # file defining a custom dataset class
    name: Optional[str] = None  # class name inside that file


@dataclass
class DataConfig:
    tokenizer: Optional[str] = None  # verl's key, read by neither: must stay None (model.tokenizer_path instead)
    use_shm: bool = False  # copy data through /dev/shm (verl; ignored on one device)
    train_files: Any = "~/data/gsm8k/train.parquet"  # parquet path or list of paths (rlkit: where verl's gsm8k prep writes)
    val_files: Any = "~/data/gsm8k/test.parquet"  # parquet path or list of paths
    prompt_key: str = "prompt"  # column holding the chat-format prompt
    reward_fn_key: str = "data_source"  # column that picks the reward function
    max_prompt_length: int = 512  # prompt tokens; longer prompts follow `truncation`
    max_response_length: int = 512  # most tokens generated per response
    train_batch_size: int = 1024  # prompts per training step (responses = this * rollout.n)
    val_batch_size: Optional[int] = None  # deprecated in verl; validation runs as one batch
    train_max_samples: int = -1  # use N training rows (-1: all): a random subset seeded by `seed` with `shuffle`, as verl; else the first N
    val_max_samples: int = -1  # use N validation rows (-1: all), drawn the same way (verl: `shuffle`, not validation_shuffle)
    return_raw_input_ids: bool = False  # also return un-templated ids (RM with other tokenizer)
    return_raw_chat: bool = False  # also return the raw chat messages
    return_full_prompt: bool = False  # also return the templated prompt text
    shuffle: bool = True  # shuffle the training set each epoch
    validation_shuffle: bool = False  # shuffle the validation set
    seed: Optional[int] = 1  # dataloader shuffle seed and *_max_samples subset seed (null: 1 in rlkit; verl: null = unseeded)
    dataloader_num_workers: int = 8  # verl's loader processes; rlkit loads in-process, but 0 vs >0 picks verl's prompt order
    filter_overlong_prompts: bool = False  # drop prompts longer than max_prompt_length
    filter_overlong_prompts_workers: int = 1  # processes used for that filtering
    truncation: str = "error"  # overlong prompt: error | left | right | middle
    image_key: str = "images"  # multimodal column (unused by rlkit)
    video_key: str = "videos"  # multimodal column (unused by rlkit)
    trust_remote_code: bool = False  # allow tokenizer code from the hub
    custom_cls: CustomClsConfig = field(default_factory=CustomClsConfig)  # custom dataset class


@dataclass
class ModelConfig:
    path: str = DEFAULT_MODEL  # HF repo id or local dir (rlkit: small default model)
    gguf_file: Optional[str] = None  # rlkit: GGUF file name inside `path` to load weights from
    tokenizer_path: Optional[str] = None  # tokenizer location; None = `path`
    custom_chat_template: Optional[str] = None  # Jinja chat template replacing the tokenizer's
    use_shm: bool = False  # load weights through /dev/shm
    external_lib: Optional[str] = None  # module to import before loading (custom archs)
    override_config: Dict[str, Any] = field(default_factory=dict)  # open dict: HF config overrides
    enable_gradient_checkpointing: bool = False  # recompute activations in backward (rlkit: off; verl: on)
    enable_activation_offload: bool = False  # offload activations to CPU
    use_remove_padding: bool = False  # pack each micro-batch's sequences into one row without padding (faster)
    lora_rank: int = 0  # LoRA rank; 0 = full fine-tuning
    lora_alpha: int = 16  # LoRA alpha
    target_modules: Any = "all-linear"  # LoRA targets: "all-linear" or a list of module names
    exclude_modules: Optional[str] = None  # regex of modules LoRA skips
    use_liger: bool = False  # use Liger kernels
    use_fused_kernels: bool = False  # fused log-prob/entropy kernels
    trust_remote_code: bool = False  # allow model code from the hub


@dataclass
class OptimConfig:
    lr: float = 1e-6  # learning rate
    lr_warmup_steps: int = -1  # warmup steps; negative = use lr_warmup_steps_ratio
    lr_warmup_steps_ratio: float = 0.0  # warmup as a fraction of total steps
    min_lr_ratio: Optional[float] = 0.0  # cosine schedule floor, as a fraction of lr
    num_cycles: float = 0.5  # cosine waves over the decay (0.5: one half-wave from lr down to min_lr_ratio*lr)
    lr_scheduler_type: str = "constant"  # constant | cosine (after the linear warmup)
    warmup_style: Optional[str] = None  # deprecated alias of lr_scheduler_type; when set it wins (verl)
    total_training_steps: int = -1  # filled in at run time
    weight_decay: float = 0.01  # AdamW weight decay
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])  # AdamW betas


@dataclass
class WrapPolicyConfig:
    min_num_params: int = 0  # FSDP auto-wrap threshold


@dataclass
class FSDPConfig:
    wrap_policy: WrapPolicyConfig = field(default_factory=WrapPolicyConfig)  # FSDP wrapping
    param_offload: bool = False  # keep parameters on CPU between uses
    optimizer_offload: bool = False  # keep optimizer state on CPU between steps
    offload_policy: bool = False  # FSDP2 CPU offload policy
    reshard_after_forward: bool = True  # FSDP2 reshard after forward
    fsdp_size: int = -1  # FSDP group size; -1 = all GPUs
    forward_prefetch: bool = False  # FSDP forward prefetch


@dataclass
class CheckpointConfig:
    save_contents: List[str] = field(default_factory=lambda: ["model", "optimizer", "extra"])  # what a checkpoint holds
    load_contents: List[str] = field(default_factory=lambda: ["model", "optimizer", "extra"])  # what resuming loads


@dataclass
class ActorConfig:
    strategy: str = "fsdp"  # fsdp | fsdp2 (rlkit on one device: no sharding either way)
    ppo_mini_batch_size: int = 256  # prompts per optimizer step (responses = this * rollout.n)
    ppo_micro_batch_size: Optional[int] = None  # deprecated global micro-batch (all GPUs)
    ppo_micro_batch_size_per_gpu: Optional[int] = None  # responses per forward/backward per GPU
    use_dynamic_bsz: bool = False  # pack micro-batches by token count instead
    ppo_max_token_len_per_gpu: int = 16384  # token budget per micro-batch when dynamic
    grad_clip: float = 1.0  # gradient-norm clip
    clip_ratio: float = 0.2  # PPO clip epsilon (used when low/high are unset)
    clip_ratio_low: float = 0.2  # lower clip epsilon
    clip_ratio_high: float = 0.2  # upper clip epsilon
    clip_ratio_c: float = 3.0  # dual-clip bound for negative advantages
    loss_agg_mode: str = "token-mean"  # token-mean | seq-mean-token-sum | seq-mean-token-mean | seq-mean-token-sum-norm
    entropy_coeff: float = 0.0  # entropy bonus weight
    calculate_entropy: bool = False  # compute (and report) the entropy in the update even with entropy_coeff=0
    loss_scale_factor: Optional[float] = None  # seq-mean-token-sum-norm divisor of the actor's losses; None = response length
    use_kl_loss: bool = False  # add KL(actor || ref) to the loss (GRPO style)
    use_torch_compile: bool = True  # on GPU: torch.compile each decoder layer of actor and critic
    kl_loss_coef: float = 0.001  # weight of that KL loss
    kl_loss_type: str = "low_var_kl"  # KL estimator for the loss
    ppo_epochs: int = 1  # passes over each batch
    shuffle: bool = False  # shuffle between PPO epochs
    recompute_old_log_prob: bool = True  # rlkit: False = the update's detached log-probs as the old ones
    ulysses_sequence_parallel_size: int = 1  # sequence parallel size (verl)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)  # checkpoint contents
    optim: OptimConfig = field(default_factory=OptimConfig)  # optimizer and schedule
    fsdp_config: FSDPConfig = field(default_factory=FSDPConfig)  # FSDP settings


@dataclass
class RefConfig:
    strategy: str = II("actor_rollout_ref.actor.strategy")  # follows the actor
    fsdp_config: FSDPConfig = field(default_factory=FSDPConfig)  # FSDP settings (param_offload matters)
    use_torch_compile: bool = II("actor_rollout_ref.actor.use_torch_compile")  # the reference's layers; follows the actor
    log_prob_micro_batch_size: Optional[int] = None  # deprecated global micro-batch (all GPUs)
    log_prob_micro_batch_size_per_gpu: Optional[int] = None  # responses per ref forward per GPU
    log_prob_use_dynamic_bsz: bool = II("actor_rollout_ref.actor.use_dynamic_bsz")  # follows the actor
    log_prob_max_token_len_per_gpu: int = II("actor_rollout_ref.actor.ppo_max_token_len_per_gpu")  # follows the actor
    ulysses_sequence_parallel_size: int = II("actor_rollout_ref.actor.ulysses_sequence_parallel_size")  # follows the actor


@dataclass
class EngineKwargsConfig:
    vllm: Dict[str, Any] = field(default_factory=dict)  # open dict: extra vLLM engine args (unused by rlkit)
    sglang: Dict[str, Any] = field(default_factory=dict)  # open dict: extra sglang.Engine args


@dataclass
class ValKwargsConfig:
    top_k: int = -1  # -1 = off
    top_p: float = 1.0  # nucleus sampling mass
    temperature: float = 0.0  # 0 = greedy
    n: int = 1  # responses per validation prompt
    do_sample: bool = False  # sample (True) or greedy (False)


@dataclass
class RolloutConfig:
    name: str = "hf"  # generation backend: hf | sglang (rlkit default hf; verl requires it)
    mode: str = "sync"  # sync | async
    temperature: float = 1.0  # sampling temperature
    top_k: int = -1  # -1 = off
    top_p: float = 1.0  # nucleus sampling mass
    do_sample: bool = True  # sample (True) or greedy (False)
    n: int = 1  # responses per prompt (>1 for GRPO/RLOO)
    prompt_length: int = II("data.max_prompt_length")  # follows data.max_prompt_length
    response_length: int = II("data.max_response_length")  # follows data.max_response_length
    dtype: str = "bfloat16"  # engine weight dtype
    gpu_memory_utilization: float = 0.5  # fraction of GPU memory the engine may take
    ignore_eos: bool = False  # keep generating past EOS
    enforce_eager: bool = False  # no CUDA graphs (sglang: disable_cuda_graph)
    free_cache_engine: bool = True  # release KV cache/weights while training
    load_format: str = "dummy"  # initial engine weights (real ones are synced in)
    layered_summon: bool = False  # gather FSDP params layer by layer for sync
    tensor_model_parallel_size: int = 2  # engine TP size (ignored by hf)
    max_num_batched_tokens: int = 8192  # engine prefill token budget
    max_model_len: Optional[int] = None  # engine context length; None = prompt + response
    max_num_seqs: int = 1024  # engine concurrent sequences (sglang: max_running_requests; decode CUDA graphs up to it)
    log_prob_micro_batch_size: Optional[int] = None  # deprecated global micro-batch (all GPUs)
    log_prob_micro_batch_size_per_gpu: Optional[int] = None  # responses per old-log-prob forward per GPU
    log_prob_use_dynamic_bsz: bool = II("actor_rollout_ref.actor.use_dynamic_bsz")  # follows the actor
    log_prob_max_token_len_per_gpu: int = II("actor_rollout_ref.actor.ppo_max_token_len_per_gpu")  # follows the actor
    disable_log_stats: bool = True  # silence engine stats
    enable_chunked_prefill: bool = True  # engine chunked prefill
    multi_stage_wake_up: bool = False  # resume engine weights before KV cache
    update_weights_bucket_megabytes: int = 512  # weight-sync bucket size
    calculate_log_probs: bool = True  # verl: return rollout log-probs (rlkit always does)
    tp_memory_check: str = "error"  # rlkit: SGLang TP free-memory imbalance check: error | warn | off
    engine_kwargs: EngineKwargsConfig = field(default_factory=EngineKwargsConfig)  # per-engine extras
    val_kwargs: ValKwargsConfig = field(default_factory=ValKwargsConfig)  # validation sampling


@dataclass
class ActorRolloutRefConfig:
    hybrid_engine: bool = True  # actor, rollout and ref share the devices
    model: ModelConfig = field(default_factory=ModelConfig)  # policy model
    actor: ActorConfig = field(default_factory=ActorConfig)  # policy training
    ref: RefConfig = field(default_factory=RefConfig)  # reference policy (KL)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)  # generation


@dataclass
class CriticModelConfig:
    path: str = II("actor_rollout_ref.model.path")  # value model init; follows the actor's
    gguf_file: Optional[str] = II("actor_rollout_ref.model.gguf_file")  # follows the actor's; null for a non-GGUF path
    tokenizer_path: Optional[str] = None  # None = the actor's tokenizer
    use_shm: bool = False  # load weights through /dev/shm
    override_config: Dict[str, Any] = field(default_factory=dict)  # open dict: HF config overrides
    external_lib: Optional[str] = II("actor_rollout_ref.model.external_lib")  # follows the actor
    trust_remote_code: bool = II("actor_rollout_ref.model.trust_remote_code")  # follows the actor
    enable_gradient_checkpointing: bool = False  # recompute activations (rlkit: off; verl: on)
    enable_activation_offload: bool = False  # offload activations to CPU
    use_remove_padding: bool = False  # pack sequences without padding
    fsdp_config: FSDPConfig = field(default_factory=FSDPConfig)  # FSDP settings
    lora_rank: int = 0  # LoRA rank; 0 = full fine-tuning
    lora_alpha: int = 16  # LoRA alpha
    target_modules: Any = "all-linear"  # LoRA targets


@dataclass
class CriticConfig:
    rollout_n: int = II("actor_rollout_ref.rollout.n")  # follows rollout.n
    strategy: str = II("actor_rollout_ref.actor.strategy")  # follows the actor
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-5))  # optimizer (lr 1e-5)
    model: CriticModelConfig = field(default_factory=CriticModelConfig)  # value model
    ppo_mini_batch_size: int = II("actor_rollout_ref.actor.ppo_mini_batch_size")  # follows the actor
    ppo_micro_batch_size: Optional[int] = None  # deprecated global micro-batch (all GPUs)
    ppo_micro_batch_size_per_gpu: Optional[int] = None  # responses per forward/backward per GPU
    forward_micro_batch_size: Optional[int] = II("critic.ppo_micro_batch_size")  # value-forward micro-batch
    forward_micro_batch_size_per_gpu: Optional[int] = II("critic.ppo_micro_batch_size_per_gpu")  # per GPU
    use_dynamic_bsz: bool = II("actor_rollout_ref.actor.use_dynamic_bsz")  # follows the actor
    ppo_max_token_len_per_gpu: int = 32768  # token budget per micro-batch when dynamic
    forward_max_token_len_per_gpu: int = II("critic.ppo_max_token_len_per_gpu")  # same, value forward
    ulysses_sequence_parallel_size: int = 1  # sequence parallel size (verl)
    ppo_epochs: int = II("actor_rollout_ref.actor.ppo_epochs")  # follows the actor
    shuffle: bool = II("actor_rollout_ref.actor.shuffle")  # follows the actor
    grad_clip: float = 1.0  # gradient-norm clip
    cliprange_value: float = 0.5  # value clip range
    loss_agg_mode: str = II("actor_rollout_ref.actor.loss_agg_mode")  # follows the actor
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)  # checkpoint contents


@dataclass
class RewardModelModelConfig:
    input_tokenizer: Optional[str] = II("actor_rollout_ref.model.path")  # tokenizer of the policy
    path: str = "~/models/FsfairX-LLaMA3-RM-v0.1"  # reward model
    external_lib: Optional[str] = II("actor_rollout_ref.model.external_lib")  # follows the actor
    use_remove_padding: bool = False  # pack sequences without padding
    trust_remote_code: bool = False  # allow model code from the hub
    fsdp_config: FSDPConfig = field(default_factory=FSDPConfig)  # FSDP settings


@dataclass
class RewardModelConfig:
    enable: bool = False  # model-based reward (rlkit: not supported yet)
    strategy: str = II("actor_rollout_ref.actor.strategy")  # follows the actor
    model: RewardModelModelConfig = field(default_factory=RewardModelModelConfig)  # reward model
    micro_batch_size: Optional[int] = None  # deprecated global micro-batch
    micro_batch_size_per_gpu: Optional[int] = None  # per-GPU micro-batch
    max_length: Optional[int] = None  # RM input length
    ulysses_sequence_parallel_size: int = 1  # sequence parallel size
    use_dynamic_bsz: bool = II("critic.use_dynamic_bsz")  # follows the critic
    forward_max_token_len_per_gpu: int = II("critic.forward_max_token_len_per_gpu")  # follows the critic
    reward_manager: str = "naive"  # how scores are computed per batch
    launch_reward_fn_async: bool = False  # score on CPU while log-probs compute
    reward_kwargs: Dict[str, Any] = field(default_factory=dict)  # open dict: reward manager kwargs


@dataclass
class CustomRewardFunctionConfig:
    path: Optional[str] = None  # .py file with the reward function; None = built-in by data_source
    name: str = "compute_score"  # function name in that file
    reward_kwargs: Dict[str, Any] = field(default_factory=dict)  # open dict: extra kwargs to the function


@dataclass
class KLCtrlConfig:
    type: str = "fixed"  # fixed | adaptive
    kl_coef: float = 0.001  # initial KL-in-reward coefficient
    horizon: int = 10000  # adaptive controller horizon
    target_kl: float = 0.1  # adaptive controller target


@dataclass
class RolloutCorrectionConfig:
    rollout_is: Optional[str] = None  # importance-sampling weights: token | sequence (rlkit: null only)
    rollout_is_threshold: float = 2.0  # upper truncation of those weights
    rollout_rs: Optional[str] = None  # rejection sampling mode (rlkit: null only)
    rollout_rs_threshold: Any = None  # its threshold(s): a number or a string
    bypass_mode: bool = False  # use rollout log-probs as the old policy
    loss_type: str = "ppo_clip"  # policy loss in bypass mode
    rollout_is_batch_normalize: bool = False  # normalise the IS weights over the batch


@dataclass
class AlgorithmConfig:
    gamma: float = 1.0  # discount
    lam: float = 1.0  # GAE lambda
    adv_estimator: str = "gae"  # gae | grpo | rloo | reinforce_plus_plus
    norm_adv_by_std_in_grpo: bool = True  # GRPO: divide by group std (False = Dr.GRPO)
    use_kl_in_reward: bool = False  # subtract a KL penalty from the reward
    kl_penalty: str = "kl"  # KL estimator for the in-reward penalty
    kl_ctrl: KLCtrlConfig = field(default_factory=KLCtrlConfig)  # KL coefficient controller
    rollout_correction: RolloutCorrectionConfig = field(default_factory=RolloutCorrectionConfig)  # rollout/training mismatch (unsupported)


@dataclass
class TrainerConfig:
    balance_batch: bool = True  # balance tokens across data-parallel ranks
    total_epochs: int = 30  # passes over the training set
    total_training_steps: Optional[int] = None  # stop after this many steps; None = from epochs
    project_name: str = "rlkit"  # names default_local_dir (verl: verl_examples, also its wandb project)
    experiment_name: str = "gsm8k"  # names default_local_dir (verl: also its wandb run name)
    logger: List[str] = field(default_factory=lambda: ["console"])  # console | jsonl | tensorboard
    log_val_generations: int = 0  # validation (input, output, score) samples each logger gets, picked as verl picks them
    rollout_data_dir: Optional[str] = None  # each step writes <dir>/<step>.jsonl: input, output, gts, score, step per response; None = none
    validation_data_dir: Optional[str] = None  # each validation writes <dir>/<step>.jsonl, the same lines (0 before training)
    nnodes: int = 1  # machines
    n_gpus_per_node: int = 1  # GPUs per machine (rlkit: 1, one device; verl: 8 - its commands set it)
    save_freq: int = -1  # checkpoint every N steps; -1 = never
    resume_mode: str = "auto"  # auto | disable | resume_path
    resume_from_path: Optional[str] = None  # checkpoint dir when resume_mode=resume_path
    val_before_train: bool = True  # validate once before training
    val_only: bool = False  # validate and exit
    test_freq: int = -1  # validate every N steps; -1 = never
    critic_warmup: int = 0  # the actor trains from step max(1, critic_warmup) on (verl's rule); before it only the critic
    default_hdfs_dir: Optional[str] = None  # HDFS checkpoint copy (cluster; unused by rlkit)
    del_local_ckpt_after_load: bool = False  # delete local checkpoint after loading
    default_local_dir: str = "checkpoints/${trainer.project_name}/${trainer.experiment_name}"  # checkpoint dir
    max_actor_ckpt_to_keep: Optional[int] = None  # keep only the newest N actor checkpoints
    max_critic_ckpt_to_keep: Optional[int] = None  # keep only the newest N critic checkpoints
    ray_wait_register_center_timeout: int = 300  # Ray start-up timeout, seconds (cluster)
    ray_address: Optional[str] = None  # rlkit; verl uses RAY_ADDRESS. auto | HOST:PORT | ray://HOST:PORT; None = RAY_ADDRESS, else local
    device: str = "cuda"  # cuda | cpu (rlkit falls back to cpu without CUDA at run time)


@dataclass
class RayInitConfig:
    num_cpus: Optional[int] = None  # CPUs Ray may use; None = all
    timeline_json_file: Optional[str] = None  # Ray timeline dump


@dataclass
class PPOConfig:
    """The whole run: verl's ``ppo_trainer.yaml`` key tree with rlkit's defaults.

    Build one with ``PPOConfig.default()``, ``from_overrides``, ``from_yaml`` or
    ``from_dict``; each returns a type-checked ``DictConfig`` and runs ``validate``.
    """

    data: DataConfig = field(default_factory=DataConfig)  # dataset and batch sizes
    actor_rollout_ref: ActorRolloutRefConfig = field(default_factory=ActorRolloutRefConfig)  # policy side
    critic: CriticConfig = field(default_factory=CriticConfig)  # value model (gae only)
    reward_model: RewardModelConfig = field(default_factory=RewardModelConfig)  # model reward (unsupported)
    custom_reward_function: CustomRewardFunctionConfig = field(default_factory=CustomRewardFunctionConfig)  # rule reward
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)  # advantage and KL
    trainer: TrainerConfig = field(default_factory=TrainerConfig)  # loop, logging, checkpoints, cluster
    ray_init: RayInitConfig = field(default_factory=RayInitConfig)  # Ray (multi-GPU only)

    # ----------------------------------------------------------- constructors
    @classmethod
    def default(cls) -> DictConfig:
        """A fresh config with every default."""
        return copy.deepcopy(_DEFAULT)

    @classmethod
    def from_overrides(cls, overrides: Iterable[str], base: Any = None, check: bool = True) -> DictConfig:
        """Apply verl/Hydra command-line overrides (``key=value``) to ``base`` or the defaults.

        ``overrides`` are the arguments exactly as the shell passes them, e.g.
        ``["data.train_batch_size=4096", "trainer.logger=['console']"]``. All bad
        keys and values are reported in one ``ConfigError``; then ``validate`` runs
        unless ``check`` is False.
        """
        if isinstance(overrides, str):
            raise ConfigError([f"overrides must be a list of 'key=value' strings, got one string {overrides!r}; "
                               "split it, e.g. shlex.split(...)"])
        cfg = _copy_base(base)
        problems: List[str] = []
        for text in overrides:
            try:
                mode, key, value = _parse_override(text)
            except _Problem as p:
                problems.append(str(p))
                continue
            problems.extend(_apply(cfg, key, value, mode, source=text))
        if problems:
            raise ConfigError(problems)
        if check:
            validate(cfg)
        return cfg

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], check: bool = True) -> DictConfig:
        """Build from a nested dict (e.g. a loaded YAML); missing keys keep defaults."""
        cfg = copy.deepcopy(_DEFAULT)
        _merge_mapping(cfg, d)
        if check:
            validate(cfg)
        return cfg

    @classmethod
    def from_yaml(cls, path: Union[str, Path], overrides: Iterable[str] = (), check: bool = True) -> DictConfig:
        """Load a YAML file (verl layout, flattened, no Hydra ``defaults:``), then apply overrides."""
        loaded = OmegaConf.load(str(path))
        if not isinstance(loaded, DictConfig):
            raise ConfigError([f"{path}: top level must be a mapping of sections, got a list"])
        raw = OmegaConf.to_container(loaded, resolve=False)
        cfg = cls.from_dict(raw, check=False)  # type: ignore[arg-type]
        return cls.from_overrides(list(overrides), base=cfg, check=check)


# --------------------------------------------------------------------------- errors

class ConfigError(ValueError):
    """A bad rlkit config. ``problems`` lists each issue; the message shows them all."""

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        n = len(self.problems)
        head = "invalid rlkit config: 1 problem" if n == 1 else f"invalid rlkit config: {n} problems"
        body = "\n".join(f"  {i}. {p}" for i, p in enumerate(self.problems, 1))
        super().__init__(f"{head}\n{body}")


class ConfigWarning(UserWarning):
    """A setting rlkit accepts but adjusts (e.g. a micro-batch larger than the per-GPU mini-batch);
    the message is one line saying what is used."""


class _Problem(Exception):
    """One problem found while applying an override; collected into a ConfigError."""


# --------------------------------------------------------------------------- schema index

@dataclass(frozen=True)
class _Key:
    path: str
    type: Any  # the annotation; a dataclass type for sections
    kind: str  # "section" | "open" (Dict[str, Any]) | "leaf"


def _build_index() -> Dict[str, _Key]:
    index: Dict[str, _Key] = {}

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            path = prefix + f.name
            tp = hints[f.name]
            if dataclasses.is_dataclass(tp):
                index[path] = _Key(path, tp, "section")
                walk(tp, path + ".")
            elif typing.get_origin(tp) in (dict, Dict):
                index[path] = _Key(path, tp, "open")
            else:
                index[path] = _Key(path, tp, "leaf")

    walk(PPOConfig, "")
    return index


_INDEX = _build_index()
_SECTIONS = sorted(p for p, k in _INDEX.items() if k.kind == "section")
_CHILDREN: Dict[str, List[str]] = {}
for _p in _INDEX:
    _parent, _, _name = _p.rpartition(".")
    _CHILDREN.setdefault(_parent, []).append(_name)

# verl settings rlkit deliberately does not implement; naming them gets a clearer
# message than "unknown key".
_VERL_ONLY = (
    "actor_rollout_ref.actor.policy_loss",
    "actor_rollout_ref.actor.megatron",
    "actor_rollout_ref.ref.megatron",
    "critic.megatron",
    "actor_rollout_ref.actor.profiler",
    "actor_rollout_ref.ref.profiler",
    "actor_rollout_ref.rollout.profiler",
    "actor_rollout_ref.profiler",
    "critic.profiler",
    "reward_model.profiler",
    "actor_rollout_ref.actor.entropy_from_logits_with_chunking",
    "actor_rollout_ref.actor.entropy_checkpointing",
    "actor_rollout_ref.ref.entropy_from_logits_with_chunking",
    "actor_rollout_ref.ref.entropy_checkpointing",
    "actor_rollout_ref.model.fused_kernel_options",
    "actor_rollout_ref.rollout.multi_turn",
    "actor_rollout_ref.rollout.agent",
    "actor_rollout_ref.rollout.trace",
    "actor_rollout_ref.rollout.use_fire_sampling",
    "actor_rollout_ref.rollout.chat_scheduler",
    "reward_model.sandbox_fusion",
    "algorithm.use_pf_ppo",
    "algorithm.pf_ppo",
    "trainer.profile_steps",
    "trainer.controller_nsight_options",
    "trainer.worker_nsight_options",
    "trainer.npu_profile",
    "trainer.esi_redundant_time",
    "trainer.use_legacy_worker_impl",
    "data.return_multi_modal_inputs",
    "data.sampler",
    "data.datagen",
)


# Keys of the schema that rlkit does not implement yet: their defaults are accepted (so that verl's
# full config dumps load), any other value fails validation with
# "<key> is not supported yet by rlkit (verl reads it for <what>)". The one list of them; a key leaves
# it when rlkit implements it (tests/test_config.py checks that every key nothing in rlkit reads is
# here or in ACCEPTED_UNREAD_KEYS).
_RM = "the reward model (reward_model.enable=True)"
UNSUPPORTED_KEYS: Dict[str, str] = {
    "data.reward_fn_key": "the column that picks the reward function (rlkit uses data_source)",
    "data.return_raw_input_ids": "un-templated prompt ids for a reward model with another tokenizer",
    "data.return_raw_chat": "the raw chat messages in the batch (agent loops, reward models)",
    "data.return_full_prompt": "the templated prompt text in the batch",
    "data.validation_shuffle": "shuffling the validation set",
    "data.image_key": "multimodal images", "data.video_key": "multimodal videos",
    "actor_rollout_ref.hybrid_engine": "placing actor, rollout and reference on separate devices when False",
    "actor_rollout_ref.model.external_lib": "a module imported before loading (custom architectures)",
    "actor_rollout_ref.model.lora_rank": "LoRA fine-tuning", "actor_rollout_ref.model.lora_alpha": "LoRA fine-tuning",
    "actor_rollout_ref.model.target_modules": "LoRA fine-tuning",
    "actor_rollout_ref.model.exclude_modules": "LoRA fine-tuning",
    "actor_rollout_ref.actor.ulysses_sequence_parallel_size": "Ulysses sequence parallelism",
    "actor_rollout_ref.ref.ulysses_sequence_parallel_size": "Ulysses sequence parallelism",
    "critic.ulysses_sequence_parallel_size": "Ulysses sequence parallelism",
    "actor_rollout_ref.actor.checkpoint.load_contents": "loading only part of a checkpoint on resume",
    "critic.checkpoint.load_contents": "loading only part of a checkpoint on resume",
    "actor_rollout_ref.rollout.mode": "the asynchronous agent-loop rollout (mode=async)",
    "critic.model.external_lib": "a module imported before loading (custom architectures)",
    "critic.model.lora_rank": "LoRA fine-tuning", "critic.model.lora_alpha": "LoRA fine-tuning",
    "critic.model.target_modules": "LoRA fine-tuning",
    "reward_model.enable": "a model-based reward; rlkit scores with rule-based functions: "
                           "custom_reward_function.path=<file.py> and custom_reward_function.name=<function>",
    "reward_model.strategy": _RM, "reward_model.model.input_tokenizer": _RM, "reward_model.model.path": _RM,
    "reward_model.model.external_lib": _RM, "reward_model.model.use_remove_padding": _RM,
    "reward_model.model.trust_remote_code": _RM,
    "reward_model.model.fsdp_config.wrap_policy.min_num_params": _RM,
    "reward_model.model.fsdp_config.param_offload": _RM, "reward_model.model.fsdp_config.optimizer_offload": _RM,
    "reward_model.model.fsdp_config.offload_policy": _RM,
    "reward_model.model.fsdp_config.reshard_after_forward": _RM, "reward_model.model.fsdp_config.fsdp_size": _RM,
    "reward_model.model.fsdp_config.forward_prefetch": _RM, "reward_model.micro_batch_size": _RM,
    "reward_model.micro_batch_size_per_gpu": _RM, "reward_model.max_length": _RM,
    "reward_model.ulysses_sequence_parallel_size": _RM, "reward_model.use_dynamic_bsz": _RM,
    "reward_model.forward_max_token_len_per_gpu": _RM,
    "reward_model.reward_manager": "the reward manager that turns scores into token rewards (rlkit: naive)",
    "trainer.default_hdfs_dir": "copying checkpoints to HDFS",
    "trainer.del_local_ckpt_after_load": "deleting the local checkpoint after loading it",
    **{f"algorithm.rollout_correction.{k}": "rollout/training mismatch correction (importance sampling, "
       "rejection sampling, bypass mode)" for k in ("rollout_is", "rollout_is_threshold", "rollout_rs",
                                                    "rollout_rs_threshold", "bypass_mode", "loss_type",
                                                    "rollout_is_batch_normalize")},
}

# Keys nothing in rlkit reads that are accepted with any valid value, each with why: they steer only
# speed, memory or I/O (the numbers do not change), or rlkit always runs one way (said here and in
# README "Notes for verl users").
ACCEPTED_UNREAD_KEYS: Dict[str, str] = {
    "data.use_shm": "I/O only",
    "data.filter_overlong_prompts_workers": "I/O only (filtering runs in one process)",
    "actor_rollout_ref.model.use_shm": "I/O only", "critic.model.use_shm": "I/O only",
    "actor_rollout_ref.model.enable_activation_offload": "memory only (rlkit keeps activations on the GPU)",
    "critic.model.enable_activation_offload": "memory only (rlkit keeps activations on the GPU)",
    "actor_rollout_ref.model.use_liger": "speed only (rlkit uses transformers' kernels)",
    "actor_rollout_ref.model.use_fused_kernels": "speed only (rlkit uses transformers' kernels)",
    "actor_rollout_ref.actor.strategy": "fsdp and fsdp2 both run as FSDP2 in rlkit",
    "actor_rollout_ref.ref.strategy": "fsdp and fsdp2 both run as FSDP2 in rlkit",
    "critic.strategy": "fsdp and fsdp2 both run as FSDP2 in rlkit",
    "actor_rollout_ref.rollout.calculate_log_probs": "rlkit always returns the rollout log-probs (as with True)",
    "actor_rollout_ref.actor.fsdp_config.wrap_policy.min_num_params": "memory/speed only (FSDP2 wraps each layer)",
    "actor_rollout_ref.ref.fsdp_config.wrap_policy.min_num_params": "memory/speed only (FSDP2 wraps each layer)",
    "critic.model.fsdp_config.wrap_policy.min_num_params": "memory/speed only (FSDP2 wraps each layer)",
    "actor_rollout_ref.actor.fsdp_config.forward_prefetch": "speed only",
    "actor_rollout_ref.ref.fsdp_config.forward_prefetch": "speed only",
    "critic.model.fsdp_config.forward_prefetch": "speed only",
    "actor_rollout_ref.rollout.layered_summon": "memory only (rlkit pushes weights one parameter at a time)",
    "actor_rollout_ref.rollout.max_num_batched_tokens": "engine speed only",
    "actor_rollout_ref.rollout.max_model_len": "engine context length: rlkit uses prompt + response "
                                               "(validation refuses a shorter one)",
    "actor_rollout_ref.rollout.disable_log_stats": "engine logging only",
    "actor_rollout_ref.rollout.enable_chunked_prefill": "engine speed only",
    "actor_rollout_ref.rollout.multi_stage_wake_up": "memory only (rlkit always wakes weights before the KV cache)",
    "actor_rollout_ref.rollout.engine_kwargs.vllm": "verl reads it only with rollout.name=vllm, which rlkit refuses",
    "reward_model.launch_reward_fn_async": "timing only (rlkit scores after generation)",
    "trainer.ray_wait_register_center_timeout": "a start-up timeout (rlkit's ranks report failures at once)",
}


# rlkit's defaults that differ from verl 0.9.1's (its generated ``ppo_trainer.yaml``), each with why. Every other
# key both have defaults to verl 0.9.1's value, or follows the same key (tests/test_config.py checks both ways).
# Several are verl's defaults before 0.9, which rlkit's key tree started from.
VERL_091_DIFFERENCES: Dict[str, str] = {
    "actor_rollout_ref.model.path": f"{DEFAULT_MODEL}, a model a CPU can train (verl: a 7B placeholder path)",
    "critic.model.path": "follows actor_rollout_ref.model.path, as in verl",
    "actor_rollout_ref.model.enable_gradient_checkpointing": "off, as verl before 0.9: the small models rlkit "
                                                             "starts with fit without recomputing activations",
    "critic.model.enable_gradient_checkpointing": "off, as the actor's",
    "actor_rollout_ref.model.use_remove_padding": "off, as verl before 0.9: the padded layout unless asked "
                                                  "(packing changes speed and memory, not results)",
    "critic.model.use_remove_padding": "off, as the actor's",
    "actor_rollout_ref.rollout.name": "hf, which runs without a GPU (verl: none; every verl command sets it)",
    "actor_rollout_ref.rollout.mode": "sync: rlkit generates each batch in one call (verl 0.9.1: async agent loop)",
    "actor_rollout_ref.rollout.max_num_seqs": "1024 (verl: 256): decode CUDA graphs for 64 prompts x 5 and more",
    "data.seed": "1 (verl: null, unseeded): a notebook run repeats",
    "data.return_raw_chat": "False: rlkit has no agent loop or reward model to read raw chats (verl 0.9.1: True)",
    "data.train_files": "~/data/gsm8k, where python -m rlkit.datasets.gsm8k writes (verl: ~/data/rlhf/gsm8k)",
    "data.val_files": "~/data/gsm8k, where python -m rlkit.datasets.gsm8k writes (verl: ~/data/rlhf/gsm8k)",
    "custom_reward_function.name": "compute_score, the name verl uses when it is null",
    "reward_model.enable": "verl 0.9.1 moved reward_model.* under reward.* (MOVED_KEYS) and leaves these null",
    "reward_model.model.path": "verl 0.9.1 moved reward_model.* under reward.* and leaves these null",
    "reward_model.model.trust_remote_code": "verl 0.9.1 moved reward_model.* under reward.* and leaves these null",
    "reward_model.reward_manager": "verl 0.9.1 moved reward_model.* under reward.* and leaves these null",
    "trainer.logger": "console only (verl: console and wandb, which rlkit does not log to)",
    "trainer.n_gpus_per_node": "1, one device for a notebook (verl: 8; its multi-GPU commands set it)",
    "trainer.project_name": "rlkit (verl: verl_examples); it names trainer.default_local_dir",
    "trainer.default_local_dir": "checkpoints/<project_name>/<experiment_name>, as verl's with rlkit's project name",
}


def _lookup(key: str) -> Tuple[Optional[_Key], Optional[str]]:
    """(schema entry, None) for a schema key; (None, open_dict_path) for a key inside an open dict."""
    if key in _INDEX:
        return _INDEX[key], None
    segs = key.split(".")
    for i in range(len(segs) - 1, 0, -1):
        prefix = ".".join(segs[:i])
        k = _INDEX.get(prefix)
        if k is not None:
            return (None, prefix) if k.kind == "open" else (None, None)
    return None, None


def _suggest(key: str, limit: int = 3) -> List[str]:
    """Valid dotted keys close to ``key``: repaired segment by segment, then whole-path matches."""
    segs = key.split(".")
    out: List[str] = []

    def repair(i: int, prefix: str) -> None:  # walk down, fixing each segment that is not a child
        if i == len(segs):
            if prefix in _INDEX:
                out.append(prefix)
            return
        children = _CHILDREN.get(prefix, [])
        if segs[i] in children:
            names = [segs[i]]
        else:
            names = difflib.get_close_matches(segs[i], children, n=2, cutoff=0.6)
        for name in names:
            repair(i + 1, f"{prefix}.{name}" if prefix else name)

    repair(0, "")
    # the same leaf name in another section (a key placed under the wrong parent)
    out += [p for p in _INDEX if p.rsplit(".", 1)[-1] == segs[-1] and p != key]
    out += difflib.get_close_matches(key, list(_INDEX), n=limit, cutoff=0.7)

    def score(p: str) -> float:
        return difflib.SequenceMatcher(None, key, p).ratio()

    ranked = sorted(set(out), key=lambda p: (-score(p), p))
    if ranked:  # drop far-off candidates once a close one exists
        best = score(ranked[0])
        ranked = [p for p in ranked if score(p) >= best - 0.12]
    return ranked[:limit]


def _unknown_key_message(key: str, source: str) -> str:
    for prefix in _VERL_ONLY:
        if key == prefix or key.startswith(prefix + "."):
            return (f"{source}: '{prefix}' is a verl setting that rlkit does not implement. "
                    f"Fix: remove '{key}' from the command/config.")
    if key.split(".")[0] == "reward" and "reward" not in _CHILDREN[""]:
        moved = ", ".join(f"{new} (= {old})" for new, old in MOVED_KEYS.items())
        return (f"{source}: '{key}' is in verl 0.9's `reward` group, of which rlkit reads only {moved}. "
                f"Fix: remove '{key}', or set the rlkit key named there.")
    if key == "defaults":
        return (f"{source}: Hydra 'defaults:' lists are not supported. "
                "Fix: pass a flattened config (all sections written out) or use overrides.")
    hint = _suggest(key)
    did = f" Did you mean: {', '.join(hint)}?" if hint else ""
    head = key.split(".")[0]
    if not did and head not in _CHILDREN.get("", []):
        did = f" Top-level sections are: {', '.join(_CHILDREN[''])}."
    return f"{source}: unknown config key '{key}'.{did}"


# --------------------------------------------------------------------------- value parsing

_INT_RE = re.compile(r"[+-]?(0|[1-9][0-9_]*)")
_FLOAT_RE = re.compile(
    r"[+-]?(([0-9][0-9_]*)?\.[0-9][0-9_]*|[0-9][0-9_]*\.([0-9][0-9_]*)?|[0-9][0-9_]*(?=[eE]))([eE][+-]?[0-9]+)?"
)


def _primitive(text: str) -> Any:
    """An unquoted scalar: null, bool, int, float or the string itself (Hydra rules)."""
    s = text.strip()
    low = s.lower()
    if low == "null":
        return None
    if low in ("true", "false"):
        return low == "true"
    if _INT_RE.fullmatch(s):
        return int(s.replace("_", ""))
    if _FLOAT_RE.fullmatch(s):
        return float(s.replace("_", ""))
    if low in ("inf", "+inf", "-inf", "nan", "+nan", "-nan"):
        return float(low)
    return s


class _ValueParser:
    """Recursive-descent parser for Hydra override values: scalars, quotes, [lists], {dicts}."""

    def __init__(self, text: str):
        self.t, self.i = text, 0

    def parse(self) -> Any:
        self.ws()
        if self.i == len(self.t):
            return ""
        if self.t[self.i] in "[{":
            v = self.container()
            self.ws()
            if self.i != len(self.t):
                raise ValueError(f"unexpected text after the closing bracket: {self.t[self.i:]!r}")
            return v
        s = self.t[self.i:].strip()
        if len(s) >= 2 and s[0] == s[-1] and s[0] in "'\"" and self._one_quoted(s):
            return self._unquote(s)
        return _primitive(s)

    def ws(self) -> None:
        while self.i < len(self.t) and self.t[self.i].isspace():
            self.i += 1

    def container(self) -> Any:
        open_, close = self.t[self.i], "]" if self.t[self.i] == "[" else "}"
        self.i += 1
        items: Any = [] if open_ == "[" else {}
        self.ws()
        if self.peek() == close:
            self.i += 1
            return items
        while True:
            self.ws()
            if open_ == "{":
                k = self.element(stop=":")
                if self.peek() != ":":
                    raise ValueError(f"expected ':' after dict key {k!r}")
                self.i += 1
                self.ws()
                items[str(k)] = self.element(stop=",}")
            else:
                items.append(self.element(stop=",]"))
            self.ws()
            c = self.peek()
            if c == ",":
                self.i += 1
            elif c == close:
                self.i += 1
                return items
            else:
                raise ValueError(f"expected ',' or '{close}' in {self.t!r}")

    def element(self, stop: str) -> Any:
        self.ws()
        c = self.peek()
        if c in ("[", "{"):
            return self.container()
        if c in ("'", '"'):
            j = self.t.find(c, self.i + 1)
            while j != -1 and self.t[j - 1] == "\\":
                j = self.t.find(c, j + 1)
            if j == -1:
                raise ValueError(f"unterminated quote in {self.t!r}")
            s = self._unquote(self.t[self.i:j + 1])
            self.i = j + 1
            return s
        start, depth = self.i, 0  # read to the next stop char outside ${...}
        while self.i < len(self.t):
            ch = self.t[self.i]
            if ch == "$" and self.t[self.i + 1:self.i + 2] == "{":
                depth += 1
                self.i += 1
            elif ch == "}" and depth:
                depth -= 1
            elif ch in stop and not depth:
                break
            self.i += 1
        if self.i == len(self.t):
            raise ValueError(f"missing closing bracket in {self.t!r}")
        return _primitive(self.t[start:self.i])

    def peek(self) -> str:
        return self.t[self.i] if self.i < len(self.t) else ""

    @staticmethod
    def _one_quoted(s: str) -> bool:
        q = s[0]
        body = s[1:-1].replace("\\" + q, "")
        return q not in body

    @staticmethod
    def _unquote(s: str) -> str:
        q = s[0]
        return s[1:-1].replace("\\" + q, q)


def parse_override_value(text: str) -> Any:
    """Parse the right-hand side of ``key=value`` the way Hydra does.

    >>> from rlkit.config import parse_override_value
    >>> parse_override_value("1e-6"), parse_override_value("['console']"), parse_override_value("null")
    (1e-06, ['console'], None)
    """
    return _ValueParser(text).parse()


def _parse_override(text: str) -> Tuple[str, str, Any]:
    if not isinstance(text, str):
        raise _Problem(f"override {text!r}: expected a 'key=value' string, got {type(text).__name__}")
    s = text.strip()
    if s.startswith("~"):
        raise _Problem(f"override '{text}': deleting keys with '~' is not supported. "
                       "Fix: set the key to null or to the value you want instead.")
    mode = "++" if s.startswith("++") else "+" if s.startswith("+") else "="
    body = s[len(mode):] if mode != "=" else s
    if "=" not in body:
        raise _Problem(f"override '{text}': malformed, expected 'key=value' (e.g. data.train_batch_size=256). "
                       "Fix: add '=' and a value; write key=null for None.")
    key, _, raw = body.partition("=")
    key = key.strip()
    if not key or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_\-]*(\.[A-Za-z0-9_\-]+)*", key):
        raise _Problem(f"override '{text}': '{key}' is not a dotted key like 'actor_rollout_ref.actor.optim.lr'.")
    try:
        value = parse_override_value(raw)
    except ValueError as e:
        raise _Problem(f"override '{text}': cannot parse value {raw!r}: {e}.") from None
    return mode, key, value


# --------------------------------------------------------------------------- typed assignment

def _is_interp(v: Any) -> bool:
    return isinstance(v, str) and "${" in v


def _type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Union:
        inner = [a for a in args if a is not type(None)]
        return " or ".join(_type_name(a) for a in inner) + " or null"
    if origin in (list, List):
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin in (dict, Dict):
        return "dict"
    if tp is Any:
        return "any value"
    if tp is bool:
        return "bool (True/False)"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any) -> Any:
    """Convert ``value`` to the declared type without guessing; raise TypeError if it does not fit."""
    if _is_interp(value):
        return value
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Union:
        if value is None:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0])
    if tp is Any:
        if isinstance(value, (DictConfig, ListConfig)):
            return OmegaConf.to_container(value, resolve=False)
        return value
    if value is None:
        raise TypeError
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=False)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise TypeError
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise TypeError
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise TypeError
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # e.g. experiment_name=2024
        raise TypeError
    if origin in (list, List):
        if isinstance(value, (list, tuple)):
            return [_coerce(v, args[0]) if args else v for v in value]
        raise TypeError
    if origin in (dict, Dict):
        if isinstance(value, Mapping):
            return dict(value)
        raise TypeError
    raise TypeError


def _a(noun: str) -> str:
    return ("an " if noun[:1] in "aeiou" else "a ") + noun


def _fmt(v: Any) -> str:
    """A value in override syntax, for messages."""
    if v is None:
        return "null"
    if isinstance(v, str):
        return v if v else "''"
    if isinstance(v, (list, tuple, ListConfig)):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    if isinstance(v, (dict, DictConfig)):
        return "{" + ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items()) + "}"
    return repr(v)


def _example(path: str) -> str:
    """The default value of a key, as an example in messages."""
    try:
        v = OmegaConf.select(_DEFAULT, path)
    except Exception:  # pragma: no cover - interpolations in defaults always resolve
        return ""
    return f", e.g. {path}={_fmt(v)}" if v is not None else ""


# verl 0.9 moved the reward settings into one `reward` group and its main_ppo reads only that group: the
# top-level `custom_reward_function.*` is still accepted on its command line but no longer used there.
# rlkit keeps the older places and reads both spellings, the new one mapped here.
MOVED_KEYS = {
    "reward.custom_reward_function": "custom_reward_function",
    "reward.reward_manager.name": "reward_model.reward_manager",
    "reward.reward_model.enable": "reward_model.enable",
}


def canonical_key(key: str) -> str:
    """``key`` at rlkit's place for it: verl 0.9's ``reward.*`` spelling of a reward key (:data:`MOVED_KEYS`)
    becomes the older one rlkit's schema holds; every other key comes back unchanged.

    >>> from rlkit.config import canonical_key
    >>> canonical_key("reward.custom_reward_function.reward_kwargs.format_score")
    'custom_reward_function.reward_kwargs.format_score'
    >>> canonical_key("reward.reward_manager.name"), canonical_key("data.seed")
    ('reward_model.reward_manager', 'data.seed')
    """
    for new, old in MOVED_KEYS.items():
        if key == new or key.startswith(new + "."):
            return old + key[len(new):]
    return key


def _moved_section(path: str) -> bool:
    """Whether ``path`` is a group of verl 0.9's ``reward`` spelling above a moved key (walked into, not set)."""
    return any(new.startswith(path + ".") for new in MOVED_KEYS)


def _node_exists(cfg: DictConfig, key: str) -> bool:
    parent_key, _, last = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key, throw_on_missing=False) if parent_key else cfg
    return isinstance(parent, DictConfig) and last in parent.keys()


def _apply(cfg: DictConfig, key: str, value: Any, mode: str, source: str) -> List[str]:
    """Set ``key`` to ``value`` in ``cfg``; returns problems instead of raising."""
    key = canonical_key(key)
    if _moved_section(key) and isinstance(value, Mapping):
        return [p for k, v in value.items() for p in _apply(cfg, f"{key}.{k}", v, mode, source)]
    entry, open_dict = _lookup(key)
    if entry is None and open_dict is None:
        return [_unknown_key_message(key, source)]
    if entry is not None and entry.kind == "section":
        if not isinstance(value, Mapping):
            children = ", ".join(_CHILDREN.get(key, []))
            return [f"{source}: '{key}' is a section, not a value; set one of its keys ({children})."]
        problems: List[str] = []
        for k, v in value.items():
            problems += _apply(cfg, f"{key}.{k}", v, mode, source)
        return problems
    if mode == "+":
        exists = _node_exists(cfg, key)
        if entry is not None and entry.kind == "leaf":
            return [f"{source}: '{key}' already exists; '+' only adds new keys inside open dicts. "
                    f"Fix: drop the '+' ({key}=...)."]
        if open_dict is not None and exists:
            return [f"{source}: '{key}' already exists in open dict '{open_dict}'. "
                    f"Fix: drop the '+' or use '++{key}=...' to override."]
    if entry is None or entry.kind == "open":  # inside an open dict, or the open dict itself
        if entry is not None and not isinstance(value, Mapping):
            return [f"{source}: '{key}' is an open dict; expected {{key: value, ...}}, got {_fmt(value)}. "
                    f"Fix: set single entries with '+{key}.NAME=VALUE'."]
        if isinstance(value, (DictConfig, ListConfig)):
            value = OmegaConf.to_container(value, resolve=False)
        OmegaConf.update(cfg, key, value, merge=True, force_add=True)
        return []
    tp = entry.type
    if key == "trainer.logger" and isinstance(value, str) and not _is_interp(value):
        value = [value]  # verl's tracker accepts a bare string too
    if key == "actor_rollout_ref.rollout.tp_memory_check" and value is False:
        value = "off"  # YAML 1.1 reads a bare `off` as False
    try:
        coerced = _coerce(value, tp)
    except TypeError:
        got = "null" if value is None else f"{_fmt(value)!s} ({type(value).__name__})"
        return [f"{source}: '{key}' expects {_type_name(tp)}, got {got}. "
                f"Fix: pass {_a(_type_name(tp))}{_example(key)}."]
    try:
        OmegaConf.update(cfg, key, coerced, merge=False)
    except Exception as e:  # pragma: no cover - _coerce already matched the schema
        return [f"{source}: cannot set '{key}' to {_fmt(value)}: {str(e).splitlines()[0]}"]
    return []


def _merge_mapping(cfg: DictConfig, d: Any) -> None:
    if isinstance(d, DictConfig):
        d = OmegaConf.to_container(d, resolve=False)
    if not isinstance(d, Mapping):
        raise ConfigError([f"expected a mapping of config sections, got {type(d).__name__}"])
    problems: List[str] = []

    def walk(node: Mapping[str, Any], prefix: str) -> None:
        for k, v in node.items():
            if k == "_target_":  # Hydra instantiate metadata in verl's generated YAML
                continue
            path = canonical_key(f"{prefix}{k}")
            entry = _INDEX.get(path)
            if (_moved_section(path) or entry is not None and entry.kind == "section") and isinstance(v, Mapping):
                walk(v, path + ".")
            else:
                problems.extend(_apply(cfg, path, v, "=", source=path))

    walk(d, "")
    if problems:
        raise ConfigError(problems)


def _copy_base(base: Any) -> DictConfig:
    if base is None:
        return copy.deepcopy(_DEFAULT)
    if isinstance(base, DictConfig) and OmegaConf.get_type(base) is PPOConfig:
        return copy.deepcopy(base)
    if isinstance(base, PPOConfig):
        return OmegaConf.structured(base)
    return PPOConfig.from_dict(base, check=False)


_DEFAULT = OmegaConf.structured(PPOConfig)


# --------------------------------------------------------------------------- validation

_MISSING = object()


def validate(cfg: Any) -> None:
    """Check every value and the batch arithmetic; raise one ``ConfigError`` listing all problems.

    Runs before any model or data is loaded. Each message names the key, its value,
    the rule and a fix. Critic rules apply only when the critic is used (adv_estimator=gae).
    """
    if not (isinstance(cfg, DictConfig) and OmegaConf.get_type(cfg) is PPOConfig):
        cfg = _copy_base(cfg)
    problems: List[str] = []
    vals: Dict[str, Any] = {}
    for path, entry in _INDEX.items():
        if entry.kind == "section":
            continue
        try:
            v = OmegaConf.select(cfg, path, throw_on_missing=True)
        except Exception as e:  # bad interpolation or a resolved value of the wrong type
            problems.append(f"{path}: cannot resolve: {str(e).splitlines()[0]}. "
                            "Fix: point the interpolation at an existing key of the right type, or set a value.")
            continue
        if isinstance(v, (DictConfig, ListConfig)):
            try:
                v = OmegaConf.to_container(v, resolve=True)
            except Exception as e:
                problems.append(f"{path}: cannot resolve: {str(e).splitlines()[0]}.")
                continue
        vals[path] = v

    def get(path: str) -> Any:
        return vals.get(path, _MISSING)

    def bad(path: str, rule: str, fix: str) -> None:
        problems.append(f"{path}={_fmt(vals.get(path))}: {rule}. Fix: {fix.rstrip('.')}.")

    def ok(*paths: str) -> bool:  # every input resolved and is not None
        return all(get(p) is not _MISSING and get(p) is not None for p in paths)

    def rule(path: str, test: Any, text: str, fix: str) -> None:
        if ok(path) and not test(get(path)):
            bad(path, text, fix)

    def one_of(path: str, names: Sequence[str], fix_extra: str = "") -> None:
        if ok(path) and get(path) not in names:
            bad(path, f"must be one of {', '.join(names)}", f"use e.g. {path}={names[0]}{fix_extra}")

    A, R, RO, C = "actor_rollout_ref.actor", "actor_rollout_ref.ref", "actor_rollout_ref.rollout", "critic"
    adv = get("algorithm.adv_estimator")
    use_critic = adv == "gae"

    # -- data
    for k in ("data.max_prompt_length", "data.max_response_length"):  # train_batch_size: the plan's rules
        rule(k, lambda v: v > 0, "must be > 0", f"set a positive number{_example(k)}")
    rule("data.val_batch_size", lambda v: v > 0, "must be > 0 or null", "set it to null (verl ignores it)")
    rule("data.dataloader_num_workers", lambda v: v >= 0, "must be >= 0", "use 0 to load in the main process")
    rule("data.filter_overlong_prompts_workers", lambda v: v >= 1, "must be >= 1", "use 1")
    one_of("data.truncation", TRUNCATIONS)
    for k in ("data.train_files", "data.val_files"):
        v = get(k)
        if v is not _MISSING and not (
            (isinstance(v, str) and v) or (isinstance(v, list) and v and all(isinstance(x, str) and x for x in v))
        ):
            bad(k, "must be a parquet path or a non-empty list of paths",
                f"e.g. {k}=~/data/gsm8k/train.parquet or {k}=[a.parquet,b.parquet]")
    rule("data.prompt_key", lambda v: bool(v), "must name the prompt column", "e.g. data.prompt_key=prompt")
    rule("data.tokenizer", lambda v: False, "rlkit builds the prompts with the policy's tokenizer, as verl 0.9.1 "
         "does (verl does not read data.tokenizer either)", "remove it, or set actor_rollout_ref.model."
         "tokenizer_path to that tokenizer to use it for the model and its prompts alike")

    # -- keys rlkit does not implement yet: only their defaults are accepted
    for key, why in UNSUPPORTED_KEYS.items():
        mine, default = _raw(cfg, key), _raw(_DEFAULT, key)
        if mine is not _MISSING and mine != default:
            problems.append(f"{key}={_fmt(mine)}: {key} is not supported yet by rlkit (verl reads it for {why}). "
                            f"Fix: remove it or set {key}={_fmt(default)}.")

    # -- cluster shape, SGLang TP groups, FSDP meshes and the batch arithmetic (verl counts batch sizes
    # in prompts; each prompt yields rollout.n responses, split over nnodes*n_gpus_per_node ranks): the
    # plan the workers run with checks them, so what validation accepts is what runs
    plan = ParallelPlan.from_values(vals)
    problems.extend(plan.problems())

    # -- rollout
    n = get(f"{RO}.n")
    n_ok = ok(f"{RO}.n") and n >= 1  # n itself is checked by the plan
    if ok(f"{RO}.name") and get(f"{RO}.name") not in ROLLOUT_NAMES:
        name = get(f"{RO}.name")
        extra = " (vllm is not supported by rlkit)" if name == "vllm" else ""
        bad(f"{RO}.name", f"rlkit supports the rollout backends {', '.join(ROLLOUT_NAMES)}{extra}",
            f"use {RO}.name=sglang for the SGLang engine or {RO}.name=hf for plain transformers generate")
    one_of(f"{RO}.mode", ROLLOUT_MODES)
    one_of(f"{RO}.tp_memory_check", TP_MEMORY_CHECKS,
           " (error: fail on imbalance, warn: log it, off: like SGL_DISABLE_TP_MEMORY_INBALANCE_CHECK=True)")
    for p in (RO, f"{RO}.val_kwargs"):
        rule(f"{p}.temperature", lambda v: v >= 0, "must be >= 0", f"use {p}.temperature=1.0 (0 = greedy)")
        rule(f"{p}.top_p", lambda v: 0 < v <= 1, "must be in (0, 1]", f"use {p}.top_p=1.0 to disable")
        rule(f"{p}.top_k", lambda v: v >= -1, "must be -1 (off) or >= 0", f"use {p}.top_k=-1")
    rule(f"{RO}.val_kwargs.n", lambda v: v >= 1, "must be >= 1", f"use {RO}.val_kwargs.n=1")
    if get(f"{RO}.val_kwargs.do_sample") is True and ok(f"{RO}.val_kwargs.temperature") \
            and get(f"{RO}.val_kwargs.temperature") == 0:
        bad(f"{RO}.val_kwargs.temperature", "must be > 0 when val_kwargs.do_sample=True",
            f"set {RO}.val_kwargs.temperature>0 or {RO}.val_kwargs.do_sample=False for greedy validation")
    rule(f"{RO}.gpu_memory_utilization", lambda v: 0 < v <= 1, "must be in (0, 1] (fraction of GPU memory)",
         f"e.g. {RO}.gpu_memory_utilization=0.5")
    one_of(f"{RO}.dtype", DTYPES)
    for k in ("response_length", "prompt_length", "max_num_batched_tokens", "max_num_seqs",
              "update_weights_bucket_megabytes"):
        rule(f"{RO}.{k}", lambda v: v >= 1, "must be >= 1", f"set a positive value{_example(f'{RO}.{k}')}")
    if ok(f"{RO}.max_model_len", "data.max_prompt_length", "data.max_response_length"):
        need = get("data.max_prompt_length") + get("data.max_response_length")
        if get(f"{RO}.max_model_len") < need:
            bad(f"{RO}.max_model_len", f"shorter than max_prompt_length + max_response_length = {need}",
                f"set {RO}.max_model_len=null or >= {need}")

    # -- actor
    _optim_rules(A + ".optim", rule, one_of, ok, get, bad)
    for k in ("clip_ratio", "clip_ratio_low", "clip_ratio_high"):
        rule(f"{A}.{k}", lambda v: v > 0, "must be > 0 (PPO clip epsilon)", f"e.g. {A}.{k}=0.2")
    rule(f"{A}.clip_ratio_c", lambda v: v > 1, "must be > 1 (dual-clip lower bound, a multiple of the advantage)",
         f"e.g. {A}.clip_ratio_c=3.0")
    rule(f"{A}.grad_clip", lambda v: v > 0, "must be > 0", f"e.g. {A}.grad_clip=1.0")
    rule(f"{A}.ppo_epochs", lambda v: v >= 1, "must be >= 1", f"e.g. {A}.ppo_epochs=1")
    rule(f"{A}.kl_loss_coef", lambda v: v >= 0, "must be >= 0", f"e.g. {A}.kl_loss_coef=0.001")
    rule(f"{A}.loss_scale_factor", lambda v: v > 0, "must be > 0 or null (null divides by the response length)",
         f"e.g. {A}.loss_scale_factor=512")
    rule(f"{A}.ulysses_sequence_parallel_size", lambda v: v >= 1, "must be >= 1", "use 1")
    if get(f"{A}.recompute_old_log_prob") is False:  # the update's own log-probs stand in for the old ones:
        # exact only while the actor has not moved since the rollout, i.e. one optimizer step per batch
        keep = f"or keep {A}.recompute_old_log_prob=True (a separate old-log-prob pass, as verl)"
        if ok(f"{A}.ppo_epochs") and get(f"{A}.ppo_epochs") != 1:
            bad(f"{A}.ppo_epochs", f"with {A}.recompute_old_log_prob=False each batch may make one optimizer "
                "step only (a second one would compare against an actor that has moved)",
                f"set {A}.ppo_epochs=1, {keep}")
        mini, batch = get(f"{A}.ppo_mini_batch_size"), get("data.train_batch_size")
        if ok(f"{A}.ppo_mini_batch_size", "data.train_batch_size") and mini != batch:
            bad(f"{A}.ppo_mini_batch_size", f"with {A}.recompute_old_log_prob=False each batch may make one "
                f"optimizer step only, so the mini-batch must be the whole batch (data.train_batch_size={batch})",
                f"set {A}.ppo_mini_batch_size={batch}, {keep}")
        if get("algorithm.use_kl_in_reward") is True:
            bad("algorithm.use_kl_in_reward", f"the KL penalty in the reward needs the old log-probs before the "
                f"update, which {A}.recompute_old_log_prob=False leaves out",
                f"set {A}.recompute_old_log_prob=True, or use the KL loss ({A}.use_kl_loss=True)")
    for k in (f"{A}.ppo_max_token_len_per_gpu", f"{R}.log_prob_max_token_len_per_gpu",
              f"{RO}.log_prob_max_token_len_per_gpu"):
        rule(k, lambda v: v >= 1, "must be >= 1", f"e.g. {k}=16384")
    one_of(f"{A}.loss_agg_mode", LOSS_AGG_MODES)
    one_of(f"{A}.kl_loss_type", KL_PENALTIES)
    one_of(f"{A}.strategy", STRATEGIES, " (rlkit has no megatron backend)")
    rule("actor_rollout_ref.model.lora_rank", lambda v: v >= 0, "must be >= 0", "use 0 for full fine-tuning")
    rule("actor_rollout_ref.model.path", lambda v: bool(v), "must name a model",
         f"e.g. actor_rollout_ref.model.path={DEFAULT_MODEL}")
    _token_budget_rules(vals, problems, ok, get, bad)

    # -- critic (used by gae only)
    if use_critic:
        _optim_rules(C + ".optim", rule, one_of, ok, get, bad)
        rule(f"{C}.cliprange_value", lambda v: v > 0, "must be > 0", f"e.g. {C}.cliprange_value=0.5")
        rule(f"{C}.grad_clip", lambda v: v > 0, "must be > 0", f"e.g. {C}.grad_clip=1.0")
        rule(f"{C}.ppo_epochs", lambda v: v >= 1, "must be >= 1", f"e.g. {C}.ppo_epochs=1")
        one_of(f"{C}.loss_agg_mode", LOSS_AGG_MODES)
        for k in (f"{C}.ppo_max_token_len_per_gpu", f"{C}.forward_max_token_len_per_gpu"):
            rule(k, lambda v: v >= 1, "must be >= 1", f"e.g. {k}=32768")

    # -- reward
    if ok("custom_reward_function.path"):
        rule("custom_reward_function.name", lambda v: bool(v), "must name the function in custom_reward_function.path",
             "e.g. custom_reward_function.name=compute_score")

    # -- algorithm
    for k in ("algorithm.gamma", "algorithm.lam"):
        rule(k, lambda v: 0 <= v <= 1, "must be in [0, 1]", f"e.g. {k}=1.0")
    one_of("algorithm.adv_estimator", ADV_ESTIMATORS)
    if adv in ("grpo", "rloo") and n_ok and n < 2:
        bad(f"{RO}.n", f"algorithm.adv_estimator={adv} compares responses within a prompt group, "
            "so one response per prompt gives zero advantage and no learning",
            f"set {RO}.n>=2 (e.g. {RO}.n=5)")
    one_of("algorithm.kl_penalty", KL_PENALTIES)
    one_of("algorithm.kl_ctrl.type", KL_CTRL_TYPES)
    rule("algorithm.kl_ctrl.kl_coef", lambda v: v >= 0, "must be >= 0", "e.g. algorithm.kl_ctrl.kl_coef=0.001")
    if get("algorithm.kl_ctrl.type") == "adaptive":
        rule("algorithm.kl_ctrl.horizon", lambda v: v > 0, "must be > 0 for the adaptive controller",
             "e.g. algorithm.kl_ctrl.horizon=10000")
        rule("algorithm.kl_ctrl.target_kl", lambda v: v > 0, "must be > 0 for the adaptive controller",
             "e.g. algorithm.kl_ctrl.target_kl=0.1")

    # -- trainer
    if ok("trainer.logger"):
        for entry in get("trainer.logger"):
            if entry in VERL_ONLY_LOGGERS:
                bad("trainer.logger", f"'{entry}' is a verl logger that rlkit does not support; "
                    f"rlkit logs to {', '.join(LOGGERS)}",
                    "e.g. trainer.logger=['console','tensorboard']")
            elif entry not in LOGGERS:
                bad("trainer.logger", f"unknown logger '{entry}'; rlkit supports {', '.join(LOGGERS)}",
                    "e.g. trainer.logger=['console']")
    rule("trainer.total_epochs", lambda v: v >= 1, "must be >= 1", "e.g. trainer.total_epochs=15")
    rule("trainer.total_training_steps", lambda v: v >= 1, "must be >= 1 or null",
         "set null to derive steps from total_epochs")
    for k in ("trainer.save_freq", "trainer.test_freq"):
        rule(k, lambda v: v >= -1, "must be -1 (never) or a positive number of steps", f"e.g. {k}=10")
    rule("trainer.critic_warmup", lambda v: v >= 0, "must be >= 0", "use trainer.critic_warmup=0")
    rule("trainer.log_val_generations", lambda v: v >= 0, "must be >= 0", "use 0 to log none")
    for k in ("trainer.max_actor_ckpt_to_keep", "trainer.max_critic_ckpt_to_keep"):
        rule(k, lambda v: v >= 1, "must be >= 1 or null (keep all)", f"e.g. {k}=null")
    rule("trainer.ray_wait_register_center_timeout", lambda v: v > 0, "must be > 0 seconds", "use 300")
    one_of("trainer.resume_mode", RESUME_MODES)
    if get("trainer.resume_mode") == "resume_path" and not ok("trainer.resume_from_path"):
        bad("trainer.resume_from_path", "must be set when trainer.resume_mode=resume_path",
            "set trainer.resume_from_path=<checkpoint dir> or trainer.resume_mode=auto")
    rule("trainer.device", lambda v: v in ("cuda", "cpu") or re.fullmatch(r"cuda:\d+", v) is not None,
         "must be cuda, cuda:N or cpu", "use trainer.device=cuda (rlkit falls back to cpu without CUDA)")
    dump_dirs = ("trainer.rollout_data_dir", "trainer.validation_data_dir")
    for k in dump_dirs:
        if ok(k) and get(k) and (why := _not_a_folder(get(k))):
            bad(k, why, f"point {k} at a folder (created if missing), or set {k}=null to write none")
    if all(ok(k) and get(k) for k in dump_dirs) and _same_path(*(get(k) for k in dump_dirs)):
        bad("trainer.validation_data_dir", "is the folder of trainer.rollout_data_dir: both write <step>.jsonl, "
            "so a validation would replace the rollouts of its step", "give the two keys different folders")

    if problems:
        raise ConfigError(problems)
    notes = list(plan.warnings())  # accepted, with what is used instead
    if get("actor_rollout_ref.actor.shuffle") is True:
        notes.append("actor_rollout_ref.actor.shuffle=True: rlkit shuffles each epoch's mini-batches (the same order "
                     "on every rank); verl's FSDP workers ignore this key and keep rollout order, as rlkit does with "
                     "the default False")
    for note in notes:
        warnings.warn(note, ConfigWarning, stacklevel=2)


def _not_a_folder(value: str) -> Optional[str]:
    """Why files cannot be written under ``value`` (it or a parent is a file), or None; nothing is created."""
    path = Path(value).expanduser()
    for p in (path, *path.parents):
        try:
            if not p.exists():
                continue
            if p.is_dir():
                return None
        except OSError:  # unreadable: the write will say why
            return None
        return "is a file, not a folder" if p == path else f"cannot be a folder: its parent {p} is a file"
    return None


def _same_path(a: str, b: str) -> bool:
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def _raw(cfg: DictConfig, path: str) -> Any:
    """The stored value at ``path``, interpolations unresolved, containers as plain lists/dicts."""
    node: Any = cfg
    for seg in path.split("."):
        if not isinstance(node, DictConfig) or seg not in node:
            return _MISSING
        node = node._get_node(seg)
    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=False)
    return node._value() if hasattr(node, "_value") else node


def _optim_rules(p: str, rule: Any, one_of: Any, ok: Any, get: Any, bad: Any) -> None:
    rule(f"{p}.lr", lambda v: v > 0, "must be > 0", f"e.g. {p}.lr={_fmt(OmegaConf.select(_DEFAULT, p + '.lr'))}")
    rule(f"{p}.weight_decay", lambda v: v >= 0, "must be >= 0", f"e.g. {p}.weight_decay=0.01")
    rule(f"{p}.lr_warmup_steps_ratio", lambda v: 0 <= v <= 1, "must be in [0, 1]", f"e.g. {p}.lr_warmup_steps_ratio=0.0")
    rule(f"{p}.min_lr_ratio", lambda v: 0 <= v <= 1, "must be in [0, 1] or null", f"e.g. {p}.min_lr_ratio=0.0")
    one_of(f"{p}.lr_scheduler_type", LR_SCHEDULER_TYPES)
    one_of(f"{p}.warmup_style", WARMUP_STYLES, f" (deprecated: use {p}.lr_scheduler_type, or null)")
    rule(f"{p}.num_cycles", lambda v: v >= 0, "must be >= 0 (cosine waves)", f"e.g. {p}.num_cycles=0.5")
    rule(f"{p}.betas", lambda v: len(v) == 2 and all(0 <= b < 1 for b in v), "must be two numbers in [0, 1)",
         f"e.g. {p}.betas=[0.9,0.999]")


def _token_budget_rules(vals: Dict[str, Any], problems: List[str], ok: Any, get: Any, bad: Any) -> None:
    """With dynamic batching a micro-batch is packed up to a token budget, which must fit one full sequence."""
    if not ok("data.max_prompt_length", "data.max_response_length"):
        return
    seq = get("data.max_prompt_length") + get("data.max_response_length")
    checks = [
        ("actor_rollout_ref.actor.use_dynamic_bsz", "actor_rollout_ref.actor.ppo_max_token_len_per_gpu"),
        ("actor_rollout_ref.ref.log_prob_use_dynamic_bsz", "actor_rollout_ref.ref.log_prob_max_token_len_per_gpu"),
        ("actor_rollout_ref.rollout.log_prob_use_dynamic_bsz",
         "actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu"),
    ]
    if get("algorithm.adv_estimator") == "gae":
        checks += [("critic.use_dynamic_bsz", "critic.ppo_max_token_len_per_gpu"),
                   ("critic.use_dynamic_bsz", "critic.forward_max_token_len_per_gpu")]
    for dyn, budget in checks:
        if get(dyn) is True and ok(budget) and get(budget) < seq:
            bad(budget, f"with {dyn.rsplit('.', 1)[-1]}=True each micro-batch must hold one full sequence "
                f"(max_prompt_length + max_response_length = {seq} tokens)", f"set {budget}>={seq}")


# --------------------------------------------------------------------------- this machine

class RuntimeRequirementError(RuntimeError):
    """The config asks for something this machine lacks (a GPU, sglang, ray). ``problems`` lists
    each missing piece with what to do; raised before anything loads, never after a long wait."""

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        body = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"this machine cannot run the config as given:\n{body}")


def runtime_problems(cfg: Any, cuda_devices: Optional[int] = None,
                     have: Optional[Mapping[str, bool]] = None) -> List[str]:
    """What this machine lacks for ``cfg`` (empty when it can run).

    ``rollout.name=sglang`` needs a CUDA GPU per TP rank, the ``sglang`` package and ``ray`` (the
    engine runs in a Ray worker); several ranks (``nnodes * n_gpus_per_node > 1``) need ``ray``. ``cuda_devices`` and ``have`` (package -> installed) replace the
    live readings, for tests; by default they come from ``torch.cuda.device_count()`` (no CUDA
    context is created) and ``importlib.util.find_spec``.
    """
    import importlib.util

    ro = cfg.actor_rollout_ref.rollout
    if have is None:
        have = {m: importlib.util.find_spec(m) is not None for m in ("sglang", "ray")}
    if ro.name != "sglang":
        world = int(cfg.trainer.nnodes) * int(cfg.trainer.n_gpus_per_node)
        if world > 1 and not have.get("ray"):  # several ranks run as a Ray worker group
            return [f"trainer.nnodes*trainer.n_gpus_per_node = {world} ranks run as a Ray worker group, and ray is "
                    "not installed in this Python. Fix: `pip install ray`, or trainer.n_gpus_per_node=1 for one "
                    "process."]
        return []
    if cuda_devices is None:
        import torch

        cuda_devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
    tp = int(ro.tensor_model_parallel_size)
    key = "actor_rollout_ref.rollout.name=sglang"
    out: List[str] = []
    if cuda_devices == 0:
        out.append(f"{key} needs an NVIDIA GPU with CUDA, and this machine has none (torch sees no CUDA device). "
                   "Fix: run on a CUDA machine, or use actor_rollout_ref.rollout.name=hf (transformers generate, "
                   "runs on CPU).")
    elif tp > cuda_devices:
        out.append(f"actor_rollout_ref.rollout.tensor_model_parallel_size={tp} needs {tp} GPUs, and this machine "
                   f"has {cuda_devices}. Fix: set actor_rollout_ref.rollout.tensor_model_parallel_size="
                   f"{cuda_devices} (and trainer.n_gpus_per_node={cuda_devices}) or run on a larger machine.")
    if str(cfg.trainer.device) == "cpu":
        out.append(f"{key} generates on GPUs, but trainer.device=cpu. Fix: trainer.device=cuda, or "
                   "actor_rollout_ref.rollout.name=hf for a CPU run.")
    missing = [m for m in ("sglang", "ray") if not have.get(m)]
    if missing:
        names = " and ".join(missing)
        out.append(f"{key} needs the {names} package{'s' if len(missing) > 1 else ''}, not installed in this "
                   f"Python. Fix: on a CUDA machine `pip install -e \".[sglang]\"` (SGLang 0.5.15.post1 and Ray are "
                   "the tested versions), or use actor_rollout_ref.rollout.name=hf.")
    return out


def check_runtime(cfg: Any) -> None:
    """Raise :class:`RuntimeRequirementError` when this machine cannot run ``cfg`` (see
    :func:`runtime_problems`); call it before validating the cluster shape or loading anything."""
    problems = runtime_problems(cfg)
    if problems:
        raise RuntimeRequirementError(problems)


# --------------------------------------------------------------------------- printing

def to_yaml(cfg: DictConfig, resolve: bool = False) -> str:
    """The config as YAML (interpolations kept unless ``resolve``)."""
    return OmegaConf.to_yaml(cfg, resolve=resolve)


def to_overrides(cfg: DictConfig) -> List[str]:
    """The ``key=value`` overrides that turn the defaults into ``cfg`` (for logs and reproduction).

    ``PPOConfig.from_overrides(to_overrides(cfg))`` rebuilds ``cfg``.
    """
    out: List[str] = []
    mine = OmegaConf.to_container(cfg, resolve=False)
    base = OmegaConf.to_container(_DEFAULT, resolve=False)

    def raw(tree: Any, path: str) -> Any:  # stored values, interpolations unresolved
        for seg in path.split("."):
            tree = tree[seg]
        return tree

    for path, entry in _INDEX.items():
        if entry.kind == "section":
            continue
        v, d = raw(mine, path), raw(base, path)
        if entry.kind == "open":
            for k, x in v.items():
                if d.get(k, _MISSING) != x:
                    out.append(f"++{path}.{k}={_override_text(x)}")
        elif v != d or type(v) is not type(d):
            out.append(f"{path}={_override_text(v)}")
    return out


def _override_text(v: Any) -> str:
    if isinstance(v, str):
        if v == "" or re.search(r"[\s,\[\]{}:'\"=]", v) or _primitive(v) != v:
            return "'" + v.replace("'", "\\'") + "'"
        return v
    if isinstance(v, list):
        return "[" + ",".join(_override_text(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ",".join(f"{k}:{_override_text(x)}" for k, x in v.items()) + "}"
    return _fmt(v)
