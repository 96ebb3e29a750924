"""How far a variant's embeddings are from the dense model's on held-out text."""

from __future__ import annotations

import numpy as np

from service.artifacts.manifest import Fidelity
from service._stats import percentile

__all__ = ["fidelity", "recall_at_k"]


def recall_at_k(reference: np.ndarray, candidate: np.ndarray, k: int = 10) -> float:
    """Mean overlap of each text's k nearest neighbours (itself excluded) under the two embeddings."""
    k = min(k, len(reference) - 1)

    def neighbours(e: np.ndarray) -> np.ndarray:
        sim = e @ e.T
        np.fill_diagonal(sim, -np.inf)
        return np.argpartition(-sim, k, axis=1)[:, :k]

    a, b = neighbours(reference), neighbours(candidate)
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(a, b)]))


def fidelity(reference: np.ndarray, candidate: np.ndarray) -> Fidelity:
    """``reference`` and ``candidate``: L2-normalised embeddings [texts, dim] of the same texts."""
    cos = np.sum(reference * candidate, axis=1)
    return Fidelity(
        mean_cosine=float(cos.mean()),
        p5_cosine=percentile(cos, 5),  # nearest rank, twinserve's one percentile
        recall_at_10=recall_at_k(reference, candidate, 10),
        n_texts=len(cos),
    )
