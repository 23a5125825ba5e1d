"""`python -m rlkit.main_ppo <verl-style overrides>`: the PPO loop from a shell.

Accepts verl's command line (``data.train_files=... actor_rollout_ref.actor.optim.lr=1e-6 ...``)
and runs the same :class:`rlkit.Experiment` a notebook steps: optional validation before training,
``trainer.total_training_steps`` (or ``total_epochs``) steps, validation every ``test_freq`` steps,
checkpoints every ``save_freq`` steps, metrics to ``trainer.logger``.
"""
from __future__ import annotations

import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    from rlkit.config import ConfigError, PPOConfig

    try:
        cfg = PPOConfig.from_overrides(argv)
    except ConfigError as e:
        print(f"rlkit: bad configuration:\n{e}", file=sys.stderr)
        return 2

    from rlkit.experiment import Experiment
    from rlkit.loggers import Tracking

    t = cfg.trainer
    out_dir = Path(str(t.default_local_dir)).expanduser()
    resume_from = _resume_dir(cfg, out_dir)
    if resume_from is not None:
        print(f"rlkit: resuming from {resume_from}", file=sys.stderr)
        exp = Experiment.resume(resume_from)
    else:
        exp = Experiment(cfg)
    logger = Tracking(list(t.logger), out_dir)
    try:
        if resume_from is None and t.val_before_train and t.test_freq != 0:
            logger.log(exp.validate(), step=exp.global_step)
        while exp.global_step < exp.total_training_steps:
            result = exp.step()
            metrics = dict(result.metrics)
            last = exp.global_step >= exp.total_training_steps
            if t.test_freq > 0 and (exp.global_step % t.test_freq == 0 or last):
                metrics.update(exp.validate())
            if t.save_freq > 0 and (exp.global_step % t.save_freq == 0 or last):
                exp.save(out_dir / f"global_step_{exp.global_step}")
            logger.log(metrics, step=exp.global_step)
    finally:
        logger.close()
        exp.shutdown()
    return 0


def _resume_dir(cfg, out_dir: Path) -> Path | None:
    """verl's ``trainer.resume_mode``: disable | auto (latest global_step_* in default_local_dir) |
    resume_path (``trainer.resume_from_path``)."""
    mode = cfg.trainer.get("resume_mode", "auto")
    if mode == "disable":
        return None
    if mode == "resume_path" or cfg.trainer.get("resume_from_path"):
        path = cfg.trainer.get("resume_from_path")
        if not path:
            raise SystemExit("rlkit: trainer.resume_mode=resume_path needs trainer.resume_from_path=DIR")
        return Path(path).expanduser()
    steps = [p for p in out_dir.glob("global_step_*") if (p / "rlkit_checkpoint.json").exists()]
    return max(steps, key=lambda p: int(p.name.rsplit("_", 1)[1])) if steps else None


if __name__ == "__main__":
    sys.exit(main())
