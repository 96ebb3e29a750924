"""The offline pruning job: config and presets, the artifact manifest, and ``run_prune``.

Criteria, surgery, schedule, distillation and export are steps of ``run_prune`` and live in
their own modules; the job (which needs torch) is imported on first use, so reading a
manifest stays light.
"""

from service.pruning.config import PRESETS, PruneConfig, preset
from service.pruning.manifest import ArtifactIntegrityError, Manifest, load_manifest, verify_artifacts

__all__ = [
    "PRESETS", "ArtifactIntegrityError", "Manifest", "PruneConfig", "PruneError", "load_manifest", "preset",
    "run_prune", "verify_artifacts",
]
_JOB = {"PruneError", "run_prune"}


def __getattr__(name: str):
    if name in _JOB:
        from service.pruning import job

        return getattr(job, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
