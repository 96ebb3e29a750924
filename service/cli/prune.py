"""``twinserve prune``, ``bench``, ``frontier``: the pruning job and model-level measurements (no HTTP)."""

from __future__ import annotations

import argparse
from pathlib import Path

from service.cli._common import CliError, ratio


__all__ = ["add_commands"]


def _cmd_prune(args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    from service.pruning.config import preset
    from service.pruning.job import run_prune
    from service.settings import default_artifact_dir, default_model_dir

    model_dir = (args.model or default_model_dir()).expanduser()
    out = (args.out or default_artifact_dir(args.model)).expanduser()
    overrides = {k: getattr(args, k) for k in (
        "criterion", "head_sparsity", "ffn_sparsity", "layer_sparsity", "pruning_steps",
        "distill_steps_per_prune", "final_distill_steps", "batch_size", "learning_rate", "int8_budget",
        "heldout_texts", "everyday_texts", "calibration_texts", "min_mean_cosine", "min_recall_at_10", "threads",
        "seed")}
    if args.runtimes:
        overrides["runtimes"] = tuple(args.runtimes)
    try:
        cfg = preset(args.preset, **overrides)
    except ValueError as e:
        raise CliError(str(e)) from None
    if args.keep_versions < 1:
        raise CliError(f"--keep-versions must be at least 1 (the current version), got {args.keep_versions}")
    result = run_prune(model_dir, out, cfg, corpus_path=args.corpus, preset_name=args.preset, force=args.force,
                       keep_versions=args.keep_versions)
    m = result.manifest
    table = Table(title=f"twinserve prune: {m.name} ({m.config.get('preset')}, {m.criterion})")
    for col in ("variant", "precision", "layers", "heads", "FFN", "params", "GFLOP/tok@128", "mean cos",
                "p5 cos", "R@10"):
        table.add_column(col, justify="right")
    for name, v in (("dense", m.dense), ("pruned", m.pruned)):
        f = v.fidelity
        table.add_row(name, v.precision, str(len(v.layers)), str(sum(x.heads for x in v.layers)),
                      str(sum(x.ffn for x in v.layers)), f"{v.parameters / 1e6:.1f}M",
                      f"{v.flops_per_token['128'] / 1e9:.3f}",
                      *(("1", "1", "1") if f is None else
                        (f"{f.mean_cosine:.4f}", f"{f.p5_cosine:.4f}", f"{f.recall_at_10:.3f}")))
    console = Console(stderr=True, width=130)
    console.print(table)
    fr = Table(title=f"frontier: fidelity to dense fp32 and median ms, side by side ({m.latency_hardware})")
    sets = list(m.frontier[0].fidelity) if m.frontier else []
    cells = list(m.frontier[0].latency_ms) if m.frontier else []
    for col in ("candidate", *(f"{s} cos / R@10" for s in sets), *(f"{c} ms" for c in cells), "floor"):
        fr.add_column(col, justify="right")
    for c in m.frontier:
        fr.add_row(c.name, *(f"{c.fidelity[s].mean_cosine:.4f} / {c.fidelity[s].recall_at_10:.3f}" for s in sets),
                   *(f"{c.latency_ms[x]:.2f} ({c.speedup_vs_dense_fp32[x]:.2f}x)" for x in cells),
                   "yes" if c.meets_floor else "no")
    console.print(fr)
    if m.cpu_variant is not None:
        console.print(f"CPU variant: {m.cpu_variant.summary}")
    print(f"artifacts {'reused' if result.reused else 'published'} at {out} (manifest: {out / 'manifest.json'})")


def _cmd_bench(args: argparse.Namespace) -> None:
    from service.bench import run_bench
    from service.settings import default_artifact_dir

    art = (args.artifacts or default_artifact_dir()).expanduser()
    out = args.out or Path("results") / "bench.json"
    result = run_bench(art, batches=args.batch, lengths=args.tokens, runs=args.runs, threads=args.threads,
                       with_torch=args.torch, out=out)
    print(f"{'variant':>20} {'batch':>5} {'tokens':>6} {'median ms':>10} {'texts/s':>9} {'vs dense':>8}")
    for c in sorted(result.cells, key=lambda c: (c.batch, c.seq_len, c.variant)):
        sp = f"{c.speedup_vs_dense:.2f}x" if c.speedup_vs_dense else "-"
        print(f"{c.variant:>20} {c.batch:>5} {c.seq_len:>6} {c.median_ms:>10.2f} {c.texts_per_s:>9.1f} {sp:>8}")
    print(f"bench results written to {out} ({result.hardware})")


def _cmd_frontier(args: argparse.Namespace) -> None:
    from service.pruning.frontier import measure_frontier, render_frontier

    try:
        points = measure_frontier([Path(d).expanduser() for d in args.artifacts], runs=args.runs)
    except ValueError as e:
        raise CliError(str(e)) from None
    paths = render_frontier(points, args.out)
    print((args.out / "frontier.md").read_text())
    print("frontier written to " + ", ".join(str(p) for p in paths))


def add_commands(sub) -> None:
    pr = sub.add_parser("prune", help="build the pruned, distilled, INT8 variant (writes artifacts/<model>/)",
                        description="Score, remove and distil heads, FFN neurons and layers on a cubic schedule, "
                                    "export dense and pruned to ONNX Runtime and OpenVINO, fp32 and INT8, measure every "
                                    "candidate's "
                                    "fidelity (two held-out sets) and latency side by side, publish the fastest "
                                    "pruned candidate meeting the floor as the CPU variant, and write "
                                    "artifacts/<model>/ atomically (manifest.json with the frontier, tokenizer, "
                                    "dense/ and pruned/ safetensors, dense.onnx, pruned.onnx, and the CPU "
                                    "variant's files, e.g. pruned-openvino.xml/.bin).")
    pr.add_argument("--model", type=Path, help="BERT-family checkpoint directory (default: bundled all-MiniLM-L6-v2)")
    pr.add_argument("--corpus", type=Path, help="text corpus, one text per line (default: WordNet sentences)")
    pr.add_argument("--out", type=Path, help="output directory (default: artifacts/<model-name>)")
    pr.add_argument("--preset", default="default", choices=["fast", "default", "aggressive"])
    pr.add_argument("--criterion", choices=["magnitude", "taylor", "fisher"])
    pr.add_argument("--head-sparsity", type=ratio, help="fraction of heads removed, [0, 1)")
    pr.add_argument("--ffn-sparsity", type=ratio, help="fraction of FFN neurons removed, [0, 1)")
    pr.add_argument("--layer-sparsity", type=ratio, help="fraction of layers removed, [0, 1)")
    pr.add_argument("--pruning-steps", type=int)
    pr.add_argument("--distill-steps-per-prune", type=int)
    pr.add_argument("--final-distill-steps", type=int)
    pr.add_argument("--batch-size", type=int)
    pr.add_argument("--learning-rate", type=float)
    pr.add_argument("--int8-budget", type=float, help="max mean-cosine drop INT8 may cost before fp32 is kept")
    pr.add_argument("--heldout-texts", type=int)
    pr.add_argument("--everyday-texts", type=int, help="texts of the second held-out set (chatterbot-corpus; 0: none)")
    pr.add_argument("--runtimes", nargs="+", choices=["onnxruntime", "openvino"],
                    help="CPU runtimes measured for the frontier (default: both)")
    pr.add_argument("--calibration-texts", type=int, help="training texts calibrating NNCF INT8 (OpenVINO)")
    pr.add_argument("--min-mean-cosine", type=float,
                    help="fidelity floor for the CPU variant: mean cosine on every held-out set (default 0.97)")
    pr.add_argument("--min-recall-at-10", type=float,
                    help="fidelity floor for the CPU variant: recall@10 on every held-out set (default 0.85)")
    pr.add_argument("--threads", type=int)
    pr.add_argument("--seed", type=int)
    pr.add_argument("--force", action="store_true", help="rebuild even if the same inputs were published")
    pr.add_argument("--keep-versions", type=int, default=3,
                    help="published versions kept after publishing (default 3), besides any a running server "
                         "leases or a person pinned (`twinserve artifacts`)")
    pr.set_defaults(func=_cmd_prune)

    be = sub.add_parser("bench", help="model-level latency of the variants, interleaved (writes results/bench.json)")
    be.add_argument("--artifacts", type=Path, help="artifact directory (default: artifacts/all-MiniLM-L6-v2)")
    be.add_argument("--out", type=Path, help="JSON output (default: results/bench.json)")
    be.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32])
    be.add_argument("--tokens", type=int, nargs="+", default=[16, 32, 128])
    be.add_argument("--runs", type=int, default=10, help="repetitions; each times a block of 3 back-to-back runs")
    be.add_argument("--threads", type=int)
    be.add_argument("--torch", action="store_true", help="also time the torch dense backend (CUDA when present)")
    be.set_defaults(func=_cmd_bench)

    fr = sub.add_parser("frontier", help="speed/fidelity table and plot from several artifact directories: "
                                         "fidelity from their manifests, speed measured now in one interleaved "
                                         "run (writes results/frontier.{json,md,png})")
    fr.add_argument("artifacts", nargs="+", help="artifact directories built by `twinserve prune`")
    fr.add_argument("--out", type=Path, default=Path("results"), help="output directory (default: results)")
    fr.add_argument("--runs", type=int, default=10, help="latency repetitions (blocks of 3 runs each)")
    fr.set_defaults(func=_cmd_frontier)
