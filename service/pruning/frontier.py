"""The speed/fidelity frontier: several pruning configurations, each point measured.

Fidelity comes from each point's manifest (held-out text, measured when it was built).
Speed is measured now, for every point in one interleaved run against the dense fp32 graph
(all points of one model share it), so the speed-ups are side by side on the same machine
state rather than taken from builds made at different times.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from service.pruning.manifest import Manifest

__all__ = ["FrontierPoint", "measure_frontier", "render_frontier"]


class FrontierPoint(BaseModel):
    model_config = ConfigDict(extra="forbid")

    label: str
    preset: str
    criterion: str
    precision: str
    heads: int
    ffn: int
    layers: int
    distill_steps: int
    speedup_b1_t128: float
    speedup_b32_t128: float
    mean_cosine: float
    p5_cosine: float
    recall_at_10: float
    build_minutes: float
    hardware: str


CELLS = ((1, 128), (32, 128))


def measure_frontier(artifact_dirs: list[Path], runs: int = 10, threads: int | None = None) -> list[FrontierPoint]:
    """One interleaved latency run: the first directory's dense graph and every point's pruned graph."""
    import os

    from service.bench import hardware_description, interleaved_latency
    from service.model.onnx_runtime import make_session, run_session
    from service.pruning.manifest import verify_artifacts

    threads = threads or os.cpu_count() or 1
    labels = [d.name for d in artifact_dirs]
    if len(set(labels)) != len(labels):
        raise ValueError(f"artifact directories need distinct names, got {labels}")
    manifests = {label: verify_artifacts(d) for label, d in zip(labels, artifact_dirs)}
    sessions = {"dense": make_session(artifact_dirs[0] / manifests[labels[0]].dense.onnx_file, threads)}
    sessions.update({label: make_session(d / manifests[label].pruned.onnx_file, threads)
                     for label, d in zip(labels, artifact_dirs)})
    rows = interleaved_latency({k: partial(run_session, s) for k, s in sessions.items()}, CELLS, runs)
    speedup = {(r.variant, r.batch): r.speedup_vs_dense for r in rows}
    hardware = f"{hardware_description()}; ONNX Runtime CPU, {threads} threads"
    return [frontier_point(manifests[label], label, speedup[(label, 1)], speedup[(label, 32)], hardware)
            for label in labels]


def frontier_point(m: Manifest, label: str, speedup_b1: float, speedup_b32: float, hardware: str) -> FrontierPoint:
    f = m.pruned.fidelity
    hist = m.schedule.get("history", [])
    return FrontierPoint(
        label=label, preset=str(m.config.get("preset")), criterion=m.criterion,
        precision=m.pruned.precision, heads=sum(x.heads for x in m.pruned.layers),
        ffn=sum(x.ffn for x in m.pruned.layers), layers=len(m.pruned.layers),
        distill_steps=sum(h.get("distill_steps", 0) for h in hist),
        speedup_b1_t128=speedup_b1, speedup_b32_t128=speedup_b32,
        mean_cosine=f.mean_cosine, p5_cosine=f.p5_cosine, recall_at_10=f.recall_at_10,
        build_minutes=m.build_seconds / 60, hardware=hardware,
    )


def render_frontier(points: list[FrontierPoint], out_dir: Path) -> tuple[Path, Path, Path]:
    """Write frontier.json, frontier.md (a table) and frontier.png (speed-up vs mean cosine)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    js = out_dir / "frontier.json"
    js.write_text(json.dumps([p.model_dump() for p in points], indent=2) + "\n")
    rows = ["| point | criterion | heads | FFN | layers | precision | distil steps | speed-up b1×128 | "
            "speed-up b32×128 | mean cos | p5 cos | R@10 | build min |", "|" + "---|" * 13]
    for p in sorted(points, key=lambda p: p.speedup_b1_t128):
        rows.append(f"| {p.label} | {p.criterion} | {p.heads}/72 | {p.ffn}/9216 | {p.layers}/6 | {p.precision} | "
                    f"{p.distill_steps} | {p.speedup_b1_t128:.2f}x | {p.speedup_b32_t128:.2f}x | "
                    f"{p.mean_cosine:.3f} | {p.p5_cosine:.3f} | {p.recall_at_10:.3f} | {p.build_minutes:.1f} |")
    md = out_dir / "frontier.md"
    md.write_text("\n".join(rows) + "\n")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for crit, marker in (("magnitude", "s"), ("taylor", "o"), ("fisher", "^")):
        pts = [p for p in points if p.criterion == crit]
        if pts:
            ax.scatter([p.speedup_b1_t128 for p in pts], [p.mean_cosine for p in pts], marker=marker, s=60,
                       label=crit)
            for p in pts:
                ax.annotate(p.label, (p.speedup_b1_t128, p.mean_cosine), fontsize=7, xytext=(4, 3),
                            textcoords="offset points")
    ax.axhline(0.95, ls="--", c="grey", lw=0.8)
    ax.axvline(2.5, ls="--", c="grey", lw=0.8)
    ax.axhline(0.97, ls=":", c="green", lw=0.8)
    ax.axvline(4.0, ls=":", c="green", lw=0.8)
    ax.set_xlabel("speed-up vs dense fp32 (ONNX Runtime CPU, batch 1, 128 tokens)")
    ax.set_ylabel("mean cosine to dense (held-out everyday English)")
    ax.set_title("twinserve pruning frontier (grey: issue target, green: project goal)")
    ax.legend(loc="center right")
    ax.grid(alpha=0.3)
    png = out_dir / "frontier.png"
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return js, md, png
