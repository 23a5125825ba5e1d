"""`RayWorker`: a :class:`~rlkit.training.worker.PPOWorker` inside a Ray actor.

The controller (a notebook kernel, a script) keeps only this handle; models, optimizers and the
SGLang engine live in the actor's process. When SGLang's scheduler fails it kills the process that
launched the engine - with this split that is the actor, and the controller gets a
:class:`WorkerDiedError` it can report, instead of a dead kernel.
"""
from __future__ import annotations

from rlkit.diagnostics.memory import gpu_memory_lines
from rlkit.distributed.cluster import _import_ray, connect

# Methods of PPOWorker the controller may call; each becomes a blocking remote call.
REMOTE_METHODS = (
    "generate", "compute_log_prob", "compute_ref_log_prob", "compute_values", "update_critic", "update_actor",
    "wake_rollout", "sleep_rollout", "sync_rollout_weights", "reset_after_interrupt", "state_dict",
    "load_state_dict", "set_total_training_steps", "take_snapshots",
)


class WorkerDiedError(RuntimeError):
    """The worker process died (SGLang kills its launcher when the engine fails)."""


def check_cluster_gpus(resources: dict, num_gpus: int) -> None:
    """Refuse at once when the Ray cluster has fewer GPUs than the worker asks for (Ray itself would
    keep the request pending forever, printing an autoscaler line now and then)."""
    have = resources.get("GPU", 0)
    if num_gpus > have:
        shown = ", ".join(f"{k}={v:g}" for k, v in sorted(resources.items())
                          if k in ("CPU", "GPU", "memory") or k.startswith("accelerator_type"))
        raise RuntimeError(f"the rlkit worker needs {num_gpus} GPU(s) and the Ray cluster has {have:g} ({shown}). "
                           "Fix: run on a machine with GPUs (connect to a GPU cluster with RAY_ADDRESS), lower "
                           "actor_rollout_ref.rollout.tensor_model_parallel_size, or use "
                           "actor_rollout_ref.rollout.name=hf")


class RayWorker:
    """Controller-side handle with PPOWorker's interface; every call runs in the actor.

    Args:
        cfg: validated rlkit config.
        num_gpus: GPUs for the actor (default: rollout.tensor_model_parallel_size for sglang, else 1).
        worker_kwargs: passed on to PPOWorker (``total_training_steps``, ``progress``).
    """

    remote = True  # calls cross a process boundary

    def __init__(self, cfg, num_gpus: int | None = None, **worker_kwargs):
        ray = _import_ray()
        self._ray = ray
        from rlkit.training.worker import PPOWorker

        connect(cfg)  # trainer.ray_address, RAY_ADDRESS, or a local cluster
        rollout = cfg.actor_rollout_ref.rollout
        if num_gpus is None:
            import torch  # is_available() reads the driver; it creates no CUDA context here

            if rollout.name == "sglang":
                num_gpus = int(rollout.tensor_model_parallel_size)
            else:
                num_gpus = 1 if torch.cuda.is_available() and cfg.trainer.get("device", "cuda") != "cpu" else 0
        self.num_gpus = num_gpus
        check_cluster_gpus(ray.cluster_resources(), num_gpus)  # Ray would wait forever for missing GPUs
        self._actor = ray.remote(num_gpus=num_gpus)(PPOWorker).remote(cfg, **worker_kwargs)
        info = self._call("describe", what="starting the worker (model load, engine start)")
        self.has_ref, self.has_critic = info["has_ref"], info["has_critic"]
        self.model_dir, self.device, self.load_time = info["model_dir"], info["device"], info["load_time"]
        self.tokenizer = self._call("get_tokenizer")

    def _call(self, method: str, *args, what: str | None = None, **kwargs):
        if self._actor is None:
            raise RuntimeError("this worker was shut down; create a new Experiment")
        try:
            return self._ray.get(getattr(self._actor, method).remote(*args, **kwargs))
        except self._ray.exceptions.RayActorError as e:
            self._actor = None
            cause = str(e)
            if "creation task" in cause:  # __init__ raised: that error is the story, not a crash
                raise WorkerDiedError(f"the rlkit worker failed to start: {cause[-4000:]}") from e
            raise WorkerDiedError(
                f"the rlkit worker process died while {what or method!r} ran. SGLang kills the process that "
                "launched its engine when the engine fails (out of memory, TP memory imbalance, unsupported "
                "model); the controller survives. GPU memory now: " + "; ".join(gpu_memory_lines()) +
                ". Check the worker's log above; lower actor_rollout_ref.rollout.gpu_memory_utilization if "
                "memory ran out, then create a new Experiment.") from e

    def memory_snapshot(self, step, phase: str, event: str) -> None:
        """Fire and forget: the actor runs it between the calls around it; take_snapshots() collects."""
        if self._actor is not None:
            self._actor.memory_snapshot.remote(step, phase, event)

    def shutdown(self) -> None:
        """Stop the engine and end the actor's process (its GPU memory is freed)."""
        if self._actor is None:
            return
        try:
            self._ray.get(self._actor.shutdown.remote(), timeout=120)
        except Exception:
            pass
        self._ray.kill(self._actor)
        self._actor = None


def _forward(name: str):
    def call(self, *args, **kwargs):
        return self._call(name, *args, **kwargs)

    call.__name__ = name
    call.__doc__ = f"Remote ``PPOWorker.{name}``."
    return call


for _name in REMOTE_METHODS:
    setattr(RayWorker, _name, _forward(_name))
