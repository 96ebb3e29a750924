"""``manifest.json``: what a published artifact directory holds, how it was made and how good it is.

The server calls :func:`verify_artifacts` at load and refuses to serve a directory whose
files do not match the hashes recorded here.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import ConfigDict, Field, PositiveInt

from service._schema import Strict

__all__ = [
    "ArtifactIntegrityError",
    "CandidateMeasurement",
    "CorpusInfo",
    "CpuVariant",
    "Fidelity",
    "LatencyRow",
    "Manifest",
    "VariantInfo",
    "MANIFEST_FILE",
    "file_sha256",
    "hash_directory",
    "load_manifest",
    "verify_artifacts",
    "write_manifest",
]

MANIFEST_FILE = "manifest.json"
SCHEMA_VERSION = 1
# Bookkeeping at the top of a version directory, never part of the artifacts (nor hashed): the
# build's lock, an explicit pin (service.artifacts.versions), and the serving processes' leases in
# versions published before leases moved beside the versions (service.artifacts.versions.lease_root).
BOOKKEEPING = frozenset({".build.lock", ".leases", ".pinned"})



class LayerShape(Strict):
    """Width of one transformer layer."""

    model_config = ConfigDict(frozen=True)

    heads: PositiveInt = Field(description="attention heads kept in this layer")
    ffn: PositiveInt = Field(description="FFN (intermediate) neurons kept in this layer")
    source_index: int = Field(ge=0, description="index of this layer in the original dense model")


class ArtifactIntegrityError(RuntimeError):
    """A published artifact directory is missing, incomplete or altered."""


class Fidelity(Strict):
    """Agreement with the dense model on held-out text the job never trained on."""

    mean_cosine: float = Field(description="mean cosine between this variant's and the dense embeddings")
    p5_cosine: float = Field(description="5th percentile of those cosines (nearest rank)")
    recall_at_10: float = Field(description="mean overlap of the 10 nearest neighbours (dense vs this variant)")
    n_texts: int = Field(ge=1)


class VariantInfo(Strict):
    onnx_file: str
    precision: Literal["fp32", "int8"]
    layers: list[LayerShape]
    parameters: int = Field(description="all parameters, embeddings included")
    encoder_parameters: int = Field(description="parameters of the transformer layers alone")
    flops_per_token: dict[str, int] = Field(description="encoder FLOPs per token, keyed by sequence length")
    fidelity: Fidelity | None = Field(default=None, description="None for the dense reference itself")


class CorpusInfo(Strict):
    source: str = Field(description="wordnet+fortunes, wordnet, file or python-docs")
    path: str | None
    sha256: str
    n_train: int
    n_heldout: int
    note: str = ""
    heldout_sets: dict[str, int] = Field(
        default_factory=dict, description="texts in each held-out set by name (heldout: from the training source; "
                                          "everyday: chatterbot-corpus dialogues, a source never trained on)")


Runtime = Literal["onnxruntime", "openvino"]


class CandidateMeasurement(Strict):
    """One point of the frontier: a model (dense or pruned) on one runtime at one precision."""

    name: str = Field(description="e.g. pruned-openvino-int8")
    model: Literal["dense", "pruned"]
    runtime: Runtime
    precision: Literal["fp32", "bf16", "int8"]
    fidelity: dict[str, Fidelity] = Field(description="to dense fp32, per held-out set")
    latency_ms: dict[str, float] = Field(description="median ms per cell, keyed 'BxT' (batch x tokens)")
    speedup_vs_dense_fp32: dict[str, float] = Field(description="dense fp32 on ONNX Runtime / this, per cell")
    meets_floor: bool


class CpuVariant(Strict):
    """What the CPU replica serves: the runtime's file, and why this candidate was chosen."""

    candidate: str = Field(description="the frontier candidate published (e.g. pruned-openvino-int8)")
    model: Literal["dense", "pruned"] = "pruned"
    file: str = Field(description="the file the runtime loads (ONNX graph or OpenVINO IR .xml)")
    files: list[str] = Field(description="every file of this variant (an IR's .xml and .bin)")
    runtime: Runtime
    precision: Literal["fp32", "bf16", "int8"]
    cpu: str = Field(description="the CPU the choice was measured on")
    cpu_flags: list[str] = Field(description="its instruction-set flags that matter here (AVX-512 VNNI, AMX, ...)")
    threads: int
    meets_floor: bool = Field(description="false: no pruned candidate met the fidelity floor; this is the closest")
    min_mean_cosine: float
    min_recall_at_10: float
    best_quantised_dense: str | None = Field(
        default=None, description="the fastest INT8 dense candidate meeting the floor (else the fastest INT8 dense)")
    speedup_vs_best_quantised_dense: dict[str, float] = Field(default_factory=dict)
    pruning_beats_quantised_dense: bool | None = None
    summary: str = Field(description="the choice in words, as the job and the server print it")

class LatencyRow(Strict):
    variant: str
    batch: int
    seq_len: int
    median_ms: float
    p90_ms: float
    runs: int


class Manifest(Strict):
    schema_version: int = SCHEMA_VERSION
    name: str
    created_at: datetime
    fingerprint: str = Field(description="hash of every input; the same inputs reuse the published directory")
    source_model: str
    source_model_sha256: str
    tokenizer_file: str = "tokenizer.json"
    max_tokens: int
    criterion: str
    schedule: dict
    config: dict
    corpus: CorpusInfo
    dense: VariantInfo
    pruned: VariantInfo
    candidates: dict[str, Fidelity] = Field(
        description="fidelity of every candidate measured on the first held-out set (frontier has both)"
    )
    quantization: dict
    latency_hardware: str
    latency: list[LatencyRow]
    build_seconds: float
    frontier: list[CandidateMeasurement] = Field(
        default_factory=list, description="every candidate (dense and pruned x runtime x precision), side by side")
    cpu_variant: CpuVariant | None = Field(
        default=None, description="what the CPU replica serves; absent in manifests before job version 5, which "
                                  "serve pruned.onnx on ONNX Runtime")
    files: dict[str, str] = Field(description="sha256 of every file in the directory but this one")


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def hash_directory(root: Path) -> dict[str, str]:
    """sha256 of every regular file under ``root`` except the manifest and the bookkeeping, keyed by
    relative path."""
    return {
        p.relative_to(root).as_posix(): file_sha256(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != MANIFEST_FILE and p.relative_to(root).parts[0] not in BOOKKEEPING
    }


def load_manifest(artifact_dir: str | Path) -> Manifest:
    path = Path(artifact_dir) / MANIFEST_FILE
    try:
        return Manifest.model_validate_json(path.read_text())
    except FileNotFoundError:
        raise ArtifactIntegrityError(
            f"{path} not found: build the artifacts first with `twinserve prune`"
        ) from None
    except ValueError as e:
        raise ArtifactIntegrityError(f"{path} is not a valid twinserve manifest: {e}") from None


def write_manifest(manifest: Manifest, artifact_dir: Path) -> Path:
    path = artifact_dir / MANIFEST_FILE
    path.write_text(json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n")
    return path


def verify_artifacts(artifact_dir: str | Path, only: list[str] | None = None) -> Manifest:
    """Check the files named in the manifest (or just ``only``) against their sha256; return the manifest."""
    root = Path(artifact_dir)
    manifest = load_manifest(root)
    names = only if only is not None else list(manifest.files)
    for name in names:
        expected = manifest.files.get(name)
        if expected is None:
            raise ArtifactIntegrityError(f"{root}: manifest.json lists no hash for {name}")
        path = root / name
        if not path.is_file():
            raise ArtifactIntegrityError(f"{root}: {name} is listed in manifest.json but missing")
        actual = file_sha256(path)
        if actual != expected:
            raise ArtifactIntegrityError(
                f"{root}: {name} has sha256 {actual[:12]}…, manifest.json says {expected[:12]}…; "
                "the file was altered or corrupted. Rebuild with `twinserve prune --force`."
            )
    return manifest
