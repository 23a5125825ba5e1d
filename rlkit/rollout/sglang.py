"""`sglang` rollout engine: SGLang's offline ``Engine`` colocated with training.

This is the only module in rlkit that imports sglang, and only when the engine is built.
"""
from __future__ import annotations

SUPPORTED_SGLANG = "0.5.15"  # the version rlkit's GPU tests ran against


def import_sglang():
    """Import sglang or explain what to install."""
    try:
        import sglang  # noqa: F401
    except ImportError as e:
        raise ImportError(
            "actor_rollout_ref.rollout.name=sglang needs SGLang, which is not installed here "
            f"({e}). Install it on a CUDA machine with `pip install 'sglang[all]=={SUPPORTED_SGLANG}.post1' ray` "
            "(rlkit is tested with SGLang 0.5.15.post1), or use actor_rollout_ref.rollout.name=hf."
        ) from e
    return sglang


class SGLangRollout:
    """Placeholder until the engine lands: selecting it fails with an actionable message."""

    name = "sglang"

    @classmethod
    def from_worker(cls, worker):
        import_sglang()
        raise NotImplementedError("the SGLang rollout engine is not implemented in this build of rlkit; "
                                  "use actor_rollout_ref.rollout.name=hf")
