"""Model-level latency and throughput, no HTTP: variants interleaved in one run, medians quoted.

Interleaving (every repetition visits every variant and cell in turn) makes the ratios
between variants robust to the noise of a shared machine: a slow second hits all of them.

Interleaving run by run is wrong for ONNX Runtime, though: after a run its intra-op threads
spin for a while, and the next session's run competes with them. Measured on the 2-core
machine, dense fp32 at batch 1 x 128 tokens took 16.9 ms interleaved run by run against
8.6 ms alone, and the pruned/dense ratio read 1.6-1.85x instead of 2.4x. So each repetition
gives every variant a short block of back-to-back runs after an idle gap (the other
session's threads have gone to sleep), and the order of variants rotates between
repetitions. A block measures what a served replica sees under steady load.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

import numpy as np

from service._platform import hardware_description
from service._schema import Strict
from service.artifacts.manifest import LatencyRow
from service._stats import percentile

__all__ = ["BenchCell", "BenchResult", "interleaved_latency", "run_bench"]

Embed = Callable[[np.ndarray, np.ndarray], np.ndarray]


class BenchCell(LatencyRow):
    """A latency row of the manifest's kind (variant, batch, sequence length, median and p90, runs) and what
    follows from it."""

    texts_per_s: float
    speedup_vs_dense: float | None = None


class BenchResult(Strict):
    created_at: datetime
    artifact_dir: str
    hardware: str
    cpu_count: int
    threads: int
    device: str
    cells: list[BenchCell]


def _inputs(batch: int, seq_len: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, 20000, size=(batch, seq_len), dtype=np.int64)
    ids[:, 0], ids[:, -1] = 101, 102  # [CLS] ... [SEP]
    return ids, np.ones_like(ids)


def interleaved_latency(
    variants: dict[str, Embed],
    cells: Sequence[tuple[int, int]],
    runs: int,
    warmup: int = 2,
    progress: Callable[[], None] | None = None,
    block: int = 3,
    idle_gap_s: float = 0.03,
) -> list[BenchCell]:
    """Time every (variant, batch, seq_len), interleaved in blocks; speed-ups are relative to ``dense``.

    ``runs`` repetitions, each timing ``block`` back-to-back runs per variant and cell after
    ``idle_gap_s`` of idleness, so a cell's median is over ``runs * block`` timings.
    """
    inputs = {cell: _inputs(*cell) for cell in cells}
    names = list(variants)
    times: dict[tuple[str, int, int], list[float]] = {(v, *c): [] for v in names for c in cells}
    for cell in cells:
        for v in names:
            for _ in range(warmup):
                variants[v](*inputs[cell])
    for r in range(runs):
        for cell in cells:
            order = names[r % len(names):] + names[: r % len(names)]  # rotate who goes first
            for v in order:
                time.sleep(idle_gap_s)  # let the previous session's spinning threads go idle
                for _ in range(block):
                    t0 = time.perf_counter()
                    variants[v](*inputs[cell])
                    times[(v, *cell)].append(time.perf_counter() - t0)
        if progress:
            progress()
    out = []
    for (v, b, s), ts in times.items():
        med = float(np.median(ts))
        out.append(BenchCell(variant=v, batch=b, seq_len=s, median_ms=med * 1e3,
                             p90_ms=percentile(ts, 90) * 1e3, runs=len(ts),  # nearest rank
                             texts_per_s=b / med))
    dense = {(c.batch, c.seq_len): c.median_ms for c in out if c.variant == "dense"}
    for c in out:
        if (c.batch, c.seq_len) in dense:
            c.speedup_vs_dense = dense[(c.batch, c.seq_len)] / c.median_ms
    return out


def run_bench(
    artifact_dir: Path,
    *,
    batches: Sequence[int] = (1, 8, 32),
    lengths: Sequence[int] = (16, 32, 128),
    runs: int = 20,
    threads: int | None = None,
    with_torch: bool = False,
    out: Path | None = None,
) -> BenchResult:
    """Bench the artifact's ONNX variants, the CPU variant the manifest names when it is another file
    (``cpu-variant``, e.g. OpenVINO INT8), and optionally the torch dense backend, side by side."""
    from tqdm import tqdm

    from service.artifacts.manifest import verify_artifacts
    from service.model.onnx_runtime import make_session, run_session

    manifest = verify_artifacts(artifact_dir)
    threads = threads or os.cpu_count() or 1
    sessions = {
        "dense": make_session(artifact_dir / manifest.dense.onnx_file, threads),
        "pruned": make_session(artifact_dir / manifest.pruned.onnx_file, threads),
    }
    variants: dict[str, Embed] = {k: partial(run_session, s) for k, s in sessions.items()}
    cv = manifest.cpu_variant
    if cv is not None and cv.file != manifest.pruned.onnx_file:
        from service.model.backends import cpu_variant_backend

        backend = cpu_variant_backend(artifact_dir, threads=threads)
        backend.load()
        variants[f"cpu-variant-{cv.runtime}-{cv.precision}"] = backend.embed_ids
    device = "cpu"
    if with_torch:
        from service.model.backends import TorchBackend

        tb = TorchBackend(artifact_dir, threads=threads)
        tb.load()
        device = tb.device
        variants[f"dense-torch-{tb.device}"] = tb.embed_ids
    cells = [(b, s) for b in batches for s in lengths]
    with tqdm(total=runs, desc="bench", unit="round") as bar:
        rows = interleaved_latency(variants, cells, runs, progress=bar.update)
    result = BenchResult(
        created_at=datetime.now(timezone.utc), artifact_dir=str(artifact_dir),
        hardware=hardware_description(), cpu_count=os.cpu_count() or 1, threads=threads,
        device=device, cells=rows,
    )
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result.model_dump(mode="json"), indent=2) + "\n")
    return result
