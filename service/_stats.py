"""The one percentile definition: nearest rank (NumPy's ``inverted_cdf``), the smallest observed
value with at least q% of the values at or below it. Load tests, benchmarks and fidelity figures
all use it, so a p99 or a p5 always means the same thing and is always a value that was observed."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["PERCENTILE_METHOD", "percentile"]

PERCENTILE_METHOD = "inverted_cdf"  # NumPy's name for nearest rank


def percentile(values: Sequence[float] | np.ndarray, q: float) -> float:
    """The ``q``-th percentile (``q`` in [0, 100]) of ``values`` (any order), nearest rank."""
    if len(values) == 0:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"q must be in [0, 100], got {q}")
    return float(np.percentile(np.asarray(values, dtype=float), q, method=PERCENTILE_METHOD))
