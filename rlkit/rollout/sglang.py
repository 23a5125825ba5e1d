"""`sglang` rollout engine: SGLang's offline ``Engine`` sharing the GPU with training.

The only module in rlkit that imports sglang, and only when an engine is built.

Memory hand-off follows verl's hybrid engine:
    wake_up(weights):  resume "weights" -> push the actor's weights -> empty torch's cache -> resume "kv_cache"
    sleep():           release "kv_cache" and "weights" (when rollout.free_cache_engine)
Released weights are freed, not offloaded: they come back as garbage. So ``wake_up`` after a sleep
requires the weights to push, and ``generate`` refuses to run on weights that were never pushed
(``load_format=dummy`` or after a sleep).

SGLang kills the process that launched the engine when its scheduler fails at start. Start this
engine inside a worker process (rlkit does so through a Ray actor), never in a notebook kernel.
"""
from __future__ import annotations

import os
import time
import warnings
import torch

from rlkit.diagnostics.balance import check_tp_memory_mode, preflight_tp_memory
from rlkit.diagnostics.memory import gpu_memory_lines
from rlkit.rollout.base import GenerationOutput, SamplingParams, hf_param_name, weight_buckets  # noqa: F401

SUPPORTED_SGLANG = ("0.5.15",)  # versions rlkit's GPU tests ran against (0.5.15.post1)
TP_CHECK_ENV = "SGLANG_ENABLE_TP_MEMORY_INBALANCE_CHECK"
LEGACY_TP_CHECK_ENVS = ("SGL_DISABLE_TP_MEMORY_INBALANCE_CHECK", "SGLANG_DISABLE_TP_MEMORY_INBALANCE_CHECK")


def import_sglang():
    """Import sglang or explain what to install."""
    try:
        import sglang
    except ImportError as e:
        raise ImportError(
            "actor_rollout_ref.rollout.name=sglang needs SGLang and Ray, which are not installed here "
            f"({e}). On a CUDA machine: `pip install 'sglang==0.5.15.post1' ray` "
            "(rlkit is tested with SGLang 0.5.15.post1), or use actor_rollout_ref.rollout.name=hf."
        ) from e
    version = getattr(sglang, "__version__", "unknown")
    if not version.startswith(SUPPORTED_SGLANG):
        warnings.warn(f"SGLang {version} is untested with rlkit; tested versions: "
                      f"{', '.join(v + '.post1' for v in SUPPORTED_SGLANG)}. If the engine fails to start or "
                      "generate, install sglang==0.5.15.post1.", stacklevel=2)
    return sglang


def _truthy(value: str | None) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def apply_tp_memory_check(mode: str, environ=None) -> str:
    """Set SGLang's TP memory-imbalance switch in ``environ`` (default ``os.environ``) for ``mode``.

    ``mode`` is ``rollout.tp_memory_check``: ``error`` (SGLang raises), ``warn`` (SGLang's check off,
    rlkit's pre-flight warns) or ``off``. The legacy ``SGL_DISABLE_TP_MEMORY_INBALANCE_CHECK=True``
    from verl's page meant "warn instead of fail"; SGLang 0.5.15 copies it unchanged onto
    ``SGLANG_ENABLE_TP_MEMORY_INBALANCE_CHECK``, which turns the check ON. rlkit removes the legacy
    variables and honours their intent: with one set true, ``error`` becomes ``warn``.
    Returns the effective mode.
    """
    env = os.environ if environ is None else environ
    check_tp_memory_mode(mode)
    legacy_disable = any(_truthy(env.pop(name, None)) for name in LEGACY_TP_CHECK_ENVS)
    if legacy_disable and mode == "error":
        mode = "warn"
    env[TP_CHECK_ENV] = "true" if mode == "error" else "false"
    return mode


class SGLangRollout:
    """Rollout engine on ``sglang.Engine`` (in-process API, token ids in and out).

    Args:
        model_path: Hugging Face folder the engine loads (or whose shapes it uses with ``load_format=dummy``).
        tp_size, gpu_memory_utilization, enforce_eager, load_format, dtype: as ``rollout.*``.
        engine_kwargs: any other ``ServerArgs`` field (``rollout.engine_kwargs.sglang``).
        tp_memory_check: error | warn | off (see :func:`apply_tp_memory_check`).
        bucket_megabytes: weight sync bucket size (``rollout.update_weights_bucket_megabytes``).
        free_cache_engine: release KV cache and weights in :meth:`sleep`.
        run_config: the run's config, for the pre-flight's balance report (offload evidence, advice).

    Before the engine starts, :func:`rlkit.diagnostics.balance.preflight_tp_memory` applies SGLang's TP
    memory rule to the GPUs now (SGLang kills its launcher when its own check fails); its reading is kept
    in ``preflight_snapshot``.
    """

    name = "sglang"

    def __init__(self, model_path: str, *, tp_size: int = 1, gpu_memory_utilization: float = 0.5,
                 enforce_eager: bool = False, load_format: str = "auto", dtype: str = "bfloat16",
                 attention_backend: str | None = "triton", sampling_backend: str | None = "pytorch",
                 engine_kwargs: dict | None = None, tp_memory_check: str = "error", bucket_megabytes: int = 512,
                 free_cache_engine: bool = True, seed: int = 1, run_config=None, nnodes: int = 1,
                 node_rank: int = 0, dist_init_addr: str | None = None, preflight: bool = True):
        sglang = import_sglang()
        _check_architecture(model_path)
        mode = apply_tp_memory_check(tp_memory_check)
        # a rank group runs the pre-flight itself, over its ranks' readings (one GPU each)
        self.preflight_snapshot = preflight_tp_memory(tp_size, mode, config=run_config) if preflight else None
        kwargs = self.engine_kwargs(model_path, tp_size=tp_size, gpu_memory_utilization=gpu_memory_utilization,
                                    enforce_eager=enforce_eager, load_format=load_format, dtype=dtype,
                                    attention_backend=attention_backend, sampling_backend=sampling_backend,
                                    engine_kwargs=engine_kwargs, seed=seed)
        if nnodes > 1:  # one engine over whole nodes: each node's first rank launches its part
            kwargs.update(nnodes=nnodes, node_rank=node_rank, dist_init_addr=dist_init_addr)
            # node_rank >= 1 would block in Engine() serving its schedulers; the rank worker keeps going
            os.environ["SGLANG_BLOCK_NONZERO_RANK_CHILDREN"] = "0"
        self.node_rank = node_rank
        self.engine_args = kwargs
        self.dtype = getattr(torch, dtype) if isinstance(dtype, str) and dtype != "auto" else torch.bfloat16
        self.bucket_bytes = int(bucket_megabytes) * 2**20
        self.free_cache_engine = free_cache_engine
        try:
            self.engine = sglang.Engine(**kwargs)
        except torch.cuda.OutOfMemoryError as e:  # only reached when SGLang did not kill us first
            raise RuntimeError(_oom_message("starting", gpu_memory_utilization)) from e
        self.awake = True
        self.weights_valid = load_format != "dummy"  # dummy = random weights until the first push

    @staticmethod
    def engine_kwargs(model_path: str, *, tp_size: int = 1, gpu_memory_utilization: float = 0.5,
                      enforce_eager: bool = False, load_format: str = "auto", dtype: str = "bfloat16",
                      attention_backend: str | None = "triton", sampling_backend: str | None = "pytorch",
                      engine_kwargs: dict | None = None, seed: int = 1) -> dict:
        """The ``sglang.Engine(**kwargs)`` this class starts (token ids in/out, memory saver on)."""
        kwargs = dict(
            model_path=model_path, skip_tokenizer_init=True, enable_memory_saver=True,
            mem_fraction_static=gpu_memory_utilization, tp_size=tp_size, disable_cuda_graph=enforce_eager,
            load_format=load_format, dtype=dtype, random_seed=seed, grammar_backend="none",
        )
        if attention_backend:
            kwargs["attention_backend"] = attention_backend
        if sampling_backend:
            kwargs["sampling_backend"] = sampling_backend
        kwargs.update(dict(engine_kwargs or {}))
        return kwargs

    @staticmethod
    def concurrency_kwargs(max_num_seqs: int, enforce_eager: bool = False, given: dict | None = None) -> dict:
        """The engine arguments ``rollout.max_num_seqs`` sets: at most that many running requests
        (``max_running_requests``, as verl passes it) and, with CUDA graphs on, decode graphs for every batch
        size up to it (``cuda_graph_max_bs_decode``). SGLang's own graph limit is 256 on 60-160 GB cards
        below TP 4, so a larger rollout batch (GRPO's 64 prompts x 5 = 320 rows) would decode without graphs,
        one kernel launch at a time. A key already in ``given`` (``engine_kwargs.sglang``) wins.

        >>> from rlkit.rollout.sglang import SGLangRollout
        >>> SGLangRollout.concurrency_kwargs(1024)
        {'max_running_requests': 1024, 'cuda_graph_max_bs_decode': 1024}
        >>> SGLangRollout.concurrency_kwargs(1024, enforce_eager=True, given={"max_running_requests": 64})
        {}
        """
        given = given or {}
        out = {"max_running_requests": int(max_num_seqs)}
        if not enforce_eager:
            out["cuda_graph_max_bs_decode"] = int(max_num_seqs)
        return {k: v for k, v in out.items() if k not in given}

    @classmethod
    def from_worker(cls, worker) -> "SGLangRollout":
        """Build from a run's config (rollout.* keys)."""
        return cls.from_config(worker.cfg, worker.model_dir)

    @classmethod
    def from_config(cls, cfg, model_dir: str, **overrides) -> "SGLangRollout":
        """Build from a run config's ``actor_rollout_ref.rollout.*`` keys; ``overrides`` (``nnodes``,
        ``node_rank``, ``dist_init_addr``, ``preflight``) win."""
        r = cfg.actor_rollout_ref.rollout
        kw = dict(r.get("engine_kwargs", {}).get("sglang", {}) or {})
        kw.update(cls.concurrency_kwargs(int(r.get("max_num_seqs", 1024)), bool(r.enforce_eager), kw))
        args = dict(
            tp_size=int(r.tensor_model_parallel_size),
            gpu_memory_utilization=float(r.gpu_memory_utilization), enforce_eager=bool(r.enforce_eager),
            load_format=str(r.load_format), dtype=str(r.get("dtype", "bfloat16")),
            attention_backend=kw.pop("attention_backend", "triton"), sampling_backend=kw.pop("sampling_backend", "pytorch"),
            engine_kwargs=kw, tp_memory_check=str(r.get("tp_memory_check", "error")),
            bucket_megabytes=int(r.get("update_weights_bucket_megabytes", 512)),
            free_cache_engine=bool(r.get("free_cache_engine", True)), seed=int(cfg.data.get("seed", 1) or 1),
            run_config=cfg,
        )
        args.update(overrides)
        return cls(model_dir, **args)

    # ------------------------------------------------------------------ generation
    def generate(self, prompt_ids: list[list[int]], sampling: SamplingParams) -> GenerationOutput:
        if not self.awake:
            raise RuntimeError("SGLangRollout is asleep; call wake_up(weights) before generate()")
        if not self.weights_valid:
            raise RuntimeError("the engine holds no valid weights (load_format=dummy or released by sleep); "
                               "push the actor's weights with update_weights() or wake_up(weights) first")
        if not prompt_ids:
            return GenerationOutput([], [], [])
        for i, p in enumerate(prompt_ids):
            if len(p) == 0:
                raise ValueError(f"prompt {i} is empty; every prompt needs at least one token")
        params = {
            "max_new_tokens": sampling.max_new_tokens,
            "temperature": 0.0 if sampling.greedy else sampling.temperature,
            "top_p": 1.0 if sampling.greedy else sampling.top_p,
            "top_k": -1 if sampling.greedy else sampling.top_k,
            "ignore_eos": sampling.ignore_eos,
            "skip_special_tokens": False,
        }
        if sampling.stop_token_ids and not sampling.ignore_eos:
            params["stop_token_ids"] = list(sampling.stop_token_ids)
        rows = [list(p) for p in prompt_ids for _ in range(sampling.n)]  # prompt-major, like the hf engine
        t0 = time.perf_counter()
        outs = self.engine.generate(input_ids=rows, sampling_params=params, return_logprob=True)
        t1 = time.perf_counter()
        result = GenerationOutput([], [], [])
        for out in outs:
            ids = list(out["output_ids"])
            lps = [float(lp) for lp, *_ in out["meta_info"]["output_token_logprobs"]][: len(ids)]
            reason = out["meta_info"].get("finish_reason") or {}
            kind = reason.get("type") if isinstance(reason, dict) else str(reason)
            result.response_ids.append(ids)
            result.log_probs.append(lps)
            result.finish_reasons.append("length" if kind == "length" else "stop")
        self.last_timing = {"engine_s": t1 - t0, "postprocess_s": time.perf_counter() - t1}
        return result

    # ------------------------------------------------------------------ weights and memory
    def update_weights(self, named_tensors) -> None:
        """Push weights (any dtype/device) in buckets, then flush the prefix cache."""
        if not self.awake:
            raise RuntimeError("cannot push weights into a sleeping engine; use wake_up(weights)")
        for bucket in weight_buckets(named_tensors, self.bucket_bytes, self.dtype, "cuda"):
            self.engine.update_weights_from_tensor(bucket, flush_cache=False)
            del bucket
        self.flush_cache()

    # -- a TP group spread over rank workers (each holds one GPU and its FSDP shards)
    @classmethod
    def tp_memory_mode(cls, cfg) -> str:
        """The effective ``rollout.tp_memory_check`` (verl's legacy variable honoured, SGLang's own
        check switched accordingly in this process's environment); call once per process."""
        return apply_tp_memory_check(str(cfg.actor_rollout_ref.rollout.get("tp_memory_check", "error")))

    @classmethod
    def serialize_bucket(cls, bucket: list[tuple[str, torch.Tensor]]) -> list[tuple[str, object]]:
        """This rank's bucket of unsharded weights as CUDA IPC handles, readable by the engine's TP
        rank on the same GPU. The tensors must stay alive until the engine has loaded them."""
        import_sglang()
        from sglang.srt.utils import MultiprocessingSerializer
        from sglang.srt.utils.patch_torch import monkey_patch_torch_reductions

        monkey_patch_torch_reductions()  # IPC handles that name the GPU by UUID, not by a local index
        return [(name, MultiprocessingSerializer.serialize(t.detach())) for name, t in bucket]

    def load_rank_payloads(self, payloads: list[list[tuple[str, object]]]) -> None:
        """Load one bucket from every TP rank's :meth:`serialize_bucket` output (TP-rank order):
        TP rank i reads tensor values from payload i, on its own GPU (SGLang's LocalSerializedTensor)."""
        if not self.awake:
            raise RuntimeError("cannot push weights into a sleeping engine; call resume_weights() first")
        from sglang.srt.model_executor.model_runner import LocalSerializedTensor

        names = [[n for n, _ in p] for p in payloads]
        if any(n != names[0] for n in names):
            raise RuntimeError("TP ranks sent different weight buckets; every rank must push the same "
                               "parameters in the same order")
        named = [(rows[0][0], LocalSerializedTensor(values=[value for _, value in rows])) for rows in zip(*payloads)]
        self.engine.update_weights_from_tensor(named, flush_cache=False)

    def flush_cache(self) -> None:
        """Drop the prefix cache (its KV entries belong to the old weights); marks the weights valid."""
        self.engine.flush_cache()
        self.weights_valid = True

    def resume_weights(self) -> None:
        """Take back the weights' memory (contents garbage until pushed)."""
        if self.awake:
            return
        try:
            self.engine.resume_memory_occupation(tags=["weights"])
        except torch.cuda.OutOfMemoryError as e:
            raise RuntimeError(_oom_message("waking up", self.engine_args["mem_fraction_static"])) from e
        self.awake = True

    def resume_kv_cache(self) -> None:
        """After the push: empty torch's cache, then take back the KV cache."""
        torch.cuda.empty_cache()
        try:
            self.engine.resume_memory_occupation(tags=["kv_cache"])
        except torch.cuda.OutOfMemoryError as e:
            raise RuntimeError(_oom_message("waking up", self.engine_args["mem_fraction_static"])) from e

    def wake_up(self, named_tensors=None) -> None:
        """verl's order: resume weights -> push weights -> empty cache -> resume KV cache."""
        if self.awake:
            if named_tensors is not None:
                self.update_weights(named_tensors)
            return
        if named_tensors is None:
            raise ValueError("wake_up() needs the weights: the engine's weights were freed by sleep() and would "
                             "come back as garbage. Call wake_up(actor.named_parameters()).")
        self.resume_weights()
        self.update_weights(named_tensors)
        self.resume_kv_cache()

    def sleep(self) -> None:
        """Free the KV cache and the weights for training (no-op unless free_cache_engine)."""
        if not self.awake or not self.free_cache_engine:
            return
        self.engine.release_memory_occupation(tags=["kv_cache", "weights"])
        self.awake = False
        self.weights_valid = False
        torch.cuda.empty_cache()

    def shutdown(self, timeout: float = 60.0) -> None:
        """Stop the engine and wait (up to ``timeout`` s) for its processes to exit, so their GPU
        memory is back before this returns."""
        engine, self.engine = getattr(self, "engine", None), None
        if engine is None:
            return
        try:
            import psutil

            children = psutil.Process().children(recursive=True)
        except Exception:  # psutil missing: SGLang still stops its processes, we just don't wait
            children = []
        engine.shutdown()
        if children:
            import psutil

            _, alive = psutil.wait_procs(children, timeout=timeout)
            if alive:
                warnings.warn(f"{len(alive)} SGLang process(es) still running {timeout:.0f} s after shutdown: "
                              f"{[p.pid for p in alive]}", stacklevel=2)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _check_architecture(model_path: str) -> None:
    import json
    from pathlib import Path

    cfg_file = Path(model_path) / "config.json"
    if not cfg_file.exists():
        return
    archs = json.loads(cfg_file.read_text()).get("architectures") or []
    try:
        from sglang.srt.models.registry import ModelRegistry

        supported = set(ModelRegistry.get_supported_archs())
    except Exception:  # registry layout changed: let SGLang decide
        return
    if archs and not any(a in supported for a in archs):
        raise ValueError(f"SGLang cannot serve {model_path}: architectures {archs} are not among SGLang's "
                         f"{len(supported)} supported ones (e.g. Qwen2ForCausalLM, LlamaForCausalLM). "
                         "Use actor_rollout_ref.rollout.name=hf for this model.")


def _oom_message(when: str, fraction: float) -> str:
    table = "\n".join("  " + line for line in gpu_memory_lines())
    return (f"out of GPU memory while {when} the SGLang engine:\n{table}\nLower "
            f"actor_rollout_ref.rollout.gpu_memory_utilization (now {fraction}), enable "
            "actor_rollout_ref.actor.fsdp_config.param_offload / optimizer_offload, or shorten "
            "data.max_response_length.")
