"""Unit tests of the pruning building blocks on tiny random BERTs (no Ray, no network)."""

from __future__ import annotations

import copy
import random
import re

import numpy as np
import pytest
import torch

from service.model.encoder import Encoder, EncoderConfig, LayerShape
from service.model.tokenizer import TextTokenizer
from service.pruning.config import PruneConfig, preset
from service.pruning.criteria import CRITERIA, get_criterion
from service.pruning.distill import DistillLoss
from service.pruning.job import BUCKET_BATCHES, _batches
from service.pruning.schedule import cubic_sparsity, layers_to_drop, plan_step
from service.pruning.surgery import Keep, apply_mask_gates, prune_encoder
from tests.conftest import TINY, minilm_dir


def tiny_encoder(seed: int = 0, **overrides) -> Encoder:
    torch.manual_seed(seed)
    model = Encoder(EncoderConfig.uniform(**{**TINY, **overrides}))
    for p in model.parameters():
        if p.dim() > 1:
            torch.nn.init.normal_(p, std=0.2)
    return model.eval()


def random_batch(n: int = 6, t: int = 11, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 5000, (n, t), generator=g)
    mask = torch.ones_like(ids)
    for i in range(n):  # ragged lengths, padding at the end
        mask[i, 3 + (i * 2) % (t - 3):] = 0
    return {"input_ids": ids * mask, "attention_mask": mask}


KEEP = Keep(layers=[0, 2], heads=[[0, 3], [1, 2, 3]], neurons=[[0, 5, 9, 63], list(range(0, 64, 2))])


def test_removal_equals_masking():
    model = tiny_encoder()
    batch = random_batch()
    pruned = prune_encoder(model, KEEP)
    masked = copy.deepcopy(model)
    apply_mask_gates(masked, KEEP)
    with torch.no_grad():
        e_pruned, h_pruned = pruned(**batch, output_hidden_states=True)
        e_masked, h_masked = masked(**batch, output_hidden_states=True)
    torch.testing.assert_close(e_pruned, e_masked, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(h_pruned[-1], h_masked[-1], atol=1e-4, rtol=1e-4)
    # and the matrices really shrank
    q = pruned.layers[0].attention.self.query.weight
    assert q.shape == (2 * model.config.head_dim, model.config.hidden_size)
    assert pruned.layers[1].intermediate.dense.weight.shape == (32, model.config.hidden_size)
    assert [s.source_index for s in pruned.config.layers] == [0, 2]
    assert pruned.config.num_parameters() < model.config.num_parameters()
    assert sum(p.numel() for p in pruned.parameters()) == pruned.config.num_parameters()


def test_masking_changes_output():
    """Guard for the test above: the kept set does matter, so equality is not vacuous."""
    model = tiny_encoder()
    batch = random_batch()
    with torch.no_grad():
        dense, _ = model(**batch)
        pruned, _ = prune_encoder(model, KEEP)(**batch)
    assert (dense * pruned).sum(-1).mean() < 0.999


def plant_useless(model: Encoder, layer: int, head: int, neuron: int) -> None:
    d = model.config.head_dim
    rows = slice(head * d, (head + 1) * d)
    with torch.no_grad():
        sa = model.layers[layer].attention.self
        for lin in (sa.query, sa.key, sa.value):
            lin.weight[rows] = 0
            lin.bias[rows] = 0
        model.layers[layer].attention.output.dense.weight[:, rows] = 0
        model.layers[layer].intermediate.dense.weight[neuron] = 0
        model.layers[layer].intermediate.dense.bias[neuron] = 0
        model.layers[layer].output.dense.weight[:, neuron] = 0


@pytest.mark.parametrize("name", sorted(CRITERIA))
def test_criterion_ranks_planted_useless_units_last(name):
    teacher = tiny_encoder(seed=3)
    student = copy.deepcopy(teacher)
    plant_useless(student, layer=1, head=2, neuron=17)
    loss = DistillLoss(teacher, PruneConfig(contrastive_loss_weight=0.5))
    batches = [random_batch(seed=s) for s in range(3)]
    sal = get_criterion(name)(student, batches, loss)
    heads, neurons = sal.heads[1], sal.neurons[1]
    assert int(torch.argmin(heads)) == 2
    assert int(torch.argmin(neurons)) == 17
    # the planted units are strictly below every real one
    assert heads[2] < torch.cat([heads[:2], heads[3:]]).min()
    assert neurons[17] < torch.cat([neurons[:17], neurons[18:]]).min()
    assert student.head_gates is None and student.neuron_gates is None  # gates removed after scoring


def test_data_criteria_have_signal_while_student_equals_teacher():
    """The contrastive term keeps gradients alive at step 0, where student == teacher."""
    teacher = tiny_encoder(seed=4)
    loss = DistillLoss(teacher, PruneConfig())
    sal = get_criterion("taylor")(copy.deepcopy(teacher), [random_batch()], loss)
    assert all(float(h.sum()) > 0 for h in sal.heads)


def test_unknown_criterion_is_a_clear_error():
    with pytest.raises(ValueError, match="choose one of"):
        get_criterion("random")


def test_cubic_schedule_formula():
    # Zhu & Gupta: s_t = s_f + (s_i - s_f)(1 - t/n)^3
    assert cubic_sparsity(0, 4, 0.5) == 0.0
    assert cubic_sparsity(4, 4, 0.5) == pytest.approx(0.5)
    assert cubic_sparsity(1, 4, 0.5) == pytest.approx(0.5 * (1 - 0.75**3))
    assert cubic_sparsity(2, 4, 0.8, initial=0.2) == pytest.approx(0.8 - 0.6 * 0.125)
    s = [cubic_sparsity(t, 5, 0.6) for t in range(1, 6)]
    assert s == sorted(s) and s[-1] == pytest.approx(0.6)
    increments = [b - a for a, b in zip([0.0, *s], s)]
    assert increments == sorted(increments, reverse=True)  # big cuts first
    with pytest.raises(ValueError):
        cubic_sparsity(5, 4, 0.5)


def test_layers_go_at_the_first_step_that_asks_for_any_part_of_one():
    assert [layers_to_drop(t, 6, 1 / 6, 6) for t in range(1, 7)] == [1] * 6
    assert [layers_to_drop(t, 6, 1 / 3, 6) for t in range(1, 7)] == [1, 2, 2, 2, 2, 2]  # cubic: 0.84, 1.41, ...
    assert [layers_to_drop(t, 3, 0.5, 6) for t in range(1, 4)] == [3, 3, 3]  # 2.11 rounds up
    assert [layers_to_drop(t, 2, 0.34, 3) for t in range(1, 3)] == [1, 1]
    assert [layers_to_drop(t, 6, 0.1, 6) for t in range(1, 7)] == [0] * 6  # under one whole layer: none
    assert [layers_to_drop(t, 4, 0.0, 12) for t in range(1, 5)] == [0] * 4


def test_plan_step_respects_targets_and_floors():
    model = tiny_encoder()
    sal = get_criterion("magnitude")(model, [], None)
    keep = plan_step(model, sal, heads_total=5, ffn_total=40, layers_total=2, min_heads=1, min_ffn=4)
    assert len(keep.layers) == 2
    assert sum(map(len, keep.heads)) == 5
    assert sum(map(len, keep.neurons)) == 40
    assert all(len(h) >= 1 for h in keep.heads) and all(len(n) >= 4 for n in keep.neurons)


def test_layer_dropping_drops_the_least_salient_layer():
    model = tiny_encoder()
    sal = get_criterion("magnitude")(model, [], None)
    sal.layers[1] = -1.0
    keep = plan_step(model, sal, heads_total=12, ffn_total=192, layers_total=2, min_heads=1, min_ffn=1)
    assert keep.layers == [0, 2]


def test_presets_validate_and_reject_bad_ratios():
    assert preset("fast").criterion in CRITERIA
    assert preset("default", head_sparsity=0.2).head_sparsity == 0.2
    with pytest.raises(ValueError):
        PruneConfig(head_sparsity=1.0)
    with pytest.raises(ValueError):
        PruneConfig(ffn_sparsity=-0.1)
    with pytest.raises(ValueError, match="unknown preset"):
        preset("extreme")
    with pytest.raises(ValueError):
        PruneConfig(unknown_knob=1)


def test_encoder_config_roundtrip_and_counts():
    cfg = EncoderConfig(vocab_size=100, hidden_size=16, head_dim=4, max_position_embeddings=32,
                        layers=(LayerShape(heads=2, ffn=8, source_index=0), LayerShape(heads=4, ffn=3, source_index=3)))
    assert EncoderConfig.from_hf_dict(cfg.to_hf_dict()) == cfg
    model = Encoder(cfg)
    assert sum(p.numel() for p in model.parameters()) == cfg.num_parameters()
    # FLOPs: 2 x MACs of q,k,v,o + attention + FFN, per layer
    assert cfg.flops_per_token(10) == 2 * sum(4 * 16 * 4 * s.heads + 2 * 10 * 4 * s.heads + 2 * 16 * s.ffn
                                              for s in cfg.layers)


def test_training_batches_group_texts_of_similar_length_and_lose_none():
    tok = TextTokenizer(minilm_dir() / "tokenizer.json", 64)
    rng = random.Random(0)
    batch_size = 8
    # Not a multiple of the pool (nor of the batch): a pool of 400, then 27 texts, 3 of them a short batch.
    texts = [" ".join(["word"] * rng.randint(1, 40)) for _ in range(batch_size * BUCKET_BATCHES + 3 * batch_size + 3)]
    gen = _batches(texts, tok, batch_size, seed=0)
    masks = []
    while sum(len(m) for m in masks) < len(texts):  # one pass
        masks.append(next(gen)["attention_mask"].numpy())
    lengths = np.concatenate([m.sum(axis=1) for m in masks])
    assert sorted(lengths.tolist()) == sorted(tok.count(texts))
    padding = 1 - lengths.sum() / sum(m.size for m in masks)
    assert padding < 0.05  # drawn at random, batches of eight of these texts are about 40% padding
    widths = [m.shape[1] for m in masks]
    assert widths != sorted(widths)  # the batches themselves still come in random order


@pytest.mark.parametrize("overrides, words", [
    ({"pruning_steps": 0}, "--pruning-steps: input should be greater than 0, got 0"),
    ({"batch_size": -3}, "--batch-size: input should be greater than 0, got -3"),
    ({"head_sparsity": 1.5}, "--head-sparsity: input should be less than 1, got 1.5"),
    ({"learning_rate": -1.0}, "--learning-rate: input should be greater than 0, got -1.0"),
])
def test_every_preset_override_is_validated_and_named_as_its_flag(overrides, words):
    from service.pruning.config import preset

    with pytest.raises(ValueError, match=re.escape(words)):
        preset("fast", **overrides)
    assert preset("fast", pruning_steps=2).pruning_steps == 2  # a good override still applies


def test_the_cli_reports_a_bad_override_by_flag_and_exits_nonzero(capsys):
    from service.cli import main

    assert main(["prune", "--preset", "fast", "--pruning-steps", "0", "--learning-rate", "-1"]) != 0
    err = capsys.readouterr().err
    assert "--pruning-steps: input should be greater than 0, got 0" in err
    assert "--learning-rate: input should be greater than 0, got -1.0" in err


def test_fidelity_p5_is_nearest_rank_an_observed_cosine():
    from service.pruning.fidelity import fidelity

    angles = np.linspace(0.05, 1.0, 20)  # 20 texts, one cosine each: cos(angle)
    ref = np.tile([1.0, 0.0], (20, 1))
    cand = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    f = fidelity(ref, cand)
    cos = np.cos(angles)
    # nearest rank: ceil(5% of 20) = the smallest value itself; linear would sit between the two smallest
    assert f.p5_cosine == pytest.approx(cos.min(), abs=1e-12) and f.p5_cosine in set(cos.tolist())
    assert f.mean_cosine == pytest.approx(cos.mean()) and f.n_texts == 20
