"""Knowledge distillation from the dense teacher into the pruned student.

Loss = (1 - cos) on the pooled, normalised embedding
     + hidden_loss_weight * MSE of each surviving layer's hidden states against the teacher
       layer it came from (normalised by that teacher layer's variance, padding masked)
     + contrastive_loss_weight * in-batch InfoNCE: each student embedding must pick its own
       teacher embedding among the batch's (keeps neighbourhoods, hence recall@10).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from service.model.encoder import Encoder
from service.pruning.config import PruneConfig

__all__ = ["DistillLoss", "distill"]


class DistillLoss:
    def __init__(self, teacher: Encoder, cfg: PruneConfig, temperature: float = 0.05):
        self.teacher = teacher
        self.cfg = cfg
        self.temperature = temperature

    def __call__(self, student: Encoder, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        ids, mask = batch["input_ids"], batch["attention_mask"]
        want_hidden = self.cfg.hidden_loss_weight > 0
        with torch.no_grad():
            t_emb, t_hidden = self.teacher(ids, mask, output_hidden_states=want_hidden)
        s_emb, s_hidden = student(ids, mask, output_hidden_states=want_hidden)
        loss = (1.0 - (s_emb * t_emb).sum(-1)).mean()
        if want_hidden:
            m = mask.unsqueeze(-1).to(s_emb.dtype)
            n = m.sum() * s_hidden[0].shape[-1]
            terms = []
            for shape, s_h in zip(student.config.layers, s_hidden[1:]):
                t_h = t_hidden[shape.source_index + 1]
                terms.append((((s_h - t_h) ** 2) * m).sum() / n / (t_h.var() + 1e-6))
            loss = loss + self.cfg.hidden_loss_weight * torch.stack(terms).mean()
        if self.cfg.contrastive_loss_weight > 0 and len(ids) > 1:
            logits = s_emb @ t_emb.T / self.temperature
            target = torch.arange(len(ids))
            loss = loss + self.cfg.contrastive_loss_weight * F.cross_entropy(logits, target)
        return loss


def distill(
    student: Encoder,
    loss_fn: DistillLoss,
    batches: Iterator[dict[str, torch.Tensor]],
    steps: int,
    cfg: PruneConfig,
    progress=None,
) -> list[float]:
    """Train ``student`` in place for ``steps`` steps; return the loss per step."""
    if steps <= 0:
        return []
    params = [p for name, p in student.named_parameters()
              if cfg.train_word_embeddings or name != "embeddings.word_embeddings.weight"]
    student.embeddings.word_embeddings.weight.requires_grad_(cfg.train_word_embeddings)
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=0.01)
    warmup = max(1, steps // 20)

    def lr_at(step: int) -> float:  # linear warm-up, cosine decay to 10%
        if step < warmup:
            return (step + 1) / warmup
        t = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    student.train()
    losses = []
    for _ in range(steps):
        loss = loss_fn(student, next(batches))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if progress is not None:
            progress(losses[-1])
    student.eval()
    student.embeddings.word_embeddings.weight.requires_grad_(True)
    return losses
