"""Physical removal of heads, FFN neurons and layers: the matrices shrink, nothing is zeroed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from service.model.encoder import Encoder, EncoderConfig, LayerShape

__all__ = ["Keep", "apply_mask_gates", "prune_encoder"]


@dataclass(frozen=True)
class Keep:
    """What survives, indexed in the current model: layers, and per surviving layer heads and neurons."""

    layers: list[int]
    heads: list[list[int]]  # one list per entry of ``layers``
    neurons: list[list[int]]

    def __post_init__(self):
        if not (len(self.layers) == len(self.heads) == len(self.neurons)):
            raise ValueError("layers, heads and neurons must have one entry per surviving layer")
        if not self.layers:
            raise ValueError("at least one layer must survive")
        if any(not h for h in self.heads) or any(not n for n in self.neurons):
            raise ValueError("every surviving layer needs at least one head and one FFN neuron")


def _slice_linear(lin: nn.Linear, out_idx: torch.Tensor | None, in_idx: torch.Tensor | None) -> nn.Linear:
    w = lin.weight.detach()
    b = lin.bias.detach()
    if out_idx is not None:
        w, b = w.index_select(0, out_idx), b.index_select(0, out_idx)
    if in_idx is not None:
        w = w.index_select(1, in_idx)
    new = nn.Linear(w.shape[1], w.shape[0])
    with torch.no_grad():
        new.weight.copy_(w)
        new.bias.copy_(b)
    return new


def _head_rows(heads: Sequence[int], head_dim: int) -> torch.Tensor:
    return torch.tensor([h * head_dim + d for h in sorted(heads) for d in range(head_dim)], dtype=torch.long)


@torch.no_grad()
def prune_encoder(model: Encoder, keep: Keep) -> Encoder:
    """A new, smaller :class:`Encoder` holding only what ``keep`` names; ``model`` is untouched."""
    cfg = model.config
    shapes = []
    for li, heads, neurons in zip(keep.layers, keep.heads, keep.neurons):
        shapes.append(LayerShape(heads=len(heads), ffn=len(neurons), source_index=cfg.layers[li].source_index))
    new_cfg = EncoderConfig(**{**cfg.model_dump(), "layers": tuple(shapes)})
    new = Encoder(new_cfg)
    new.embeddings.load_state_dict(model.embeddings.state_dict())
    for dst, li, heads, neurons in zip(new.layers, keep.layers, keep.heads, keep.neurons):
        src = model.layers[li]
        rows = _head_rows(heads, cfg.head_dim)
        cols = torch.tensor(sorted(neurons), dtype=torch.long)
        for name in ("query", "key", "value"):
            setattr(dst.attention.self, name, _slice_linear(getattr(src.attention.self, name), rows, None))
        dst.attention.output.dense = _slice_linear(src.attention.output.dense, None, rows)
        dst.attention.output.LayerNorm.load_state_dict(src.attention.output.LayerNorm.state_dict())
        dst.intermediate.dense = _slice_linear(src.intermediate.dense, cols, None)
        dst.output.dense = _slice_linear(src.output.dense, None, cols)
        dst.output.LayerNorm.load_state_dict(src.output.LayerNorm.state_dict())
    new.train(model.training)
    return new


def apply_mask_gates(model: Encoder, keep: Keep) -> None:
    """Set gates so that ``model`` computes what :func:`prune_encoder` would (heads/neurons/layers masked)."""
    cfg = model.config
    model.head_gates, model.neuron_gates = [], []
    layer_gates = torch.zeros(cfg.num_layers)
    for li, shape in enumerate(cfg.layers):
        h, n = torch.zeros(shape.heads), torch.zeros(shape.ffn)
        if li in keep.layers:
            j = keep.layers.index(li)
            h[keep.heads[j]] = 1.0
            n[keep.neurons[j]] = 1.0
            layer_gates[li] = 1.0
        model.head_gates.append(h)
        model.neuron_gates.append(n)
    model.layer_gates = layer_gates
