"""`python -m rlkit.main_ppo <verl-style overrides>`: the PPO loop from a shell.

Accepts verl's command line (``data.train_files=... actor_rollout_ref.actor.optim.lr=1e-6 ...``)
and runs the same :class:`rlkit.Experiment` a notebook steps: optional validation before training,
``trainer.total_training_steps`` (or ``total_epochs``) steps, validation every ``test_freq`` steps,
checkpoints every ``save_freq`` steps (keeping ``max_actor_ckpt_to_keep`` /
``max_critic_ckpt_to_keep``), metrics (and ``trainer.log_val_generations`` validation samples) to
``trainer.logger``, and with ``trainer.rollout_data_dir`` /
``trainer.validation_data_dir`` each step's and each validation's responses to ``<dir>/<step>.jsonl``.

With ``trainer.resume_mode=auto`` (the default) a run continues from the newest
``global_step_N`` in ``trainer.default_local_dir``; values that may change on resume (step
counts, logging, save/test frequency, learning rates with a warning) come from this command line,
and a change that cannot apply (model, data, batch shape) is refused. What is resumed is printed.

Flags (besides the overrides): ``--traceback`` prints the full traceback of an error (also
``RLKIT_TRACEBACK=1``); ``--no-progress`` / ``--progress`` hide or show the progress bars within a
step (shown by default when stderr is a terminal; also ``RLKIT_PROGRESS=0|1``).
Exit status: 0 done, 1 error, 2 bad configuration or a machine that cannot run it, 130 interrupted.
"""
from __future__ import annotations

import os
import sys
import time
import traceback
import warnings
from pathlib import Path

FLAGS = ("--traceback", "--progress", "--no-progress")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    flags = {a for a in argv if a in FLAGS}
    overrides = [a for a in argv if a not in FLAGS]
    show_traceback = "--traceback" in flags or os.environ.get("RLKIT_TRACEBACK") == "1"
    warnings.showwarning = _show_warning
    try:
        return run(overrides, progress=_progress_wanted(flags))
    except KeyboardInterrupt:
        print("rlkit: interrupted; the last saved checkpoint is intact", file=sys.stderr)
        return 130
    except Exception as e:  # one clear message; the traceback on request
        return report_error(e, show_traceback)


def run(overrides: list[str], progress: bool = False) -> int:
    from rlkit.config import PPOConfig, check_runtime, validate

    cfg = PPOConfig.from_overrides(overrides, check=False)
    check_runtime(cfg)  # a missing GPU / sglang / ray is the first thing to hear about
    validate(cfg)

    from rlkit import checkpoint as ckpt_lib
    from rlkit.experiment import Experiment
    from rlkit.loggers import Tracking

    t = cfg.trainer
    out_dir = Path(str(t.default_local_dir)).expanduser()
    resume_from = _resume_dir(cfg, out_dir)
    if resume_from is not None:
        exp = Experiment.resume(resume_from, config=cfg, progress=progress)
    else:
        exp = Experiment(cfg, progress=progress)
    logger = Tracking(list(t.logger), out_dir)

    def validation() -> dict:  # metrics; the trainer.log_val_generations samples go to the loggers at once
        metrics = exp.validate()
        logger.log_generations(exp.last_val_generations, step=exp.global_step)
        return metrics

    try:
        if t.val_only:  # verl: validate once and stop
            logger.log(validation(), step=exp.global_step)
            return 0
        if resume_from is None and t.val_before_train and t.test_freq != 0:
            logger.log(validation(), step=exp.global_step)
        while exp.global_step < exp.total_training_steps:
            if progress:
                print(f"step {exp.global_step + 1}/{exp.total_training_steps}", file=sys.stderr, flush=True)
            result = exp.step()
            metrics = dict(result.metrics)
            last = exp.global_step >= exp.total_training_steps
            if t.test_freq > 0 and (exp.global_step % t.test_freq == 0 or last):
                start = time.perf_counter()
                metrics.update(validation())
                metrics["timing_s/testing"] = time.perf_counter() - start  # verl's: apart from timing_s/step
            if t.save_freq > 0 and (exp.global_step % t.save_freq == 0 or last):
                saved = exp.save(out_dir / f"{ckpt_lib.STEP_PREFIX}{exp.global_step}")
                for gone in ckpt_lib.prune(out_dir, t.max_actor_ckpt_to_keep, t.max_critic_ckpt_to_keep):
                    print(f"rlkit: removed old checkpoint {gone.name} (max_*_ckpt_to_keep)", file=sys.stderr)
                print(f"rlkit: saved {saved.name}: {ckpt_lib.inspect(saved).describe()}", file=sys.stderr)
            logger.log(metrics, step=exp.global_step)
    finally:
        logger.close()
        exp.shutdown()
    return 0


def _progress_wanted(flags: set[str]) -> bool:
    if "--no-progress" in flags:
        return False
    if "--progress" in flags:
        return True
    env = os.environ.get("RLKIT_PROGRESS")
    if env in ("0", "1"):
        return env == "1"
    return sys.stderr.isatty()


def _resume_dir(cfg, out_dir: Path) -> Path | None:
    """verl's ``trainer.resume_mode``: disable | auto (latest global_step_* in default_local_dir) |
    resume_path (``trainer.resume_from_path``)."""
    from rlkit import checkpoint as ckpt_lib

    mode = cfg.trainer.get("resume_mode", "auto")
    if mode == "disable":
        return None
    if mode == "resume_path" or cfg.trainer.get("resume_from_path"):
        return Path(cfg.trainer.resume_from_path).expanduser()
    return ckpt_lib.latest(out_dir)


# ---------------------------------------------------------------------- errors
def _user_error_types() -> tuple[type, ...]:
    """Errors that describe the user's input or machine (config, files, data, checkpoints, a dead
    worker); anything else is shown as a possible rlkit bug."""
    from rlkit.checkpoint import CheckpointError
    from rlkit.config import ConfigError, RuntimeRequirementError
    from rlkit.datasets.rl_dataset import PromptTooLongError
    from rlkit.rewards import RewardError

    types = [ConfigError, RuntimeRequirementError, CheckpointError, PromptTooLongError, RewardError, OSError,
             ImportError, ValueError, KeyError]
    try:
        from rlkit.datasets.gsm8k import DatasetUnavailableError, SourceFormatError

        types += [DatasetUnavailableError, SourceFormatError]
    except ImportError:  # pragma: no cover
        pass
    if "rlkit.distributed.group" in sys.modules:
        types.append(sys.modules["rlkit.distributed.group"].WorkerDiedError)
    return tuple(types)


def report_error(e: BaseException, show_traceback: bool, stream=None) -> int:
    """Print ``e`` as one message (the traceback only when asked) and return the exit status."""
    from rlkit.config import ConfigError, RuntimeRequirementError

    stream = stream or sys.stderr
    if show_traceback:
        traceback.print_exception(type(e), e, e.__traceback__, file=stream)
    if isinstance(e, ConfigError):
        print(f"rlkit: bad configuration:\n{e}", file=stream)
        return 2
    if isinstance(e, RuntimeRequirementError):
        print(f"rlkit: {e}", file=stream)
        return 2
    message = str(e) if not isinstance(e, KeyError) else str(e.args[0] if e.args else e)
    where = _origin(e)
    if isinstance(e, _user_error_types()):
        print(f"rlkit: error: {message}", file=stream)
    else:
        print(f"rlkit: unexpected {type(e).__name__} at {where}: {message}\n"
              "This may be a bug in rlkit: rerun with --traceback and report the output.", file=stream)
    if not show_traceback:
        print("(rerun with --traceback or RLKIT_TRACEBACK=1 for the full traceback)", file=stream)
    return 1


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"rlkit: warning: {message}", file=file or sys.stderr, flush=True)


def _origin(e: BaseException) -> str:
    frames = traceback.extract_tb(e.__traceback__)
    if not frames:
        return "?"
    f = frames[-1]
    return f"{Path(f.filename).name}:{f.lineno}"


if __name__ == "__main__":
    sys.exit(main())
