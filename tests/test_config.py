"""rlkit.config: verl command lines parse, defaults match verl, bad configs fail with useful messages."""
from __future__ import annotations

import subprocess
import typing
import sys
from pathlib import Path

import pytest
from omegaconf import DictConfig, OmegaConf

from rlkit.config import (
    ADV_ESTIMATORS,
    ROLLOUT_NAMES,
    ConfigError,
    PPOConfig,
    parse_override_value,
    to_overrides,
    to_yaml,
    validate,
)

# The two commands of verl's "SGLang Backend" page (shared/seed/000_905876d9e2fdf038.txt),
# argument for argument, as the shell hands them over with HOME=/home/u (and
# DATA_DIR=$HOME/data/gsm8k). Only the quotes of ['console'] are kept as written;
# the shell-stripped form [console] is tested separately.
CMD_4GPU = [
    "data.train_files=/home/u/data/gsm8k/train.parquet",
    "data.val_files=/home/u/data/gsm8k/test.parquet",
    "data.train_batch_size=4096",
    "data.max_prompt_length=4096",
    "data.max_response_length=4096",
    "actor_rollout_ref.rollout.name=sglang",
    "actor_rollout_ref.model.path=Qwen/Qwen2-7B-Instruct",
    "actor_rollout_ref.actor.optim.lr=1e-6",
    "actor_rollout_ref.actor.ppo_mini_batch_size=64",
    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4",
    "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=8",
    "actor_rollout_ref.model.enable_gradient_checkpointing=True",
    "actor_rollout_ref.actor.fsdp_config.param_offload=True",
    "actor_rollout_ref.actor.fsdp_config.optimizer_offload=True",
    "actor_rollout_ref.rollout.tensor_model_parallel_size=2",
    "actor_rollout_ref.rollout.gpu_memory_utilization=0.8",
    "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=4",
    "critic.optim.lr=1e-5",
    "critic.model.path=Qwen/Qwen2-7B-Instruct",
    "critic.ppo_micro_batch_size_per_gpu=4",
    "critic.model.fsdp_config.param_offload=True",
    "critic.model.fsdp_config.optimizer_offload=True",
    "algorithm.kl_ctrl.kl_coef=0.001",
    "trainer.logger=['console']",
    "trainer.val_before_train=False",
    "trainer.default_hdfs_dir=null",
    "trainer.n_gpus_per_node=4",
    "trainer.nnodes=1",
    "trainer.save_freq=-1",
    "trainer.test_freq=10",
    "trainer.total_epochs=15",
]

CMD_2NODE_TP16 = [
    "actor_rollout_ref.rollout.name=sglang",
    "data.train_files=/home/u/data/gsm8k/train.parquet",
    "data.val_files=/home/u/data/gsm8k/test.parquet",
    "data.train_batch_size=4096",
    "data.max_prompt_length=4096",
    "data.max_response_length=4096",
    "actor_rollout_ref.model.path=meta-llama/Llama-3.1-8B-Instruct",
    "actor_rollout_ref.actor.optim.lr=1e-6",
    "actor_rollout_ref.model.use_remove_padding=True",
    "actor_rollout_ref.actor.ppo_mini_batch_size=64",
    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=16",
    "actor_rollout_ref.model.enable_gradient_checkpointing=True",
    "actor_rollout_ref.actor.fsdp_config.param_offload=True",
    "actor_rollout_ref.actor.fsdp_config.optimizer_offload=True",
    "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=16",
    "actor_rollout_ref.rollout.tensor_model_parallel_size=16",
    "actor_rollout_ref.rollout.gpu_memory_utilization=0.8",
    "actor_rollout_ref.rollout.free_cache_engine=True",
    "actor_rollout_ref.ref.log_prob_micro_batch_size=16",
    "actor_rollout_ref.ref.fsdp_config.param_offload=True",
    "critic.optim.lr=1e-5",
    "critic.model.use_remove_padding=True",
    "critic.model.path=meta-llama/Llama-3.1-8B-Instruct",
    "critic.model.enable_gradient_checkpointing=True",
    "critic.ppo_micro_batch_size=16",
    "critic.model.fsdp_config.param_offload=True",
    "critic.model.fsdp_config.optimizer_offload=True",
    "algorithm.kl_ctrl.kl_coef=0.001",
    "trainer.critic_warmup=0",
    "trainer.logger=['console']",
    "trainer.val_before_train=True",
    "trainer.default_hdfs_dir=null",
    "trainer.n_gpus_per_node=8",
    "trainer.nnodes=2",
    "trainer.save_freq=-1",
    "trainer.test_freq=10",
    "trainer.total_epochs=15",
]

# A one-device rlkit run, for the rule tests: valid as is.
ONE_GPU = [
    "trainer.n_gpus_per_node=1",
    "data.train_batch_size=64",
    "actor_rollout_ref.actor.ppo_mini_batch_size=16",
    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4",
]


def problems_of(overrides, base=None):
    with pytest.raises(ConfigError) as info:
        PPOConfig.from_overrides(overrides, base=base)
    return info.value.problems, str(info.value)


# ----------------------------------------------------------------------------- the seed commands

def _assert_every_key_landed(cfg, cmd):
    for arg in cmd:
        key, _, raw = arg.partition("=")
        assert OmegaConf.select(cfg, key) == parse_override_value(raw), arg


def test_4gpu_command_parses_and_validates():
    cfg = PPOConfig.from_overrides(CMD_4GPU)
    assert isinstance(cfg, DictConfig) and OmegaConf.get_type(cfg) is PPOConfig
    _assert_every_key_landed(cfg, CMD_4GPU)
    a = cfg.actor_rollout_ref
    assert a.actor.optim.lr == 1e-6 and type(a.actor.optim.lr) is float
    assert cfg.critic.optim.lr == 1e-5 and type(cfg.critic.optim.lr) is float
    assert cfg.algorithm.kl_ctrl.kl_coef == 0.001
    assert a.rollout.gpu_memory_utilization == 0.8
    assert list(cfg.trainer.logger) == ["console"]
    assert cfg.trainer.default_hdfs_dir is None
    assert cfg.trainer.val_before_train is False
    assert a.model.enable_gradient_checkpointing is True
    assert a.actor.fsdp_config.param_offload is True and a.actor.fsdp_config.optimizer_offload is True
    assert cfg.critic.model.fsdp_config.param_offload is True
    assert type(cfg.data.train_batch_size) is int and cfg.data.train_batch_size == 4096
    assert cfg.trainer.save_freq == -1 and cfg.trainer.test_freq == 10 and cfg.trainer.total_epochs == 15
    assert a.rollout.name == "sglang" and a.rollout.tensor_model_parallel_size == 2
    assert cfg.data.train_files == "/home/u/data/gsm8k/train.parquet"
    # interpolated keys follow the command's values
    assert a.rollout.prompt_length == 4096 and a.rollout.response_length == 4096
    assert cfg.critic.ppo_mini_batch_size == 64


def test_2node_command_parses_every_key():
    cfg = PPOConfig.from_overrides(CMD_2NODE_TP16, check=False)
    _assert_every_key_landed(cfg, CMD_2NODE_TP16)
    a = cfg.actor_rollout_ref
    assert a.ref.log_prob_micro_batch_size == 16  # verl's deprecated global form
    assert a.ref.log_prob_micro_batch_size_per_gpu is None
    assert cfg.critic.ppo_micro_batch_size == 16 and cfg.critic.ppo_micro_batch_size_per_gpu is None
    assert cfg.critic.forward_micro_batch_size == 16  # follows ppo_micro_batch_size, as in verl
    assert a.model.use_remove_padding is True and cfg.critic.model.use_remove_padding is True
    assert cfg.critic.model.enable_gradient_checkpointing is True
    assert a.rollout.free_cache_engine is True and a.rollout.tensor_model_parallel_size == 16
    assert cfg.trainer.nnodes == 2 and cfg.trainer.n_gpus_per_node == 8 and cfg.trainer.critic_warmup == 0
    assert cfg.trainer.default_hdfs_dir is None and list(cfg.trainer.logger) == ["console"]


def test_2node_command_validates_with_a_micro_batch_warning():
    # 64 prompts * n=1 over 2*8 GPUs is 4 responses per GPU, less than the per-GPU micro-batch of 16:
    # accepted (verl's workers run it as one micro-batch), with one ConfigWarning saying what is used
    from rlkit.config import ConfigWarning

    with pytest.warns(ConfigWarning, match=r"ppo_micro_batch_size_per_gpu=16 is larger .* = 4 responses") as rec:
        cfg = PPOConfig.from_overrides(CMD_2NODE_TP16)
    assert len(rec) == 1 and "micro-batch per rank = mini-batch per rank = 4" in str(rec[0].message)
    assert cfg.actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu == 16  # the config keeps what was given


@pytest.mark.parametrize("arg", ["trainer.logger=['console']", "trainer.logger=[console]",
                                 'trainer.logger=["console"]', "trainer.logger=console"])
def test_logger_list_forms(arg):
    cfg = PPOConfig.from_overrides([arg])
    assert OmegaConf.to_container(cfg.trainer.logger) == ["console"]


def test_single_device_config_is_valid():
    cfg = PPOConfig.from_overrides(ONE_GPU)
    validate(cfg)
    assert cfg.trainer.n_gpus_per_node == 1


# ----------------------------------------------------------------------------- defaults

def test_defaults_match_verl_sample():
    cfg = PPOConfig.default()
    validate(cfg)
    expect = {
        "data.train_batch_size": 1024, "data.max_prompt_length": 512, "data.max_response_length": 512,
        "data.seed": 1, "data.shuffle": True, "data.truncation": "error", "data.prompt_key": "prompt",
        "data.reward_fn_key": "data_source", "data.val_batch_size": None,
        "actor_rollout_ref.hybrid_engine": True,
        "actor_rollout_ref.actor.ppo_mini_batch_size": 256,
        "actor_rollout_ref.actor.ppo_micro_batch_size": None,
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu": None,
        "actor_rollout_ref.actor.use_dynamic_bsz": False,
        "actor_rollout_ref.actor.ppo_max_token_len_per_gpu": 16384,
        "actor_rollout_ref.actor.grad_clip": 1.0, "actor_rollout_ref.actor.clip_ratio": 0.2,
        "actor_rollout_ref.actor.clip_ratio_low": 0.2, "actor_rollout_ref.actor.clip_ratio_high": 0.2,
        "actor_rollout_ref.actor.clip_ratio_c": 3.0, "actor_rollout_ref.actor.loss_agg_mode": "token-mean",
        "actor_rollout_ref.actor.entropy_coeff": 0.0, "actor_rollout_ref.actor.use_kl_loss": False,
        "actor_rollout_ref.actor.kl_loss_coef": 0.001, "actor_rollout_ref.actor.kl_loss_type": "low_var_kl",
        "actor_rollout_ref.actor.ppo_epochs": 1, "actor_rollout_ref.actor.shuffle": False,
        "actor_rollout_ref.actor.optim.lr": 1e-6, "actor_rollout_ref.actor.optim.lr_warmup_steps": -1,
        "actor_rollout_ref.actor.optim.lr_warmup_steps_ratio": 0.0,
        "actor_rollout_ref.actor.optim.min_lr_ratio": 0.0,
        "actor_rollout_ref.actor.optim.warmup_style": None,  # verl: deprecated, null
        "actor_rollout_ref.actor.optim.lr_scheduler_type": "constant",
        "actor_rollout_ref.actor.optim.num_cycles": 0.5,
        "actor_rollout_ref.actor.calculate_entropy": False, "actor_rollout_ref.actor.loss_scale_factor": None,
        "actor_rollout_ref.actor.optim.total_training_steps": -1,
        "actor_rollout_ref.actor.optim.weight_decay": 0.01,
        "actor_rollout_ref.actor.optim.betas": [0.9, 0.999],
        "actor_rollout_ref.actor.fsdp_config.param_offload": False,
        "actor_rollout_ref.actor.fsdp_config.optimizer_offload": False,
        "actor_rollout_ref.actor.fsdp_config.fsdp_size": -1,
        "actor_rollout_ref.ref.log_prob_micro_batch_size": None,
        "actor_rollout_ref.ref.log_prob_use_dynamic_bsz": False,
        "actor_rollout_ref.ref.log_prob_max_token_len_per_gpu": 16384,
        "actor_rollout_ref.ref.fsdp_config.param_offload": False,
        "actor_rollout_ref.rollout.temperature": 1.0, "actor_rollout_ref.rollout.top_k": -1,
        "actor_rollout_ref.rollout.top_p": 1.0, "actor_rollout_ref.rollout.do_sample": True,
        "actor_rollout_ref.rollout.n": 1, "actor_rollout_ref.rollout.dtype": "bfloat16",
        "actor_rollout_ref.rollout.gpu_memory_utilization": 0.5,
        "actor_rollout_ref.rollout.ignore_eos": False, "actor_rollout_ref.rollout.free_cache_engine": True,
        "actor_rollout_ref.rollout.tensor_model_parallel_size": 2,
        "actor_rollout_ref.rollout.max_num_batched_tokens": 8192, "actor_rollout_ref.rollout.max_num_seqs": 1024,
        "actor_rollout_ref.rollout.multi_stage_wake_up": False,
        "actor_rollout_ref.rollout.update_weights_bucket_megabytes": 512,
        "actor_rollout_ref.rollout.calculate_log_probs": True,
        "actor_rollout_ref.rollout.val_kwargs.temperature": 0.0,
        "actor_rollout_ref.rollout.val_kwargs.do_sample": False,
        "actor_rollout_ref.rollout.val_kwargs.n": 1,
        "actor_rollout_ref.rollout.engine_kwargs.sglang": {},
        "actor_rollout_ref.model.override_config": {}, "actor_rollout_ref.model.lora_rank": 0,
        "actor_rollout_ref.model.external_lib": None, "actor_rollout_ref.model.trust_remote_code": False,
        "critic.optim.lr": 1e-5, "critic.ppo_max_token_len_per_gpu": 32768,
        "critic.forward_max_token_len_per_gpu": 32768, "critic.grad_clip": 1.0,
        "critic.cliprange_value": 0.5, "critic.ppo_micro_batch_size": None,
        "critic.model.fsdp_config.param_offload": False,
        "reward_model.enable": False,
        "custom_reward_function.path": None, "custom_reward_function.name": "compute_score",
        "algorithm.gamma": 1.0, "algorithm.lam": 1.0, "algorithm.adv_estimator": "gae",
        "algorithm.norm_adv_by_std_in_grpo": True, "algorithm.use_kl_in_reward": False,
        "algorithm.kl_penalty": "kl", "algorithm.kl_ctrl.type": "fixed", "algorithm.kl_ctrl.kl_coef": 0.001,
        "algorithm.kl_ctrl.horizon": 10000, "algorithm.kl_ctrl.target_kl": 0.1,
        "trainer.balance_batch": True, "trainer.total_epochs": 30, "trainer.total_training_steps": None,
        "trainer.experiment_name": "gsm8k", "trainer.log_val_generations": 0, "trainer.nnodes": 1,
        "trainer.save_freq": -1, "trainer.resume_mode": "auto",
        "trainer.val_before_train": True, "trainer.test_freq": -1, "trainer.critic_warmup": 0,
        "trainer.default_hdfs_dir": None, "trainer.del_local_ckpt_after_load": False,
        "trainer.max_actor_ckpt_to_keep": None, "trainer.ray_wait_register_center_timeout": 300,
        "trainer.device": "cuda",
    }
    for key, want in expect.items():
        got = OmegaConf.select(cfg, key)
        if OmegaConf.is_config(got):
            got = OmegaConf.to_container(got)
        assert got == want and type(got) is type(want), (key, got, want)


def _tree_leaves(tree: dict, prefix: str = "") -> dict:
    """``{dotted.key: value}`` of a nested dict's non-dict values."""
    out = {}
    for k, v in tree.items():
        out.update(_tree_leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _followed_key(key: str, raw) -> str | None:
    """The key ``raw`` (an unresolved value at ``key``) stands for, when it is a single interpolation:
    ``${a.b}``, verl's ``${oc.select:a.b,default}``, or relative ``${.b}`` (a sibling of ``key``)."""
    import re

    m = re.fullmatch(r"\$\{(?:oc\.select:)?([\w.]+)(?:,[^}]*)?\}", raw) if isinstance(raw, str) else None
    if m is None:
        return None
    target = m.group(1)
    if target.startswith("."):  # relative: one dot is key's own section, each further dot one section up
        up = len(target) - len(target.lstrip("."))
        target = ".".join(key.split(".")[:-up] + [target.lstrip(".")])
    return target


def test_defaults_equal_verl_091s_for_every_shared_key_but_the_listed_ones(verl_091_config):
    """Every key rlkit and verl 0.9.1 both have: the same default, or both follow the same key - except
    VERL_091_DIFFERENCES, which must list only keys that do differ (the list stays true both ways)."""
    from rlkit.config import VERL_091_DIFFERENCES

    verl, ours = OmegaConf.create(verl_091_config), PPOConfig.default()
    raw_verl = _tree_leaves(OmegaConf.to_container(verl, resolve=False))
    raw_ours = _tree_leaves(OmegaConf.to_container(ours, resolve=False))
    shared = sorted(set(raw_verl) & set(raw_ours))
    assert len(shared) > 200, len(shared)  # the whole tree was read, not one section
    differ = {}
    for key in shared:
        follows = _followed_key(key, raw_verl[key]), _followed_key(key, raw_ours[key])
        if all(follows):
            same = follows[0] == follows[1]
        else:
            theirs, mine = OmegaConf.select(verl, key), OmegaConf.select(ours, key)
            theirs, mine = (OmegaConf.to_container(x) if OmegaConf.is_config(x) else x for x in (theirs, mine))
            same = theirs == mine
        if not same:
            differ[key] = (raw_verl[key], raw_ours[key])
    unlisted = {k: v for k, v in differ.items() if k not in VERL_091_DIFFERENCES}
    assert not unlisted, f"defaults that differ from verl 0.9.1's (verl, rlkit) without a reason: {unlisted}"
    stale = sorted(set(VERL_091_DIFFERENCES) - set(differ))
    assert not stale, f"VERL_091_DIFFERENCES lists keys whose defaults equal verl 0.9.1's: {stale}"
    assert all(VERL_091_DIFFERENCES.values())


def test_followed_key_reads_verls_interpolation_forms():
    assert _followed_key("a.b.c", "${x.y}") == "x.y"
    assert _followed_key("a.b.c", "${oc.select:x.y,false}") == "x.y"
    assert _followed_key("critic.forward_micro_batch_size", "${.ppo_micro_batch_size}") == \
        "critic.ppo_micro_batch_size"
    assert _followed_key("a.b.c", "${..d}") == "a.d"
    assert _followed_key("a.b", "checkpoints/${x}/${y}") is None and _followed_key("a.b", 3) is None


def test_rlkit_specific_defaults():
    cfg = PPOConfig.default()
    a = cfg.actor_rollout_ref
    assert a.model.path == "HuggingFaceTB/SmolLM2-135M-Instruct" and a.model.gguf_file is None
    assert a.rollout.name == "hf" and a.rollout.name in ROLLOUT_NAMES and a.rollout.mode == "sync"
    assert a.rollout.tp_memory_check == "error"
    assert a.actor.recompute_old_log_prob is True  # verl's separate old-log-prob pass
    assert list(cfg.trainer.logger) == ["console"] and cfg.trainer.project_name == "rlkit"
    assert cfg.trainer.default_local_dir == "checkpoints/rlkit/gsm8k"
    assert cfg.trainer.n_gpus_per_node == 1  # verl: 8; rlkit's notebook default is one device
    assert cfg.critic.model.path == a.model.path  # None-like "same as actor": linked by interpolation
    assert cfg.algorithm.adv_estimator in ADV_ESTIMATORS


def test_default_returns_fresh_copies():
    a, b = PPOConfig.default(), PPOConfig.default()
    a.data.train_batch_size = 8
    assert b.data.train_batch_size == 1024


# ----------------------------------------------------------------------------- interpolation

def test_rollout_lengths_follow_data_after_override():
    cfg = PPOConfig.from_overrides(["data.max_response_length=1024", "data.max_prompt_length=256"])
    assert cfg.actor_rollout_ref.rollout.response_length == 1024
    assert cfg.actor_rollout_ref.rollout.prompt_length == 256
    cfg.data.max_response_length = 77  # stays linked, not copied
    assert cfg.actor_rollout_ref.rollout.response_length == 77


def test_explicit_rollout_length_overrides_the_link():
    cfg = PPOConfig.from_overrides(["actor_rollout_ref.rollout.response_length=128"])
    assert cfg.actor_rollout_ref.rollout.response_length == 128 and cfg.data.max_response_length == 512


def test_critic_and_ref_follow_actor():
    cfg = PPOConfig.from_overrides([
        "actor_rollout_ref.actor.ppo_mini_batch_size=32", "actor_rollout_ref.actor.use_dynamic_bsz=True",
        "actor_rollout_ref.actor.ppo_max_token_len_per_gpu=4096", "actor_rollout_ref.model.path=/m",
        "trainer.project_name=p",
    ])
    assert cfg.critic.ppo_mini_batch_size == 32 and cfg.critic.use_dynamic_bsz is True
    assert cfg.actor_rollout_ref.ref.log_prob_use_dynamic_bsz is True
    assert cfg.actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu == 4096
    assert cfg.critic.model.path == "/m" and cfg.trainer.default_local_dir == "checkpoints/p/gsm8k"


def test_interpolation_in_override_and_bad_interpolation():
    cfg = PPOConfig.from_overrides(["critic.ppo_max_token_len_per_gpu=${actor_rollout_ref.actor.ppo_max_token_len_per_gpu}"])
    assert cfg.critic.ppo_max_token_len_per_gpu == 16384
    problems, msg = problems_of(["actor_rollout_ref.rollout.response_length=${data.no_such_key}"])
    assert "actor_rollout_ref.rollout.response_length" in msg and "data.no_such_key" in msg


# ----------------------------------------------------------------------------- unknown keys

@pytest.mark.parametrize("arg, suggestion", [
    ("trainr.total_epochs=3", "trainer.total_epochs"),  # top-level typo
    ("trainer.loger=['console']", "trainer.logger"),  # leaf typo
    ("data.train_batch=8", "data.train_batch_size"),
    ("actor_rollout_ref.actr.optim.lr=1e-6", "actor_rollout_ref.actor.optim.lr"),  # middle segment
    ("critic.model.fsdp.param_offload=True", "critic.model.fsdp_config.param_offload"),  # middle segment
    ("critc.optim.lr=1e-5", "critic.optim.lr"),
    ("algorithm.kl_ctrl.kl_coeff=0.1", "algorithm.kl_ctrl.kl_coef"),
    ("actor_rollout_ref.rollout.ppo_mini_batch_size=8", "actor_rollout_ref.actor.ppo_mini_batch_size"),  # wrong section
    ("actor_rollout_ref.model.use_remove_pading=True", "actor_rollout_ref.model.use_remove_padding"),
])
def test_unknown_key_suggests_closest(arg, suggestion):
    problems, msg = problems_of([arg])
    key = arg.split("=")[0]
    assert len(problems) == 1
    assert f"unknown config key '{key}'" in msg and "Did you mean" in msg and suggestion in msg


def test_unknown_key_without_match_lists_sections():
    _, msg = problems_of(["nonsense.thing=1"])
    assert "unknown config key 'nonsense.thing'" in msg and "actor_rollout_ref" in msg


def test_key_below_a_leaf_is_unknown():
    _, msg = problems_of(["data.train_batch_size.x=1"])
    assert "unknown config key 'data.train_batch_size.x'" in msg


def test_verl_only_key_is_named_as_such():
    _, msg = problems_of(["actor_rollout_ref.rollout.multi_turn.enable=True"])
    assert "verl setting that rlkit does not implement" in msg and "multi_turn" in msg


def test_section_assigned_a_scalar():
    _, msg = problems_of(["actor_rollout_ref.actor.optim=3"])
    assert "is a section" in msg and "lr" in msg


def test_section_assigned_a_dict_sets_its_keys():
    cfg = PPOConfig.from_overrides(["actor_rollout_ref.actor.optim={lr: 3e-6, warmup_style: cosine}"])
    assert cfg.actor_rollout_ref.actor.optim.lr == 3e-6
    assert cfg.actor_rollout_ref.actor.optim.warmup_style == "cosine"


# ----------------------------------------------------------------------------- malformed overrides

@pytest.mark.parametrize("arg, words", [
    ("data.train_batch_size", "malformed"),
    ("~trainer.logger", "not supported"),
    ("=5", "not a dotted key"),
    ("trainer.logger=[console", "cannot parse"),
])
def test_malformed_override(arg, words):
    _, msg = problems_of([arg])
    assert words in msg


def test_single_string_instead_of_list():
    with pytest.raises(ConfigError, match="list of 'key=value' strings"):
        PPOConfig.from_overrides("data.train_batch_size=8")


# ----------------------------------------------------------------------------- +, ++ and open dicts

def test_plus_adds_into_open_dicts():
    cfg = PPOConfig.from_overrides([
        "+actor_rollout_ref.model.override_config.attention_dropout=0.",
        "+actor_rollout_ref.rollout.engine_kwargs.sglang.attention_backend=triton",
        "+actor_rollout_ref.rollout.engine_kwargs.vllm.swap_space=4",
        "+custom_reward_function.reward_kwargs.format_score=0.1",
        "+critic.model.override_config.nested.deep=True",
    ])
    a = cfg.actor_rollout_ref
    assert a.model.override_config.attention_dropout == 0.0
    assert a.rollout.engine_kwargs.sglang.attention_backend == "triton"
    assert a.rollout.engine_kwargs.vllm.swap_space == 4
    assert cfg.custom_reward_function.reward_kwargs.format_score == 0.1
    assert cfg.critic.model.override_config.nested.deep is True


def test_verl_09_reward_group_sets_the_same_keys_as_the_older_spelling():
    new = PPOConfig.from_overrides([
        "reward.custom_reward_function.path=/tmp/my_reward.py", "reward.custom_reward_function.name=score",
        "+reward.custom_reward_function.reward_kwargs.format_score=0.1", "reward.reward_manager.name=naive",
    ], check=False)
    old = PPOConfig.from_overrides([
        "custom_reward_function.path=/tmp/my_reward.py", "custom_reward_function.name=score",
        "+custom_reward_function.reward_kwargs.format_score=0.1", "reward_model.reward_manager=naive",
    ], check=False)
    assert new == old
    assert new.custom_reward_function.reward_kwargs == {"format_score": 0.1}
    nested = PPOConfig.from_dict({"reward": {"custom_reward_function": {"path": "/tmp/my_reward.py", "name": "score",
                                                                        "reward_kwargs": {"format_score": 0.1}},
                                             "reward_manager": {"name": "naive"}}}, check=False)
    assert nested == old


@pytest.mark.parametrize("text", ["reward.num_workers=2", "reward.reward_manager.source=importlib"])
def test_other_verl_09_reward_keys_are_refused_by_name(text):
    with pytest.raises(ConfigError) as e:
        PPOConfig.from_overrides([text], check=False)
    key = text.split("=")[0]
    assert f"'{key}' is in verl 0.9's `reward` group" in str(e.value)
    assert "reward.custom_reward_function (= custom_reward_function)" in str(e.value)


def test_open_dict_accepts_plain_and_double_plus():
    cfg = PPOConfig.from_overrides([
        "actor_rollout_ref.rollout.engine_kwargs.sglang.attention_backend=fa3",  # verl v0.5 pre-populated this key
        "++actor_rollout_ref.model.override_config.rope_theta=10000",
        "++actor_rollout_ref.model.override_config.rope_theta=20000",
    ])
    assert cfg.actor_rollout_ref.rollout.engine_kwargs.sglang.attention_backend == "fa3"
    assert cfg.actor_rollout_ref.model.override_config.rope_theta == 20000


def test_plus_into_closed_section_fails():
    _, msg = problems_of(["+data.new_key=1"])
    assert "unknown config key 'data.new_key'" in msg
    _, msg = problems_of(["+trainer.total_epochs=3"])
    assert "already exists" in msg and "drop the '+'" in msg


def test_plus_on_existing_open_dict_entry_fails_but_double_plus_works():
    _, msg = problems_of(["+actor_rollout_ref.model.override_config.x=1",
                          "+actor_rollout_ref.model.override_config.x=2"])
    assert "already exists in open dict" in msg
    cfg = PPOConfig.from_overrides(["++data.train_batch_size=64", "++actor_rollout_ref.actor.ppo_mini_batch_size=16"])
    assert cfg.data.train_batch_size == 64


def test_closed_sections_stay_closed_after_building():
    cfg = PPOConfig.default()
    with pytest.raises(Exception):
        cfg.data.no_such_key = 1


# ----------------------------------------------------------------------------- type errors

@pytest.mark.parametrize("arg, key, expected", [
    ("data.train_batch_size=abc", "data.train_batch_size", "expects int"),
    ("data.train_batch_size=4096.5", "data.train_batch_size", "expects int"),
    ("data.train_batch_size=null", "data.train_batch_size", "expects int"),
    ("trainer.val_before_train=1", "trainer.val_before_train", "expects bool"),
    ("trainer.val_before_train=yes", "trainer.val_before_train", "expects bool"),
    ("actor_rollout_ref.actor.optim.lr=fast", "actor_rollout_ref.actor.optim.lr", "expects float"),
    ("trainer.save_freq=often", "trainer.save_freq", "expects int"),
    ("trainer.test_freq=2.5", "trainer.test_freq", "expects int"),
    ("trainer.logger={a: 1}", "trainer.logger", "expects list of str"),
    ("actor_rollout_ref.model.override_config=3", "actor_rollout_ref.model.override_config", "open dict"),
])
def test_type_errors_name_key_type_and_value(arg, key, expected):
    problems, msg = problems_of([arg])
    assert len(problems) == 1
    assert key in msg and expected in msg
    value = arg.split("=", 1)[1]
    if expected.startswith("expects") and value != "null":
        assert value.strip("'") in msg or str(parse_override_value(value)) in msg


def test_numbers_coerce_where_harmless():
    cfg = PPOConfig.from_overrides(["actor_rollout_ref.actor.optim.lr=1", "trainer.experiment_name=2024",
                                    "actor_rollout_ref.actor.entropy_coeff=0"])
    assert cfg.actor_rollout_ref.actor.optim.lr == 1.0 and type(cfg.actor_rollout_ref.actor.optim.lr) is float
    assert cfg.trainer.experiment_name == "2024"


def test_no_omegaconf_conversion_warnings():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        PPOConfig.from_overrides(CMD_4GPU + ["actor_rollout_ref.actor.optim.lr=1", "trainer.experiment_name=7"])


# ----------------------------------------------------------------------------- value rules

BAD_VALUES = [
    ("actor_rollout_ref.actor.optim.lr=0", "actor_rollout_ref.actor.optim.lr", "> 0"),
    ("actor_rollout_ref.actor.optim.lr=-1e-6", "actor_rollout_ref.actor.optim.lr", "> 0"),
    ("critic.optim.lr=0", "critic.optim.lr", "> 0"),
    ("data.max_response_length=0", "data.max_response_length", "> 0"),
    ("data.max_prompt_length=-5", "data.max_prompt_length", "> 0"),
    ("data.train_batch_size=0", "data.train_batch_size", "> 0"),
    ("actor_rollout_ref.rollout.n=0", "actor_rollout_ref.rollout.n", ">= 1"),
    ("actor_rollout_ref.actor.clip_ratio=0", "actor_rollout_ref.actor.clip_ratio", "> 0"),
    ("actor_rollout_ref.actor.clip_ratio_low=-0.1", "actor_rollout_ref.actor.clip_ratio_low", "> 0"),
    ("actor_rollout_ref.actor.clip_ratio_high=0", "actor_rollout_ref.actor.clip_ratio_high", "> 0"),
    ("actor_rollout_ref.actor.clip_ratio_c=1.0", "actor_rollout_ref.actor.clip_ratio_c", "> 1"),
    ("algorithm.gamma=1.5", "algorithm.gamma", "[0, 1]"),
    ("algorithm.lam=-0.1", "algorithm.lam", "[0, 1]"),
    ("actor_rollout_ref.rollout.temperature=-1", "actor_rollout_ref.rollout.temperature", ">= 0"),
    ("actor_rollout_ref.rollout.top_p=0", "actor_rollout_ref.rollout.top_p", "(0, 1]"),
    ("actor_rollout_ref.rollout.top_p=1.5", "actor_rollout_ref.rollout.top_p", "(0, 1]"),
    ("actor_rollout_ref.rollout.gpu_memory_utilization=0", "actor_rollout_ref.rollout.gpu_memory_utilization", "(0, 1]"),
    ("actor_rollout_ref.rollout.gpu_memory_utilization=1.2", "actor_rollout_ref.rollout.gpu_memory_utilization", "(0, 1]"),
    ("actor_rollout_ref.rollout.tensor_model_parallel_size=0", "actor_rollout_ref.rollout.tensor_model_parallel_size", ">= 1"),
    ("trainer.nnodes=0", "trainer.nnodes", ">= 1"),
    ("trainer.n_gpus_per_node=0", "trainer.n_gpus_per_node", ">= 1"),
    ("actor_rollout_ref.actor.loss_agg_mode=mean", "actor_rollout_ref.actor.loss_agg_mode", "seq-mean-token-sum"),
    ("algorithm.kl_penalty=kl2", "algorithm.kl_penalty", "low_var_kl"),
    ("actor_rollout_ref.actor.kl_loss_type=kl2", "actor_rollout_ref.actor.kl_loss_type", "low_var_kl"),
    ("algorithm.kl_ctrl.type=pid", "algorithm.kl_ctrl.type", "adaptive"),
    ("algorithm.adv_estimator=remax", "algorithm.adv_estimator", "grpo"),
    ("actor_rollout_ref.rollout.name=vllm", "actor_rollout_ref.rollout.name", "sglang"),
    ("actor_rollout_ref.rollout.mode=batch", "actor_rollout_ref.rollout.mode", "async"),
    ("actor_rollout_ref.rollout.tp_memory_check=maybe", "actor_rollout_ref.rollout.tp_memory_check", "warn"),
    ("trainer.logger=['console','wandb']", "trainer.logger", "wandb"),
    ("trainer.logger=[mystery]", "trainer.logger", "tensorboard"),
    ("reward_model.enable=True", "reward_model.enable", "custom_reward_function"),
    ("trainer.total_epochs=0", "trainer.total_epochs", ">= 1"),
    ("trainer.save_freq=-2", "trainer.save_freq", "-1"),
    ("data.truncation=cut", "data.truncation", "left"),
    ("trainer.resume_mode=resume_path", "trainer.resume_from_path", "resume_path"),
    ("trainer.device=tpu", "trainer.device", "cuda"),
    ("actor_rollout_ref.rollout.val_kwargs.do_sample=True", "actor_rollout_ref.rollout.val_kwargs.temperature", "> 0"),
    ("actor_rollout_ref.actor.optim.betas=[0.9]", "actor_rollout_ref.actor.optim.betas", "two numbers"),
    ("actor_rollout_ref.actor.strategy=megatron", "actor_rollout_ref.actor.strategy", "megatron"),
]


@pytest.mark.parametrize("arg, key, rule", BAD_VALUES, ids=[b[0] for b in BAD_VALUES])
def test_bad_value_names_key_rule_and_fix(arg, key, rule):
    problems, _ = problems_of(ONE_GPU + [arg])
    mine = [p for p in problems if p.startswith(key)]
    assert mine, problems
    assert any(rule in p and "Fix:" in p for p in mine), mine


def test_vllm_and_wandb_messages_say_what_rlkit_supports():
    _, msg = problems_of(ONE_GPU + ["actor_rollout_ref.rollout.name=vllm", "trainer.logger=[console,wandb]"])
    assert "hf, sglang" in msg and "vllm is not supported" in msg
    assert "'wandb' is a verl logger that rlkit does not support" in msg and "console, jsonl, tensorboard" in msg


def test_grpo_needs_several_responses_per_prompt():
    _, msg = problems_of(ONE_GPU + ["algorithm.adv_estimator=grpo"])
    assert "actor_rollout_ref.rollout.n=1" in msg and "zero advantage" in msg
    PPOConfig.from_overrides(ONE_GPU + ["algorithm.adv_estimator=grpo", "actor_rollout_ref.rollout.n=5"])


def test_critic_rules_only_when_critic_is_used():
    PPOConfig.from_overrides(ONE_GPU + ["algorithm.adv_estimator=grpo", "actor_rollout_ref.rollout.n=4",
                                        "critic.optim.lr=0"])


def test_generation_dump_folders_checked_without_creating_anything(tmp_path):
    taken = tmp_path / "taken"
    taken.write_text("user data")
    problems, _ = problems_of(ONE_GPU + [f"trainer.rollout_data_dir={taken}",
                                         f"trainer.validation_data_dir={taken}/val"])
    assert problems == [
        f"trainer.rollout_data_dir={taken}: is a file, not a folder. Fix: point trainer.rollout_data_dir at a folder "
        "(created if missing), or set trainer.rollout_data_dir=null to write none.",
        f"trainer.validation_data_dir={taken}/val: cannot be a folder: its parent {taken} is a file. Fix: point "
        "trainer.validation_data_dir at a folder (created if missing), or set trainer.validation_data_dir=null to "
        "write none."]
    # one folder for both: validation at step N would replace step N's rollouts
    _, msg = problems_of(ONE_GPU + [f"trainer.rollout_data_dir={tmp_path}/dumps",
                                    f"trainer.validation_data_dir={tmp_path}/./dumps/"])
    assert "trainer.validation_data_dir" in msg and "is the folder of trainer.rollout_data_dir" in msg
    assert "Fix: give the two keys different folders" in msg
    cfg = PPOConfig.from_overrides(ONE_GPU + [f"trainer.rollout_data_dir={tmp_path}/new/rollouts",
                                              f"trainer.validation_data_dir={tmp_path}", "trainer.logger=[console]"])
    assert cfg.trainer.rollout_data_dir == f"{tmp_path}/new/rollouts"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]  # validation creates no folder
    PPOConfig.from_overrides(ONE_GPU + ["trainer.rollout_data_dir=''"])  # empty, as in verl: no dump


# ----------------------------------------------------------------------------- batch arithmetic

def test_minibatch_must_divide_batch_in_responses():
    problems, msg = problems_of(ONE_GPU + ["data.train_batch_size=100", "actor_rollout_ref.actor.ppo_mini_batch_size=64",
                                           "actor_rollout_ref.rollout.n=4", "algorithm.adv_estimator=grpo"])
    assert any(p.startswith("actor_rollout_ref.actor.ppo_mini_batch_size=64") for p in problems)
    assert "64*4 = 256" in msg and "100*4 = 400" in msg and "each prompt yields rollout.n responses" in msg


def test_per_gpu_micro_batch_must_divide_per_gpu_mini_batch():
    problems, msg = problems_of(["trainer.n_gpus_per_node=4", "data.train_batch_size=64",
                                 "actor_rollout_ref.actor.ppo_mini_batch_size=16",
                                 "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=3"])
    assert len(problems) == 1 and "16*1/4 = 4" in msg
    # rollout.n multiplies the responses each GPU gets: 16*3/4 = 12, which 3 divides
    PPOConfig.from_overrides(["trainer.n_gpus_per_node=4", "data.train_batch_size=64",
                              "actor_rollout_ref.actor.ppo_mini_batch_size=16",
                              "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=3",
                              "actor_rollout_ref.rollout.n=3"])


def test_dynamic_bsz_skips_micro_rule_but_checks_token_budget():
    base = ["trainer.n_gpus_per_node=4", "data.train_batch_size=64", "actor_rollout_ref.actor.ppo_mini_batch_size=16",
            "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=3", "actor_rollout_ref.actor.use_dynamic_bsz=True"]
    PPOConfig.from_overrides(base)
    _, msg = problems_of(base + ["actor_rollout_ref.actor.ppo_max_token_len_per_gpu=1000"])
    assert "actor_rollout_ref.actor.ppo_max_token_len_per_gpu=1000" in msg and "1024" in msg


@pytest.mark.parametrize("section, micro", [
    ("actor_rollout_ref.actor", "ppo_micro_batch_size"),
    ("actor_rollout_ref.ref", "log_prob_micro_batch_size"),
    ("actor_rollout_ref.rollout", "log_prob_micro_batch_size"),
    ("critic", "ppo_micro_batch_size"),
])
def test_global_and_per_gpu_micro_batch_both_set(section, micro):
    problems, msg = problems_of(ONE_GPU + [f"{section}.{micro}=4", f"{section}.{micro}_per_gpu=4"])
    assert f"{section}.{micro}=4: set together with {section}.{micro}_per_gpu=4" in msg


def test_global_micro_batch_smaller_than_gpu_count():
    _, msg = problems_of(["trainer.n_gpus_per_node=8", "data.train_batch_size=64",
                          "actor_rollout_ref.actor.ppo_mini_batch_size=16",
                          "actor_rollout_ref.ref.log_prob_micro_batch_size=4"])
    assert "actor_rollout_ref.ref.log_prob_micro_batch_size=4" in msg and "< 1 per GPU" in msg


def test_batch_must_split_over_gpus():
    _, msg = problems_of(["trainer.n_gpus_per_node=3", "data.train_batch_size=64",
                          "actor_rollout_ref.actor.ppo_mini_batch_size=16"])
    assert "data.train_batch_size=64" in msg and "3 GPUs" in msg


def test_sglang_tp_must_divide_gpu_count_hf_ignores_tp():
    _, msg = problems_of(ONE_GPU + ["actor_rollout_ref.rollout.name=sglang"])
    assert "actor_rollout_ref.rollout.tensor_model_parallel_size=2" in msg and "1 GPUs" in msg
    PPOConfig.from_overrides(ONE_GPU + ["actor_rollout_ref.rollout.name=sglang",
                                        "actor_rollout_ref.rollout.tensor_model_parallel_size=1"])
    PPOConfig.from_overrides(ONE_GPU)  # hf rollout with the default TP=2 on one GPU is fine


def test_sglang_tp_group_fits_a_node_or_spans_whole_nodes():
    sg = ["actor_rollout_ref.rollout.name=sglang", "data.train_batch_size=48",
          "actor_rollout_ref.actor.ppo_mini_batch_size=12"]
    # 2 nodes x 6 GPUs with TP 4: ranks 4-7 would straddle node 0 and node 1
    _, msg = problems_of(sg + ["trainer.nnodes=2", "trainer.n_gpus_per_node=6",
                               "actor_rollout_ref.rollout.tensor_model_parallel_size=4"])
    assert "actor_rollout_ref.rollout.tensor_model_parallel_size=4" in msg and "straddle" in msg
    # TP 12 over 2 nodes of 6 GPUs is one engine across both nodes (as verl's TP=16 on 2x8)
    PPOConfig.from_overrides(sg + ["trainer.nnodes=2", "trainer.n_gpus_per_node=6",
                                   "actor_rollout_ref.rollout.tensor_model_parallel_size=12"])


# ----------------------------------------------------------------------------- many problems at once

def test_all_problems_reported_together():
    problems, msg = problems_of([
        "data.train_batch_size=-1", "actor_rollout_ref.actor.optim.lr=0", "algorithm.gamma=2",
        "trainer.logger=[wandb]", "reward_model.enable=True", "actor_rollout_ref.rollout.top_p=0",
    ])
    assert len(problems) >= 6
    assert msg.startswith(f"invalid rlkit config: {len(problems)} problems")
    for key in ("data.train_batch_size", "actor_rollout_ref.actor.optim.lr", "algorithm.gamma", "trainer.logger",
                "reward_model.enable", "actor_rollout_ref.rollout.top_p"):
        assert key in msg


def test_key_and_type_problems_reported_together():
    problems, _ = problems_of(["trainer.loger=[console]", "data.train_batch_size=abc", "oops"])
    assert len(problems) == 3


def test_config_error_is_value_error():
    assert issubclass(ConfigError, ValueError)
    with pytest.raises(ValueError):
        PPOConfig.from_overrides(["data.train_batch_size=0"])


def test_validate_on_mutated_config():
    cfg = PPOConfig.from_overrides(ONE_GPU)
    cfg.actor_rollout_ref.rollout.n = 0
    with pytest.raises(ConfigError, match="actor_rollout_ref.rollout.n=0"):
        validate(cfg)


# ----------------------------------------------------------------------------- yaml, dict, round trips

def test_from_yaml_with_overrides(tmp_path: Path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "data:\n  train_batch_size: 64\n  max_response_length: 256\n"
        "actor_rollout_ref:\n  actor:\n    _target_: ignored.Target\n    ppo_mini_batch_size: 16\n"
        "    optim:\n      lr: 1e-6\n"
        "  model:\n    override_config: {attention_dropout: 0.0}\n"
        "trainer:\n  n_gpus_per_node: 1\n  logger: ['console', 'jsonl']\n"
    )
    cfg = PPOConfig.from_yaml(path, overrides=["trainer.total_epochs=2"])
    assert cfg.data.train_batch_size == 64 and cfg.actor_rollout_ref.rollout.response_length == 256
    assert cfg.actor_rollout_ref.actor.optim.lr == 1e-6 and type(cfg.actor_rollout_ref.actor.optim.lr) is float
    assert cfg.actor_rollout_ref.model.override_config.attention_dropout == 0.0
    assert list(cfg.trainer.logger) == ["console", "jsonl"] and cfg.trainer.total_epochs == 2


def test_from_yaml_bare_off_means_off(tmp_path: Path):
    path = tmp_path / "off.yaml"
    path.write_text("actor_rollout_ref:\n  rollout:\n    tp_memory_check: off\n")
    assert PPOConfig.from_yaml(path).actor_rollout_ref.rollout.tp_memory_check == "off"
    cfg = PPOConfig.from_overrides(["actor_rollout_ref.rollout.tp_memory_check=off"])
    assert cfg.actor_rollout_ref.rollout.tp_memory_check == "off"


def test_from_yaml_reports_unknown_keys_and_verl_only_sections(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text("data:\n  train_batch_sise: 64\nalgorithm:\n  use_pf_ppo: false\n")
    with pytest.raises(ConfigError) as info:
        PPOConfig.from_yaml(path)
    assert len(info.value.problems) == 2
    assert "data.train_batch_size" in str(info.value) and "algorithm.use_pf_ppo" in str(info.value)


def test_from_dict_and_yaml_round_trip(tmp_path: Path):
    cfg = PPOConfig.from_overrides(CMD_4GPU + ["+actor_rollout_ref.model.override_config.rope_theta=1e6"])
    (tmp_path / "c.yaml").write_text(to_yaml(cfg))
    again = PPOConfig.from_yaml(tmp_path / "c.yaml")
    assert again == cfg
    assert PPOConfig.from_dict(OmegaConf.to_container(cfg)) == cfg
    # interpolations survive the YAML round trip
    again.data.max_response_length = 100
    assert again.actor_rollout_ref.rollout.response_length == 100


def test_to_overrides_round_trip():
    cfg = PPOConfig.from_overrides(CMD_2NODE_TP16 + ["+actor_rollout_ref.rollout.engine_kwargs.sglang.mem_fraction_static=0.7",
                                                     "trainer.experiment_name='a b'",
                                                     "actor_rollout_ref.rollout.response_length=${data.max_prompt_length}"],
                                   check=False)
    ov = to_overrides(cfg)
    assert "data.train_batch_size=4096" in ov and "trainer.nnodes=2" in ov
    assert PPOConfig.from_overrides(ov, check=False) == cfg
    assert to_overrides(PPOConfig.default()) == []


def test_base_is_not_mutated():
    base = PPOConfig.from_overrides(ONE_GPU)
    PPOConfig.from_overrides(["data.max_response_length=8"], base=base)
    assert base.data.max_response_length == 512
    cfg = PPOConfig.from_overrides(["data.max_response_length=8"], base={"trainer": {"n_gpus_per_node": 1},
                                                                        "data": {"train_batch_size": 64},
                                                                        "actor_rollout_ref": {"actor": {"ppo_mini_batch_size": 16}}})
    assert cfg.data.max_response_length == 8 and cfg.trainer.n_gpus_per_node == 1


# ----------------------------------------------------------------------------- value parser

@pytest.mark.parametrize("text, value", [
    ("1e-6", 1e-6), ("1E-5", 1e-5), ("0.", 0.0), (".5", 0.5), ("-1", -1), ("4096", 4096), ("1_000", 1000),
    ("True", True), ("false", False), ("null", None), ("NULL", None),
    ("['console']", ["console"]), ("[console]", ["console"]), ("[console, 'jsonl']", ["console", "jsonl"]),
    ("[]", []), ("[1, 2.5, null]", [1, 2.5, None]), ("{a: 1, b: [x, y]}", {"a": 1, "b": ["x", "y"]}),
    ("Qwen/Qwen2-7B-Instruct", "Qwen/Qwen2-7B-Instruct"), ("/home/u/data/gsm8k/train.parquet",
                                                         "/home/u/data/gsm8k/train.parquet"),
    ("'4096'", "4096"), ('"a b"', "a b"), ("${data.max_prompt_length}", "${data.max_prompt_length}"),
    ("[${a.b}, c]", ["${a.b}", "c"]), ("", ""), ("off", "off"), ("007", "007"),
])
def test_parse_override_value(text, value):
    got = parse_override_value(text)
    assert got == value and type(got) is type(value)


# ----------------------------------------------------------------------------- import weight

def test_import_is_light():
    code = ("import sys, rlkit.config; heavy = [m for m in ('torch', 'transformers', 'numpy', 'pandas', "
            "'rlkit.algos') if m in sys.modules]; print(heavy); sys.exit(1 if heavy else 0)")
    root = Path(__file__).resolve().parents[1]
    res = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                         env={"PYTHONPATH": str(root), "PATH": ""})
    assert res.returncode == 0, res.stdout + res.stderr


def test_name_tuples_agree_with_the_algorithms():
    """config.py keeps torch-free copies of the algorithm names; they must match rlkit.algos."""
    from rlkit import algos, config

    assert set(config.ADV_ESTIMATORS) == set(algos.ADV_ESTIMATORS)
    assert set(config.LOSS_AGG_MODES) == set(algos.LOSS_AGG_MODES)
    assert set(config.KL_PENALTIES) == set(algos.KL_PENALTIES)
    assert set(config.KL_CTRL_TYPES) == set(algos.KL_CONTROLLER_TYPES)
    from rlkit.rollout import ROLLOUT_ENGINES

    assert set(config.ROLLOUT_NAMES) == set(ROLLOUT_ENGINES)


def test_runtime_problems_name_what_the_machine_lacks():
    from rlkit.config import runtime_problems

    sgl = PPOConfig.from_overrides(ONE_GPU + ["actor_rollout_ref.rollout.name=sglang",
                                              "actor_rollout_ref.rollout.tensor_model_parallel_size=1"])
    (gpu, pkgs) = runtime_problems(sgl, cuda_devices=0, have={"sglang": False, "ray": False})
    assert "needs an NVIDIA GPU with CUDA, and this machine has none" in gpu
    assert "needs the sglang and ray packages" in pkgs
    assert runtime_problems(sgl, cuda_devices=1, have={"sglang": True, "ray": True}) == []
    two = PPOConfig.from_overrides(["trainer.n_gpus_per_node=2", "data.train_batch_size=8",
                                    "actor_rollout_ref.actor.ppo_mini_batch_size=4"])
    (ray,) = runtime_problems(two, cuda_devices=0, have={"sglang": False, "ray": False})
    assert "2 ranks run as a Ray worker group, and ray is not installed" in ray
    assert runtime_problems(two, cuda_devices=0, have={"sglang": False, "ray": True}) == []


# ----------------------------------------------------------------------------- keys rlkit does not read

def _leaves():
    """Every value of the default config: plain leaves and open dicts."""
    from rlkit.config import _INDEX

    return [p for p, k in _INDEX.items() if k.kind != "section"]


def _is_key_names(node) -> bool:
    """A string, or a tuple/list/set/dict literal made of strings only (nested): a list of key names."""
    import ast

    if isinstance(node, ast.Constant):
        return isinstance(node.value, str)
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return bool(node.elts) and all(map(_is_key_names, node.elts))
    if isinstance(node, ast.Dict):
        return bool(node.keys) and all(k is not None and _is_key_names(k) for k in node.keys) \
            and all(map(_is_key_names, node.values))
    return False


def _names_read(source: str) -> tuple[set, list]:
    """What code in ``source`` can read a key with: attribute names (``cfg.trainer.name``) and string
    constants (``cfg["name"]``, ``get("name")``, ``select(cfg, "a.name")``, ``f"{A}.name"``).
    Comments and docstrings are no reads; nor are the strings of a literal list of names unless code
    iterates over it or passes it to a call: a table of key names (checkpoint.py's ``FIXED_ON_RESUME``
    / ``FREE_ON_RESUME``, ``x in ("a.b", ...)``) only names keys, ``for k in ("a", "b"): d.get(k)``
    reads them."""
    import ast

    tree = ast.parse(source)
    parent = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):  # a docstring
            skip.add(node.value)
        elif not isinstance(node, ast.Constant) and _is_key_names(node) and not _is_key_names(parent.get(node)):
            up = parent.get(node)
            if not ((isinstance(up, (ast.For, ast.comprehension)) and up.iter is node)
                    or isinstance(up, (ast.Call, ast.keyword))):
                skip.update(ast.walk(node))
    attrs = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    strings = [n.value for n in ast.walk(tree)
               if isinstance(n, ast.Constant) and isinstance(n.value, str) and n not in skip]
    return attrs, strings


def _unread_leaves():
    """Leaves nothing in the package outside config.py reads (:func:`_names_read`: an attribute of
    the leaf's name, or a string that is the leaf's name or ends with ``.name``), neither directly nor
    through the default of a leaf that is read (``default_local_dir``'s ``${trainer.project_name}``)."""
    import re

    from rlkit.config import _DEFAULT, _raw

    pkg = Path(__file__).resolve().parents[1] / "rlkit"
    attrs, strings = set(), []
    for f in pkg.rglob("*.py"):
        if f.name != "config.py":
            a, s = _names_read(f.read_text())
            attrs |= a
            strings += s
    names = attrs | {s.rsplit(".", 1)[-1] for s in strings}  # "a.b.name", ".name" (f"{A}.name") and "name"
    read = {path for path in _leaves() if path.rsplit(".", 1)[-1] in names}
    grown = True
    while grown:  # interpolations in the defaults of read leaves read what they name
        named = {m for path in read for m in re.findall(r"\$\{([\w.]+)\}", str(_raw(_DEFAULT, path)))}
        grown = not named <= read
        read |= named
    return [path for path in _leaves() if path not in read]


def test_unread_keys_check_sees_through_tables_of_names():
    """Key names only listed (a named table, a membership test) are no reads; iterated or passed, they are."""
    attrs, strings = _names_read(
        '"""Reads trainer.log_val_generations."""\n'
        'FREE = ("trainer.log_val_generations", "trainer.project_name")  # trainer.experiment_name\n'
        'TABLE = {"a.one": ("a", "one")}\n'
        'def f(cfg, key):\n'
        '    """cfg.hidden"""\n'
        '    if key in ("a.two", "a.three"):\n'
        '        return cfg.trainer.logger\n'
        '    for k in ("four", "five"):\n'
        '        cfg.get(k)\n'
        '    return get(cfg, ("a", "six")), cfg["seven"]\n')
    assert attrs == {"trainer", "logger", "get"}
    assert sorted(strings) == ["a", "five", "four", "seven", "six"]


def test_every_unread_key_is_refused_or_explained():
    from rlkit.config import ACCEPTED_UNREAD_KEYS, UNSUPPORTED_KEYS

    unread = _unread_leaves()
    assert "actor_rollout_ref.actor.optim.num_cycles" not in unread  # rlkit.training.optim reads it now
    listed = set(UNSUPPORTED_KEYS) | set(ACCEPTED_UNREAD_KEYS)
    assert [k for k in unread if k not in listed] == []
    assert set(UNSUPPORTED_KEYS).isdisjoint(ACCEPTED_UNREAD_KEYS)
    assert [k for k in listed if k not in _leaves()] == []  # no stale names
    assert all(why for why in list(UNSUPPORTED_KEYS.values()) + list(ACCEPTED_UNREAD_KEYS.values()))


def _other_value(key):
    """A value of ``key``'s type that differs from its default."""
    from rlkit.config import _DEFAULT, _INDEX, _raw

    default, tp = _raw(_DEFAULT, key), _INDEX[key].type
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    base = args[0] if typing.get_origin(tp) is typing.Union else tp
    if _INDEX[key].kind == "open":
        return "{x: 1}"
    if isinstance(default, str) and "${" in default:  # follows another key: any concrete value differs
        default = None
    if base is bool:
        return str(not default)
    if base is int:
        return str((default or 0) + 3)
    if base is float:
        return str(float(default or 0) + 1.5)
    if typing.get_origin(base) in (list, typing.List):
        return "[model]"
    return "other"


@pytest.mark.parametrize("key", sorted(__import__("rlkit.config", fromlist=["x"]).UNSUPPORTED_KEYS))
def test_unsupported_key_refused_when_not_default(key):
    from rlkit.config import UNSUPPORTED_KEYS

    PPOConfig.from_overrides([])  # the default is accepted
    with pytest.raises(ConfigError) as err:
        PPOConfig.from_overrides([f"{key}={_other_value(key)}"])
    assert f"{key} is not supported yet by rlkit (verl reads it for {UNSUPPORTED_KEYS[key]})" in str(err.value)


def test_verl_defaults_of_the_new_keys_load():
    # as verl's generated ppo_trainer.yaml writes them
    cfg = PPOConfig.from_dict({
        "actor_rollout_ref": {"actor": {"calculate_entropy": False, "loss_scale_factor": None,
                                        "optim": {"lr_scheduler_type": "constant", "warmup_style": None,
                                                  "num_cycles": 0.5, "min_lr_ratio": 0.0}}},
        "algorithm": {"rollout_correction": {"rollout_is": None, "rollout_is_threshold": 2.0, "rollout_rs": None,
                                             "rollout_rs_threshold": None, "bypass_mode": False,
                                             "loss_type": "ppo_clip", "rollout_is_batch_normalize": False}},
    })
    assert cfg.algorithm.rollout_correction.loss_type == "ppo_clip"


def test_lr_scheduler_type_values():
    cfg = PPOConfig.from_overrides(["actor_rollout_ref.actor.optim.lr_scheduler_type=cosine",
                                    "critic.optim.num_cycles=1.0"])
    assert cfg.actor_rollout_ref.actor.optim.lr_scheduler_type == "cosine"
    _, msg = problems_of(["actor_rollout_ref.actor.optim.lr_scheduler_type=linear"])
    assert "actor_rollout_ref.actor.optim.lr_scheduler_type='linear'" in msg or "lr_scheduler_type=linear" in msg
    assert "must be one of constant, cosine" in msg
    _, msg = problems_of(["actor_rollout_ref.actor.optim.num_cycles=-1.0"])
    assert "num_cycles=-1.0: must be >= 0" in msg


@pytest.mark.parametrize("name", ["k3+", "low_var_kl+", "k1+", "kl+", "abs+"])
def test_kl_plus_names_accepted(name):
    cfg = PPOConfig.from_overrides([f"actor_rollout_ref.actor.kl_loss_type={name}", f"algorithm.kl_penalty={name}"])
    assert cfg.algorithm.kl_penalty == name


def test_calculate_entropy_accepted():
    assert PPOConfig.from_overrides(["actor_rollout_ref.actor.calculate_entropy=True"]).actor_rollout_ref.actor.calculate_entropy


def test_ref_log_prob_micro_batch_per_gpu_sets_the_ref_forward():
    # 1024 prompts * n=1 on one GPU = 1024 rows; ref micro 16 -> ceil(1024/16) = 64 forwards
    from rlkit.parallel import ParallelPlan

    cfg = PPOConfig.from_overrides(["actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=16"])
    ref = ParallelPlan.from_config(cfg).role("ref")
    assert (ref.micro_batch_per_rank, ref.micro_source, ref.forward_passes) == (16, "per_gpu", 64)


def test_actor_shuffle_true_warns_that_verl_keeps_rollout_order():
    import warnings as w

    from rlkit.config import ConfigWarning

    with pytest.warns(ConfigWarning, match="actor.shuffle=True: rlkit shuffles .* verl's FSDP workers ignore this key"):
        PPOConfig.from_overrides(["actor_rollout_ref.actor.shuffle=True"])
    with w.catch_warnings():
        w.simplefilter("error", ConfigWarning)
        PPOConfig.from_overrides([])  # the default (False, as verl) is silent


def test_data_tokenizer_is_refused_with_the_key_that_does_it():
    """verl 0.9.1 reads data.tokenizer nowhere; rlkit refuses a value instead of ignoring it silently."""
    with pytest.raises(ConfigError) as err:
        PPOConfig.from_overrides(["data.tokenizer=/tok"])
    msg = str(err.value)
    assert ("data.tokenizer=/tok: rlkit builds the prompts with the policy's tokenizer, as verl 0.9.1 does (verl "
            "does not read data.tokenizer either). Fix: remove it, or set actor_rollout_ref.model.tokenizer_path to "
            "that tokenizer to use it for the model and its prompts alike.") in msg
    assert PPOConfig.from_overrides(["data.tokenizer=null"]).data.tokenizer is None


def test_leaving_out_the_old_log_prob_pass_needs_one_optimizer_step_per_batch():
    """recompute_old_log_prob=False is exact only while the actor has not moved since the rollout: one mini-batch
    (the whole batch), one epoch, and no KL penalty in the reward (which reads the old log-probs first)."""
    off = "actor_rollout_ref.actor.recompute_old_log_prob=False"
    cfg = PPOConfig.from_overrides([off, "data.train_batch_size=64", "actor_rollout_ref.actor.ppo_mini_batch_size=64"])
    assert cfg.actor_rollout_ref.actor.recompute_old_log_prob is False
    problems, text = problems_of([off, "data.train_batch_size=64", "actor_rollout_ref.actor.ppo_mini_batch_size=16",
                                  "actor_rollout_ref.actor.ppo_epochs=2", "algorithm.use_kl_in_reward=True"])
    assert len(problems) == 3
    assert problems[0].startswith("actor_rollout_ref.actor.ppo_epochs=2: with actor_rollout_ref.actor."
                                  "recompute_old_log_prob=False each batch may make one optimizer step only")
    assert "Fix: set actor_rollout_ref.actor.ppo_epochs=1, or keep actor_rollout_ref.actor.recompute_old_log_prob=True" \
        in problems[0]
    assert problems[1].startswith("actor_rollout_ref.actor.ppo_mini_batch_size=16:")
    assert "Fix: set actor_rollout_ref.actor.ppo_mini_batch_size=64" in problems[1]
    assert problems[2].startswith("algorithm.use_kl_in_reward=True: the KL penalty in the reward needs the old "
                                  "log-probs")
    # the same settings are fine with the pass (verl's way)
    PPOConfig.from_overrides(["data.train_batch_size=64", "actor_rollout_ref.actor.ppo_mini_batch_size=16",
                              "actor_rollout_ref.actor.ppo_epochs=2", "algorithm.use_kl_in_reward=True"])
