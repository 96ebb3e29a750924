"""``twinserve <verb>``: one command line for the whole system."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["main"]


class CliError(Exception):
    """Shown to the user as one line, without a traceback."""


def _ratio(text: str) -> float:
    v = float(text)
    if not 0.0 <= v < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {v}")
    return v


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
        "heldout_texts", "threads", "seed")}
    try:
        cfg = preset(args.preset, **overrides)
    except ValueError as e:
        raise CliError(str(e)) from None
    result = run_prune(model_dir, out, cfg, corpus_path=args.corpus, preset_name=args.preset, force=args.force)
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
    lat = Table(title=f"CPU latency, median ms ({m.latency_hardware})")
    for col in ("variant", "batch", "tokens", "median ms", "speed-up"):
        lat.add_column(col, justify="right")
    dense = {(r.batch, r.seq_len): r.median_ms for r in m.latency if r.variant == "dense"}
    for r in m.latency:
        lat.add_row(r.variant, str(r.batch), str(r.seq_len), f"{r.median_ms:.2f}",
                    f"{dense[(r.batch, r.seq_len)] / r.median_ms:.2f}x")
    console.print(lat)
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


def _weight(text: str) -> float:
    v = float(text)
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {v}")
    return v


def _cmd_serve(args: argparse.Namespace) -> None:
    import os
    import time

    from service.pruning.manifest import MANIFEST_FILE, verify_artifacts
    from service.serving.config import RoutingConfig, ServingConfig, VariantConfig
    from service.settings import default_artifact_dir

    default = default_artifact_dir()
    art = (args.artifacts or default).expanduser()
    if not (art / MANIFEST_FILE).is_file():
        if args.artifacts is not None and art.resolve() != default.resolve():
            raise CliError(f"no artifacts at {art}; build them with `twinserve prune --out {art}`")
        from service.pruning.config import preset
        from service.pruning.job import run_prune
        from service.settings import default_model_dir

        print(f"no artifacts at {art}: building them with the `fast` preset first (a few minutes)", file=sys.stderr)
        run_prune(default_model_dir(), art, preset("fast"), preset_name="fast")
    verify_artifacts(art)  # fail here, in words, before Ray starts

    try:
        cfg = ServingConfig(
            artifact_dir=art,
            dense=VariantConfig(num_cpus=0.5, num_gpus=args.dense_gpus, max_ongoing_requests=32),
            routing=RoutingConfig(weights={"dense": args.dense_weight, "pruned": 1.0 - args.dense_weight},
                                  shadow_fraction=args.shadow_fraction),
        )
    except ValueError as e:
        raise CliError(str(e)) from None

    import signal

    import ray
    from ray import serve

    from service.serving.app import build_app

    def _stop(signum, frame):
        raise KeyboardInterrupt

    # Ctrl-C even where the shell started us with SIGINT ignored; SIGTERM (docker stop) the same way.
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)

    # Logical CPUs are reservations: never fewer than the application asks for, even on 2 cores.
    wanted = cfg.dense.num_cpus + cfg.pruned.num_cpus + cfg.router.num_cpus
    ray.init(num_cpus=max(os.cpu_count() or 1, int(wanted + 0.999)), include_dashboard=False)
    try:
        serve.start(http_options={"host": args.host, "port": args.port})
        serve.run(build_app(cfg), name="twinserve", route_prefix="/")
        host = "localhost" if args.host in ("0.0.0.0", "::") else args.host
        url = f"http://{host}:{args.port}"
        print(f"\ntwinserve is serving {art} at {url}  (dense weight {args.dense_weight:g}, "
              f"shadow {args.shadow_fraction:g}; Ctrl-C stops it)\n")
        print(f"  curl -s {url}/v1/embeddings -H 'Content-Type: application/json' \\\n"
              f"       -d '{{\"input\": [\"hello world\"], \"model\": \"twinserve\"}}' -D - | head -c 600\n")
        print(f"  models: twinserve (routed), twinserve-dense, twinserve-pruned; v2 API under {url}/v2; "
              f"docs at {url}/docs")
        if not os.environ.get("TWINSERVE_ADMIN_TOKEN"):
            print("  admin endpoint disabled: set TWINSERVE_ADMIN_TOKEN to change weights with PUT /admin/routing")
        sys.stdout.flush()
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        print("\ntwinserve serve: stopping", file=sys.stderr)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the shutdown short
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            signal.signal(signal.SIGINT, signal.default_int_handler)
    print("twinserve serve: stopped")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="twinserve", description="Serve a dense and a pruned INT8 twin of one encoder.")
    sub = p.add_subparsers(dest="verb", required=True)

    pr = sub.add_parser("prune", help="build the pruned, distilled, INT8 variant (writes artifacts/<model>/)",
                        description="Score, remove and distil heads, FFN neurons and layers on a cubic schedule, "
                                    "export both variants to ONNX, quantise, verify fidelity and latency, and "
                                    "publish artifacts/<model>/ atomically (manifest.json, tokenizer, dense/ "
                                    "and pruned/ safetensors, dense.onnx, pruned.onnx).")
    pr.add_argument("--model", type=Path, help="BERT-family checkpoint directory (default: bundled all-MiniLM-L6-v2)")
    pr.add_argument("--corpus", type=Path, help="text corpus, one text per line (default: WordNet sentences)")
    pr.add_argument("--out", type=Path, help="output directory (default: artifacts/<model-name>)")
    pr.add_argument("--preset", default="default", choices=["fast", "default", "aggressive"])
    pr.add_argument("--criterion", choices=["magnitude", "taylor", "fisher"])
    pr.add_argument("--head-sparsity", type=_ratio, help="fraction of heads removed, [0, 1)")
    pr.add_argument("--ffn-sparsity", type=_ratio, help="fraction of FFN neurons removed, [0, 1)")
    pr.add_argument("--layer-sparsity", type=_ratio, help="fraction of layers removed, [0, 1)")
    pr.add_argument("--pruning-steps", type=int)
    pr.add_argument("--distill-steps-per-prune", type=int)
    pr.add_argument("--final-distill-steps", type=int)
    pr.add_argument("--batch-size", type=int)
    pr.add_argument("--learning-rate", type=float)
    pr.add_argument("--int8-budget", type=float, help="max mean-cosine drop INT8 may cost before fp32 is kept")
    pr.add_argument("--heldout-texts", type=int)
    pr.add_argument("--threads", type=int)
    pr.add_argument("--seed", type=int)
    pr.add_argument("--force", action="store_true", help="rebuild even if the same inputs were published")
    pr.set_defaults(func=_cmd_prune)

    be = sub.add_parser("bench", help="model-level latency of the variants, interleaved (writes results/bench.json)")
    be.add_argument("--artifacts", type=Path, help="artifact directory (default: artifacts/all-MiniLM-L6-v2)")
    be.add_argument("--out", type=Path, help="JSON output (default: results/bench.json)")
    be.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32])
    be.add_argument("--tokens", type=int, nargs="+", default=[16, 32, 128])
    be.add_argument("--runs", type=int, default=20)
    be.add_argument("--threads", type=int)
    be.add_argument("--torch", action="store_true", help="also time the torch dense backend (CUDA when present)")
    be.set_defaults(func=_cmd_bench)

    se = sub.add_parser("serve", help="serve both variants behind one endpoint on Ray Serve (HTTP :8000)",
                        description="Start a local Ray cluster and the twinserve application: OpenAI "
                                    "POST /v1/embeddings and the Open Inference Protocol v2 under /v2, "
                                    "routing between the dense and pruned variants. Builds the default "
                                    "artifacts with the `fast` preset first when they are absent. Writes "
                                    "nothing but Ray's logs (/tmp/ray/session_latest/logs). For a cluster, "
                                    "use `serve deploy deploy/serve_config.yaml` instead.")
    se.add_argument("--artifacts", type=Path, help="artifact directory (default: artifacts/all-MiniLM-L6-v2)")
    se.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    se.add_argument("--port", type=int, default=8000)
    se.add_argument("--dense-weight", type=_weight, default=0.5, help="share of routed traffic to dense, [0, 1]")
    se.add_argument("--shadow-fraction", type=_weight, default=0.0,
                    help="fraction of requests also sent to the other variant in the background, [0, 1]")
    se.add_argument("--dense-gpus", type=float, default=0.0, help="GPUs for the dense replica (1 on a GPU host)")
    se.set_defaults(func=_cmd_serve)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from service.model.encoder import ModelLoadError
    from service.pruning.corpus import CorpusError
    from service.pruning.job import PruneError
    from service.pruning.manifest import ArtifactIntegrityError

    try:
        args.func(args)
    except (CliError, PruneError, ModelLoadError, CorpusError, ArtifactIntegrityError) as e:
        print(f"twinserve {args.verb}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"twinserve {args.verb}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
