"""Saliency criteria: interchangeable objects with one method (Torch-Pruning's ``Importance``).

Each scores every head, FFN neuron and layer of the current model; higher means keep.

- ``magnitude``: L2 norm of the weights a unit owns (no data).
- ``taylor``: first-order Taylor expansion of the loss when a unit is removed,
  |activation x gradient| accumulated over batches (Molchanov et al. 2017/2019), read as
  |dL/dg| of a gate g = 1 that multiplies the unit's output.
- ``fisher``: Optimal Brain Damage with the diagonal empirical Fisher as the Hessian,
  1/2 * sum over the unit's weights of grad^2 * w^2, gradients accumulated over batches.

The loss is the distillation objective against the dense teacher (see ``distill``). Its
in-batch contrastive term keeps gradients non-zero even while student == teacher, where the
plain regression terms would vanish.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from service.model.encoder import Encoder

__all__ = ["CRITERIA", "Fisher", "Importance", "Magnitude", "Saliency", "Taylor", "get_criterion"]

LossFn = Callable[[Encoder, dict[str, torch.Tensor]], torch.Tensor]


@dataclass
class Saliency:
    heads: list[torch.Tensor]  # per layer, [heads in that layer]
    neurons: list[torch.Tensor]  # per layer, [ffn width of that layer]
    layers: torch.Tensor  # [layers]


class Importance(ABC):
    name: str

    @abstractmethod
    def __call__(self, model: Encoder, batches: Iterable[dict[str, torch.Tensor]], loss_fn: LossFn) -> Saliency:
        ...


def _head_groups(weight_rows: torch.Tensor, heads: int) -> torch.Tensor:
    """Sum a per-row quantity [heads*head_dim] into per-head totals [heads]."""
    return weight_rows.view(heads, -1).sum(dim=1)


def _group_sums(model: Encoder, per_param: dict[str, torch.Tensor]) -> Saliency:
    """Sum an element-wise quantity over the weights each head, neuron and layer owns."""
    heads, neurons, layers = [], [], []
    for i, layer in enumerate(model.layers):
        sa, p = layer.attention.self, f"encoder.layer.{i}."
        q = lambda name: per_param[p + name]  # noqa: E731
        rows = sum(q(f"attention.self.{n}.weight").sum(1) + q(f"attention.self.{n}.bias") for n in ("query", "key", "value"))
        rows = rows + q("attention.output.dense.weight").sum(0)
        heads.append(_head_groups(rows, sa.heads))
        neurons.append(q("intermediate.dense.weight").sum(1) + q("intermediate.dense.bias") + q("output.dense.weight").sum(0))
        layers.append(sum(v.sum() for k, v in per_param.items() if k.startswith(p)))
    return Saliency(heads, neurons, torch.stack(layers))


class Magnitude(Importance):
    name = "magnitude"

    @torch.no_grad()
    def __call__(self, model, batches, loss_fn):
        squares = {k: v.detach() ** 2 for k, v in model.named_parameters() if k.startswith("encoder.")}
        s = _group_sums(model, squares)
        return Saliency([h.sqrt() for h in s.heads], [n.sqrt() for n in s.neurons], s.layers.sqrt())


class Taylor(Importance):
    name = "taylor"

    def __call__(self, model, batches, loss_fn):
        cfg = model.config
        model.head_gates = [torch.ones(s.heads, requires_grad=True) for s in cfg.layers]
        model.neuron_gates = [torch.ones(s.ffn, requires_grad=True) for s in cfg.layers]
        model.layer_gates = torch.ones(cfg.num_layers, requires_grad=True)
        gates = [*model.head_gates, *model.neuron_gates, model.layer_gates]
        acc = [torch.zeros_like(g) for g in gates]
        try:
            for batch in batches:
                grads = torch.autograd.grad(loss_fn(model, batch), gates, allow_unused=True)
                for a, g in zip(acc, grads):
                    if g is not None:
                        a += g.abs()  # |activation x gradient| per batch, accumulated
        finally:
            model.head_gates = model.neuron_gates = model.layer_gates = None
        n = cfg.num_layers
        return Saliency(acc[:n], acc[n : 2 * n], acc[2 * n])


class Fisher(Importance):
    name = "fisher"

    def __call__(self, model, batches, loss_fn):
        params = {k: p for k, p in model.named_parameters() if k.startswith("encoder.")}
        fisher = {k: torch.zeros_like(p) for k, p in params.items()}
        names, tensors = list(params), list(params.values())
        for batch in batches:
            grads = torch.autograd.grad(loss_fn(model, batch), tensors, allow_unused=True)
            for k, g in zip(names, grads):
                if g is not None:
                    fisher[k] += g.detach() ** 2
        obd = {k: 0.5 * fisher[k] * params[k].detach() ** 2 for k in names}
        return _group_sums(model, obd)


CRITERIA: dict[str, type[Importance]] = {c.name: c for c in (Magnitude, Taylor, Fisher)}


def get_criterion(name: str) -> Importance:
    try:
        return CRITERIA[name]()
    except KeyError:
        raise ValueError(f"unknown criterion {name!r}; choose one of {', '.join(CRITERIA)}") from None
