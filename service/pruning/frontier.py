"""The speed/fidelity frontier: several pruning configurations, each point measured.

Each point's speed-up is the ratio of dense fp32 to the pruned variant's latency measured
side by side in that point's own build (the manifest's latency table), so points built at
different times stay comparable on a noisy shared machine.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from service.pruning.manifest import Manifest, load_manifest

__all__ = ["FrontierPoint", "frontier_point", "render_frontier"]


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


def frontier_point(artifact_dir: Path, label: str | None = None) -> FrontierPoint:
    m: Manifest = load_manifest(artifact_dir)
    lat = {(r.variant, r.batch, r.seq_len): r.median_ms for r in m.latency}
    shipped = f"pruned-{m.pruned.precision}"
    f = m.pruned.fidelity
    hist = m.schedule.get("history", [])
    return FrontierPoint(
        label=label or artifact_dir.name, preset=str(m.config.get("preset")), criterion=m.criterion,
        precision=m.pruned.precision, heads=sum(x.heads for x in m.pruned.layers),
        ffn=sum(x.ffn for x in m.pruned.layers), layers=len(m.pruned.layers),
        distill_steps=sum(h.get("distill_steps", 0) for h in hist),
        speedup_b1_t128=lat[("dense", 1, 128)] / lat[(shipped, 1, 128)],
        speedup_b32_t128=lat[("dense", 32, 128)] / lat[(shipped, 32, 128)],
        mean_cosine=f.mean_cosine, p5_cosine=f.p5_cosine, recall_at_10=f.recall_at_10,
        build_minutes=m.build_seconds / 60, hardware=m.latency_hardware,
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
    ax.legend(loc="lower left")
    ax.grid(alpha=0.3)
    png = out_dir / "frontier.png"
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return js, md, png
