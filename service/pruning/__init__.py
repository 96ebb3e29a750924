"""The offline pruning job: config and presets, and ``run_prune``.

Criteria, surgery, schedule, distillation and export are steps of ``run_prune`` and live in
their own modules; the job (which needs torch) is imported on first use. The artifact contract
(manifest, hashes, publishing) is :mod:`service.artifacts`.
"""

from service.pruning.config import PRESETS, PruneConfig, preset

__all__ = ["PRESETS", "PruneConfig", "PruneError", "preset", "run_prune"]
_JOB = {"PruneError", "run_prune"}


def __getattr__(name: str):
    if name in _JOB:
        from service.pruning import job

        return getattr(job, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
