"""``twinserve prune``: score -> remove -> distil (repeat on a cubic schedule) -> export ->
quantise -> verify -> publish.

Publishing is :mod:`service.artifacts`' job: the build happens in a locked temporary sibling
directory; on success it is fsynced, renamed to a versioned sibling, and the output path (a
symbolic link) is switched to it with one ``os.replace``; the newest ``keep_versions`` versions
and every version a server holds are kept. A crash at any point leaves the last published
artifacts as they were, and a half-built directory is never at the output path.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import random
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import numpy as np
import torch

from service._platform import cpu_flags, hardware_description
from service.artifacts.manifest import (
    ArtifactIntegrityError,
    CandidateMeasurement,
    CorpusInfo,
    CpuVariant,
    LatencyRow,
    Manifest,
    VariantInfo,
    file_sha256,
    hash_directory,
    verify_artifacts,
    write_manifest,
)
from service.artifacts.publishing import DEFAULT_KEEP_VERSIONS, PublishError, building, publish, remove_orphans
from service.bench import interleaved_latency
from service.model.encoder import Encoder, ModelLoadError, load_encoder, save_encoder
from service.model.onnx_runtime import make_session, run_session
from service.model.openvino_runtime import OpenVinoModel, precision_hint
from service.model.openvino_runtime import available as openvino_available
from service.model.tokenizer import TextTokenizer
from service.pruning.config import PruneConfig
from service.pruning.corpus import Corpus, load_corpus
from service.pruning.criteria import get_criterion
from service.pruning.distill import DistillLoss, distill
from service.pruning.export import export_onnx, export_openvino, fused_ops, quantize_int8
from service.pruning.fidelity import fidelity
from service.pruning.schedule import cubic_sparsity, layers_to_drop, plan_step
from service.pruning.select import meets_floor, select_cpu_variant
from service.pruning.surgery import prune_encoder

__all__ = ["PruneError", "PruneResult", "run_prune"]

JOB_VERSION = "6"  # bump when the job's output changes for the same inputs (6: training batches keep the remainder)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
LATENCY_CELLS = ((1, 16), (1, 128), (32, 32))
REFERENCE = "dense-onnxruntime-fp32"  # what fidelity and speed-ups are measured against
MAX_TOKENS = 256
BUCKET_BATCHES = 50  # batches whose texts are sorted by length together (see _batches)


class PruneError(RuntimeError):
    """The job cannot run with these inputs; the message says what to change."""


def _say(msg: str) -> None:
    print(f"[twinserve prune] {msg}", file=sys.stderr, flush=True)


def _model_sha256(model_dir: Path) -> str:
    h = hashlib.sha256()
    for name in ("config.json", "model.safetensors", "pytorch_model.bin"):
        if (model_dir / name).is_file():
            h.update(name.encode() + file_sha256(model_dir / name).encode())
    return h.hexdigest()


def _check_output_writable(out: Path) -> None:
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        probe = parent / f".{out.name}.probe-{uuid.uuid4().hex}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise PruneError(f"cannot write the output directory {out}: {e.strerror or e}") from None
    if out.exists() and not out.is_symlink() and any(out.iterdir()) and not (out / "manifest.json").is_file():
        raise PruneError(f"{out} exists and is not a twinserve artifact directory; choose another --out")


def _batches(texts: list[str], tok: TextTokenizer, batch_size: int, seed: int) -> Iterator[dict]:
    """Endless training batches, grouped by length.

    Each batch is padded to its longest text. Drawn at random from WordNet, batches of 32 were
    two-thirds padding (32% real tokens); so each pool of ``BUCKET_BATCHES`` batches' worth of
    shuffled texts is sorted by token count, cut into batches, and the batches go out in random
    order (the ``group_by_length`` of Hugging Face's Trainer).
    """
    rng = random.Random(seed)
    order = list(range(len(texts)))
    batch_size = min(batch_size, len(texts))
    pool = batch_size * BUCKET_BATCHES
    while True:
        rng.shuffle(order)
        for start in range(0, len(order), pool):
            chunk = [texts[j] for j in order[start : start + pool]]
            lengths = tok.count(chunk)
            chunk = [chunk[i] for i in sorted(range(len(chunk)), key=lengths.__getitem__)]
            groups = [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]  # the remainder too
            rng.shuffle(groups)
            for group in groups:
                b = tok(group)
                yield {"input_ids": torch.from_numpy(b.input_ids), "attention_mask": torch.from_numpy(b.attention_mask)}


def _embed(run: Callable[[np.ndarray, np.ndarray], np.ndarray], texts: list[str], tok: TextTokenizer) -> np.ndarray:
    out = []
    for i in range(0, len(texts), 64):
        b = tok(texts[i : i + 64])
        out.append(run(b.input_ids, b.attention_mask))
    return np.concatenate(out)


def _calibration_batches(texts: list[str], tok: TextTokenizer, n: int, seed: int) -> list[tuple]:
    """``n`` training texts in batches of 8 (``input_ids``, ``attention_mask``), for NNCF."""
    sample = random.Random(seed).sample(texts, min(n, len(texts)))
    return [(b.input_ids, b.attention_mask) for b in (tok(sample[i : i + 8])
                                                      for i in range(0, len(sample), 8))]


def _candidates(teacher: Encoder, student: Encoder, tmp: Path, scratch: Path, cfg: PruneConfig, corpus: Corpus,
                tok: TextTokenizer, threads: int):
    """Export every candidate (dense and pruned x runtime x precision), load each and measure its
    fidelity to dense fp32 on every held-out set. Returns (fidelity by candidate, runners by
    candidate, files by candidate, fusion counts, the ONNX Runtime INT8 decision for pruned.onnx)."""
    _say("exporting ONNX (fused for ONNX Runtime) and quantising to INT8 (dynamic, per-channel)")
    files: dict[str, list[Path]] = {
        REFERENCE: [export_onnx(teacher, tmp / "dense.onnx")],
        "pruned-onnxruntime-fp32": [export_onnx(student, scratch / "pruned-fp32.onnx")],
    }
    fusion = {"dense": fused_ops(files[REFERENCE][0]), "pruned-fp32": fused_ops(files["pruned-onnxruntime-fp32"][0])}
    files["dense-onnxruntime-int8"] = [quantize_int8(files[REFERENCE][0], scratch / "dense-int8.onnx")]
    files["pruned-onnxruntime-int8"] = [quantize_int8(files["pruned-onnxruntime-fp32"][0],
                                                      scratch / "pruned-int8.onnx")]
    n_cal = 0
    use_openvino = "openvino" in cfg.runtimes
    if use_openvino and not openvino_available():
        _say("note: OpenVINO is not installed (pip install openvino nncf); measuring ONNX Runtime alone")
        use_openvino = False
    if use_openvino:
        fp = "bf16" if precision_hint() == "bf16" else "fp32"
        cal = _calibration_batches(corpus.train, tok, cfg.calibration_texts, cfg.seed)
        n_cal = sum(len(b[0]) for b in cal)
        _say(f"exporting plain ONNX for OpenVINO ({fp}) and quantising with NNCF on {n_cal} training texts")
        for name, model in (("dense", teacher), ("pruned", student)):
            plain = export_onnx(model, scratch / f"{name}-plain.onnx", fuse=False)
            for prec, calibration in ((fp, None), ("int8", cal)):
                xml = export_openvino(plain, scratch / f"{name}-openvino-{prec}.xml", calibration)
                files[f"{name}-openvino-{prec}"] = [xml, xml.with_suffix(".bin")]
    runners: dict[str, Callable] = {}
    for name, paths in files.items():
        if name.split("-")[1] == "openvino":
            runners[name] = OpenVinoModel(paths[0], threads)
        else:
            runners[name] = partial(run_session, make_session(paths[0], threads))

    sets = corpus.heldout_sets
    _say("measuring fidelity on " + ", ".join(f"{len(v)} {k}" for k, v in sets.items()) + " held-out texts")
    ref = {k: _embed(runners[REFERENCE], texts, tok) for k, texts in sets.items()}
    fid = {name: {k: fidelity(ref[k], _embed(run, texts, tok)) for k, texts in sets.items()}
           for name, run in runners.items()}
    int8_cost = max(fid["pruned-onnxruntime-fp32"][k].mean_cosine - fid["pruned-onnxruntime-int8"][k].mean_cosine
                    for k in sets)
    precision = "int8" if int8_cost <= cfg.int8_budget else "fp32"
    _say(f"ONNX Runtime INT8 costs {int8_cost:.4f} mean cosine (budget {cfg.int8_budget}): pruned.onnx is {precision}"
         " unless the published variant is an ONNX Runtime graph")
    ordered = {name: runners[name] for name in sorted(runners, key=lambda n: (n != REFERENCE, n))}
    return fid, ordered, files, fusion, {"cost": int8_cost, "precision": precision, "calibration": n_cal}


def _publish_cpu_variant(name: str, files: dict[str, list[Path]], tmp: Path) -> list[str]:
    """Copy the chosen candidate's runtime files into the artifact directory; their names there."""
    if name.split("-")[1] == "onnxruntime":
        return ["pruned.onnx"]  # written by the caller: the pruned ONNX graph is always there
    out = []
    for src in files[name]:
        dst = f"pruned-openvino{src.suffix}"
        shutil.copy2(src, tmp / dst)
        out.append(dst)
    return out


class PruneResult:
    def __init__(self, out: Path, manifest: Manifest, reused: bool):
        self.out, self.manifest, self.reused = out, manifest, reused


def run_prune(
    model_dir: Path,
    out: Path,
    cfg: PruneConfig,
    *,
    corpus_path: Path | None = None,
    preset_name: str = "custom",
    force: bool = False,
    name: str | None = None,
    keep_versions: int = DEFAULT_KEEP_VERSIONS,
) -> PruneResult:
    t_start = time.time()
    threads = cfg.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    torch.manual_seed(cfg.seed)

    try:
        teacher = load_encoder(model_dir)
    except ModelLoadError as e:
        raise PruneError(str(e)) from None
    if not (model_dir / "tokenizer.json").is_file():
        raise PruneError(f"{model_dir} has no tokenizer.json (a fast tokenizer file is required)")
    _check_output_writable(out)
    corpus: Corpus = load_corpus(corpus_path, n_heldout=cfg.heldout_texts, max_train=cfg.max_corpus_texts,
                                 seed=cfg.seed, n_everyday=cfg.everyday_texts)
    if corpus.note:
        _say(f"note: {corpus.note}")

    model_sha256 = _model_sha256(model_dir)
    fingerprint = hashlib.sha256(json.dumps({
        "job": JOB_VERSION, "model": model_sha256, "corpus": corpus.sha256,
        "config": cfg.model_dump(mode="json", exclude={"threads", "latency_runs"}),
    }, sort_keys=True).encode()).hexdigest()
    try:
        remove_orphans(out)
    except PublishError as e:
        raise PruneError(str(e)) from None
    if not force and (out / "manifest.json").is_file():
        try:
            published = verify_artifacts(out)
            if published.fingerprint == fingerprint:
                _say(f"{out} already holds artifacts built from these inputs; reusing them (--force rebuilds)")
                return PruneResult(out, published, reused=True)
        except ArtifactIntegrityError as e:
            _say(f"published artifacts fail verification ({e}); rebuilding")

    with building(out) as tmp:
        manifest = _build(teacher, model_dir, model_sha256, tmp, cfg, corpus, fingerprint, preset_name, threads,
                          t_start, name or out.name)
        try:
            publish(tmp, out, fingerprint, keep_versions=keep_versions)
        except PublishError as e:
            raise PruneError(str(e)) from None
    return PruneResult(out, manifest, reused=False)


def _prune_and_distill(teacher: Encoder, cfg: PruneConfig, corpus: Corpus, tok: TextTokenizer) -> tuple[Encoder, list]:
    from tqdm import tqdm

    criterion = get_criterion(cfg.criterion)
    loss_fn = DistillLoss(teacher, cfg)
    batches = _batches(corpus.train, tok, cfg.batch_size, cfg.seed)
    student = copy.deepcopy(teacher)
    dense = teacher.config
    n_heads = sum(s.heads for s in dense.layers)
    n_ffn = sum(s.ffn for s in dense.layers)
    history = []
    for step in range(1, cfg.pruning_steps + 1):
        s_heads = cubic_sparsity(step, cfg.pruning_steps, cfg.head_sparsity)
        s_ffn = cubic_sparsity(step, cfg.pruning_steps, cfg.ffn_sparsity)
        n_drop = layers_to_drop(step, cfg.pruning_steps, cfg.layer_sparsity, dense.num_layers)
        score_batches = [next(batches) for _ in range(cfg.score_batches)]
        saliency = criterion(student, score_batches, loss_fn)
        keep = plan_step(
            student, saliency,
            heads_total=round((1 - s_heads) * n_heads), ffn_total=round((1 - s_ffn) * n_ffn),
            layers_total=dense.num_layers - n_drop,
            min_heads=cfg.min_heads_per_layer, min_ffn=cfg.min_ffn_per_layer,
        )
        student = prune_encoder(student, keep)
        shape = student.config
        steps = cfg.final_distill_steps if step == cfg.pruning_steps else cfg.distill_steps_per_prune
        _say(f"step {step}/{cfg.pruning_steps}: {len(shape.layers)} layers, "
             f"{sum(s.heads for s in shape.layers)}/{n_heads} heads, {sum(s.ffn for s in shape.layers)}/{n_ffn} "
             f"FFN neurons ({cfg.criterion}); distilling {steps} steps")
        with tqdm(total=steps, desc=f"distil {step}/{cfg.pruning_steps}", unit="step", file=sys.stderr) as bar:
            def tick(loss: float) -> None:
                bar.update()
                bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

            losses = distill(student, loss_fn, batches, steps, cfg, progress=tick)
        history.append({"step": step, "head_sparsity": s_heads, "ffn_sparsity": s_ffn,
                        "layer_sparsity": n_drop / dense.num_layers,
                        "layers": [s.model_dump() for s in shape.layers], "distill_steps": steps,
                        "final_loss": float(np.mean(losses[-20:])) if losses else None})
    return student, history


def _variant_info(model: Encoder, onnx_file: str, precision: str, fid=None) -> VariantInfo:
    c = model.config
    return VariantInfo(
        onnx_file=onnx_file, precision=precision, layers=list(c.layers),
        parameters=c.num_parameters(), encoder_parameters=c.num_parameters(include_embeddings=False),
        flops_per_token={str(n): c.flops_per_token(n) for n in (16, 128)}, fidelity=fid,
    )


def _build(teacher, model_dir, model_sha256, tmp, cfg, corpus, fingerprint, preset_name, threads, t_start,
           name) -> Manifest:
    for tok_file in TOKENIZER_FILES:
        if (model_dir / tok_file).is_file():
            shutil.copy2(model_dir / tok_file, tmp / tok_file)
    tok_train = TextTokenizer(tmp / "tokenizer.json", cfg.max_train_tokens)
    tok = TextTokenizer(tmp / "tokenizer.json", MAX_TOKENS)

    student, history = _prune_and_distill(teacher, cfg, corpus, tok_train)
    save_encoder(teacher, tmp / "dense")
    save_encoder(student, tmp / "pruned")

    scratch = tmp / ".scratch"
    scratch.mkdir()
    fidelities, measured, files, fusion, ort_precision = _candidates(teacher, student, tmp, scratch, cfg, corpus,
                                                                     tok, threads)
    int8_cost = ort_precision["cost"]
    precision = ort_precision["precision"]

    _say("measuring CPU latency, every candidate interleaved")
    runners = {"dense" if k == REFERENCE else k: v for k, v in measured.items()}
    rows = interleaved_latency(runners, LATENCY_CELLS, cfg.latency_runs)
    for r in rows:
        if r.variant == "dense":
            r.variant = REFERENCE
    floor = dict(min_mean_cosine=cfg.min_mean_cosine, min_recall_at_10=cfg.min_recall_at_10)
    frontier = []
    for cand in measured:
        model, runtime, prec = cand.split("-")
        mine = {f"{r.batch}x{r.seq_len}": r for r in rows if r.variant == cand}
        fid = fidelities[cand]
        frontier.append(CandidateMeasurement(
            name=cand, model=model, runtime=runtime, precision=prec, fidelity=fid,
            latency_ms={c: r.median_ms for c, r in mine.items()},
            speedup_vs_dense_fp32={c: r.speedup_vs_dense for c, r in mine.items()},
            meets_floor=meets_floor(fid, **floor)))
    sel = select_cpu_variant(frontier, **floor)
    _say(sel.summary)
    chosen = sel.chosen
    cv_files = _publish_cpu_variant(chosen.name, files, tmp)
    flags = cpu_flags() or []
    cpu_variant = CpuVariant(
        candidate=chosen.name, model=chosen.model, file=cv_files[0], files=cv_files, runtime=chosen.runtime,
        precision=chosen.precision, cpu=hardware_description(), cpu_flags=flags, threads=threads,
        meets_floor=sel.meets_floor, best_quantised_dense=sel.best_quantised_dense.name if sel.best_quantised_dense
        else None, speedup_vs_best_quantised_dense=sel.speedup_vs_best_quantised_dense,
        pruning_beats_quantised_dense=sel.pruning_beats_quantised_dense, summary=sel.summary, **floor)
    if chosen.runtime == "onnxruntime" and chosen.model == "pruned":
        precision = chosen.precision  # pruned.onnx is the published variant itself
    shutil.copy2(files[f"pruned-onnxruntime-{precision}"][0], tmp / "pruned.onnx")
    shutil.rmtree(scratch)
    candidates = {c.name: next(iter(c.fidelity.values())) for c in frontier if c.name != REFERENCE}

    manifest = Manifest(
        name=name, created_at=datetime.now(UTC), fingerprint=fingerprint,
        source_model=str(model_dir), source_model_sha256=model_sha256, max_tokens=MAX_TOKENS,
        criterion=cfg.criterion,
        schedule={"kind": "cubic (Zhu & Gupta 2017)", "steps": cfg.pruning_steps, "history": history},
        config={"preset": preset_name, **cfg.model_dump(mode="json")},
        corpus=CorpusInfo(source=corpus.source, path=corpus.path, sha256=corpus.sha256,
                          n_train=len(corpus.train), n_heldout=len(corpus.heldout), note=corpus.note,
                          heldout_sets={k: len(v) for k, v in corpus.heldout_sets.items()}),
        dense=_variant_info(teacher, "dense.onnx", "fp32"),
        pruned=_variant_info(student, "pruned.onnx", precision, candidates[f"pruned-onnxruntime-{precision}"]),
        candidates=candidates,
        quantization={"onnxruntime": "dynamic, MatMul and fused Attention weights, per-channel QInt8",
                      "openvino": "NNCF post-training INT8 (transformer preset, SmoothQuant, per-channel weights), "
                                  f"calibrated on {ort_precision['calibration']} training texts",
                      "int8_mean_cosine_cost": int8_cost, "budget": cfg.int8_budget, "pruned_precision": precision,
                      "graph_fusion": fusion},
        latency_hardware=f"{hardware_description()}; flags {' '.join(flags) or 'unknown'}; ONNX Runtime and "
                         f"OpenVINO CPU, {threads} threads",
        latency=[LatencyRow(variant=r.variant, batch=r.batch, seq_len=r.seq_len, median_ms=r.median_ms,
                            p90_ms=r.p90_ms, runs=r.runs) for r in rows],
        build_seconds=time.time() - t_start,
        frontier=frontier,
        cpu_variant=cpu_variant,
        files=hash_directory(tmp),
    )
    from service.pruning.frontier import render_candidates

    render_candidates(manifest, tmp)  # frontier.md and frontier.png beside the manifest, hashed like the rest
    manifest = manifest.model_copy(update={"files": hash_directory(tmp)})
    write_manifest(manifest, tmp)
    return manifest
