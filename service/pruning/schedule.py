"""Gradual pruning on the cubic schedule of Zhu & Gupta (2017), "To prune, or not to prune"."""

from __future__ import annotations

import math

__all__ = ["cubic_sparsity", "layers_to_drop", "plan_step"]


def cubic_sparsity(step: int, n_steps: int, final: float, initial: float = 0.0) -> float:
    """Sparsity after pruning step ``step`` of ``n_steps`` (1-based).

    s_t = s_f + (s_i - s_f) * (1 - t / n)^3: large cuts early while redundancy is high,
    small ones late, reaching ``final`` exactly at t = n.
    """
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    if not 0 <= step <= n_steps:
        raise ValueError(f"step must be in [0, {n_steps}], got {step}")
    return final + (initial - final) * (1.0 - step / n_steps) ** 3


def layers_to_drop(step: int, n_steps: int, layer_sparsity: float, n_layers: int) -> int:
    """Whole layers removed by pruning step ``step``: the cubic schedule over the number of
    layers to remove, rounded up.

    A layer therefore goes at the first step that asks for any part of it, with the most
    distillation left to recover, not at the last step after earlier steps had spent the
    head and neuron budget thinning it (which left the survivors with fewer units than asked).
    """
    total = int(layer_sparsity * n_layers + 1e-9)
    return min(total, math.ceil(cubic_sparsity(step, n_steps, float(total)) - 1e-9))


def _normalised(scores: list) -> list:
    """Per-layer L2 normalisation (Michel et al. 2019), so layers compete on a common scale."""
    return [s / (s.norm() + 1e-12) for s in scores]


def _pick(scores: list, total: int, floor: int) -> list[list[int]]:
    """Keep ``total`` units across layers by global rank, at least ``floor`` per layer."""
    import torch

    keep = [set(torch.argsort(s, descending=True)[: min(floor, len(s))].tolist()) for s in scores]
    rest = sorted(
        ((float(s[j]), li, j) for li, s in enumerate(scores) for j in range(len(s)) if j not in keep[li]),
        reverse=True,
    )
    for _, li, j in rest[: max(0, total - sum(len(k) for k in keep))]:
        keep[li].add(j)
    return [sorted(k) for k in keep]


def plan_step(model, saliency, *, heads_total: int, ffn_total: int, layers_total: int,
              min_heads: int, min_ffn: int):
    """Choose what survives a pruning step, given targets counted over the whole model.

    Layers go first (lowest layer saliency); heads and neurons are then ranked globally
    over the surviving layers after per-layer normalisation.
    """
    from service.pruning.surgery import Keep

    n_layers = model.config.num_layers
    layer_order = sorted(range(n_layers), key=lambda i: float(saliency.layers[i]), reverse=True)
    layers = sorted(layer_order[: max(1, min(layers_total, n_layers))])
    heads = _pick(_normalised([saliency.heads[i] for i in layers]), heads_total, min_heads)
    neurons = _pick(_normalised([saliency.neurons[i] for i in layers]), ffn_total, min_ffn)
    return Keep(layers=layers, heads=heads, neurons=neurons)
