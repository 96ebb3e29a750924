"""Which candidate becomes the CPU variant: a pure function of the measured frontier.

Rules (issue 16):

- A candidate **meets the floor** when its mean cosine and its recall@10 to dense fp32 reach
  ``min_mean_cosine`` and ``min_recall_at_10`` on *every* held-out set.
- Among pruned candidates that meet the floor, the **fastest** is published. Speed is the
  geometric mean of the median latencies over the measured cells (1x16, 1x128, 32x32), so no
  single cell decides alone; every cell of every candidate was measured side by side.
- When no pruned candidate meets the floor, the **closest** is published with
  ``meets_floor=False``: the fastest of those that meet the mean-cosine part on every set
  (recall@10 short: the most fragile of the measures, which even the dense model's own INT8
  copies lose first); when none meets even that, the highest worst-set mean cosine, then the
  highest worst-set recall@10, then the fastest.
- The **best quantised dense** candidate (the fastest INT8 dense one meeting the floor, else
  the fastest INT8 dense one) is always reported beside it, with the speed-up of the published
  variant over it per cell, and the summary says plainly when pruning did not beat it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from service.artifacts.manifest import CandidateMeasurement, Fidelity

__all__ = ["Selection", "meets_floor", "select_cpu_variant", "speed_score"]


def meets_floor(fidelity: dict[str, Fidelity], min_mean_cosine: float, min_recall_at_10: float) -> bool:
    return bool(fidelity) and all(f.mean_cosine >= min_mean_cosine and f.recall_at_10 >= min_recall_at_10
                                  for f in fidelity.values())


def speed_score(c: CandidateMeasurement) -> float:
    """Geometric mean of the candidate's median latencies in ms (lower is faster)."""
    if not c.latency_ms:
        raise ValueError(f"candidate {c.name} has no latency measurements")
    return math.exp(sum(math.log(v) for v in c.latency_ms.values()) / len(c.latency_ms))


@dataclass(frozen=True)
class Selection:
    chosen: CandidateMeasurement
    meets_floor: bool
    best_quantised_dense: CandidateMeasurement | None
    speedup_vs_best_quantised_dense: dict[str, float]
    pruning_beats_quantised_dense: bool | None
    summary: str


def _worst(c: CandidateMeasurement, attr: str) -> float:
    return min(getattr(f, attr) for f in c.fidelity.values()) if c.fidelity else -1.0


def _describe(c: CandidateMeasurement) -> str:
    return (f"{c.name} (mean cosine {_worst(c, 'mean_cosine'):.3f}, recall@10 {_worst(c, 'recall_at_10'):.3f} "
            f"on the worst held-out set)")


def select_cpu_variant(candidates: list[CandidateMeasurement], *, min_mean_cosine: float,
                       min_recall_at_10: float) -> Selection:
    """Choose the CPU variant from the measured frontier (see the module's rules)."""
    pruned = [c for c in candidates if c.model == "pruned"]
    if not pruned:
        raise ValueError("no pruned candidate was measured; the job has nothing to publish")
    ok = [c for c in pruned if meets_floor(c.fidelity, min_mean_cosine, min_recall_at_10)]
    cosine_ok = [c for c in pruned if meets_floor(c.fidelity, min_mean_cosine, 0.0)]
    if ok or cosine_ok:
        chosen = min(ok or cosine_ok, key=speed_score)
    else:
        chosen = min(pruned, key=lambda c: (-_worst(c, "mean_cosine"), -_worst(c, "recall_at_10"), speed_score(c)))
    floor = f"the floor (mean cosine >= {min_mean_cosine:g} and recall@10 >= {min_recall_at_10:g} on every " \
            f"held-out set)"
    summary = [f"published {_describe(chosen)}: " + (
        f"the fastest pruned candidate meeting {floor}" if ok else
        f"NO pruned candidate meets {floor}; this is the closest (meets_floor: false"
        + ("; the fastest meeting the mean-cosine part)" if cosine_ok else ")"))]

    dense_q = [c for c in candidates if c.model == "dense" and c.precision == "int8"]
    dense_ok = [c for c in dense_q if meets_floor(c.fidelity, min_mean_cosine, min_recall_at_10)]
    best_dense = min(dense_ok or dense_q, key=speed_score) if dense_q else None
    speedup: dict[str, float] = {}
    beats = None
    if best_dense is not None:
        speedup = {cell: best_dense.latency_ms[cell] / ms for cell, ms in chosen.latency_ms.items()
                   if cell in best_dense.latency_ms}
        beats = speed_score(chosen) < speed_score(best_dense)
        cells = ", ".join(f"{cell} {x:.2f}x" for cell, x in speedup.items())
        summary.append(f"best quantised dense: {_describe(best_dense)}; the published variant vs it: {cells}")
        if not beats:
            summary.append("pruning did NOT beat quantised dense: the quantised dense model is as fast or faster"
                           + (" and meets the floor" if best_dense in dense_ok else ""))
    return Selection(chosen=chosen, meets_floor=bool(ok), best_quantised_dense=best_dense,
                     speedup_vs_best_quantised_dense=speedup, pruning_beats_quantised_dense=beats,
                     summary="; ".join(summary))
