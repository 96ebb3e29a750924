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

from service._schema import Strict
from service.artifacts.manifest import Manifest

__all__ = ["FrontierPoint", "measure_frontier", "render_candidates", "render_frontier"]


class FrontierPoint(Strict):
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

    from service._platform import hardware_description
    from service.artifacts.manifest import verify_artifacts
    from service.bench import interleaved_latency
    from service.model.onnx_runtime import make_session, run_session

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


def render_candidates(manifest: Manifest, out_dir: Path) -> tuple[Path, Path]:
    """The job's own frontier (every candidate of one build, measured side by side): ``frontier.md``
    (a table: fidelity on every held-out set, median ms and speed-up per cell) and ``frontier.png``
    (speed-up vs dense fp32 at 1x128 and 32x32 against the worst held-out set's mean cosine)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cands = manifest.frontier
    cv = manifest.cpu_variant
    sets = list(cands[0].fidelity)
    cells = list(cands[0].latency_ms)
    head = ["candidate", *(f"{s} cos / p5 / R@10" for s in sets), *(f"{c} ms (vs dense fp32)" for c in cells),
            "meets floor"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in cands:
        name = f"**{c.name}** (published)" if cv is not None and c.name == cv.candidate else c.name
        fid = [c.fidelity[s] for s in sets]
        rows.append("| " + " | ".join([
            name, *(f"{f.mean_cosine:.4f} / {f.p5_cosine:.3f} / {f.recall_at_10:.3f}" for f in fid),
            *(f"{c.latency_ms[x]:.2f} ({c.speedup_vs_dense_fp32[x]:.2f}x)" for x in cells),
            "yes" if c.meets_floor else "no"]) + " |")
    notes = [f"Hardware: {manifest.latency_hardware}. Held-out sets: "
             + ", ".join(f"{k} ({n} texts)" for k, n in manifest.corpus.heldout_sets.items()) + "."]
    if cv is not None:
        notes.append(f"CPU variant: {cv.summary}.")
    md = out_dir / "frontier.md"
    md.write_text("\n".join(rows) + "\n\n" + "\n\n".join(notes) + "\n")

    plot_cells = [x for x in ("1x128", "32x32") if x in cells] or cells[:1]
    fig, axes = plt.subplots(1, len(plot_cells), figsize=(6 * len(plot_cells), 4.5), squeeze=False)
    markers = {"onnxruntime": "o", "openvino": "s"}
    colours = {"dense": "tab:blue", "pruned": "tab:orange"}
    for ax, cell in zip(axes[0], plot_cells):
        for c in cands:
            worst = min(f.mean_cosine for f in c.fidelity.values())
            ax.scatter(c.speedup_vs_dense_fp32[cell], worst, marker=markers[c.runtime], c=colours[c.model],
                       s=120 if cv is not None and c.name == cv.candidate else 50,
                       edgecolors="black" if cv is not None and c.name == cv.candidate else "none")
            ax.annotate(f"{'ORT' if c.runtime == 'onnxruntime' else 'OV'} {c.precision}", (c.speedup_vs_dense_fp32[cell], worst), fontsize=7,
                        xytext=(4, 3), textcoords="offset points")
        if cv is not None:
            ax.axhline(cv.min_mean_cosine, ls="--", c="grey", lw=0.8)
        ax.set_xlabel(f"speed-up vs dense fp32 on ONNX Runtime ({cell})")
        ax.set_ylabel("mean cosine to dense, worst held-out set")
        ax.grid(alpha=0.3)
        ax.set_title(f"{manifest.name}: {cell} (blue dense, orange pruned; o ORT, s OpenVINO)", fontsize=9)
    png = out_dir / "frontier.png"
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return md, png
