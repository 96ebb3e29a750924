"""``twinserve <verb>``: one command line for the whole system."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
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

# --------------------------------------------------------------------------- cost: loadtest, report


def _one_line(e: Exception) -> str:
    errors = getattr(e, "errors", None)
    if callable(errors):  # pydantic ValidationError: "field: message; ..." without the URL and input echo
        return "; ".join(f"{'.'.join(map(str, x['loc'])) or 'value'}: {x['msg']}" for x in errors())
    return " ".join(str(e).split())


def _cmd_loadtest(args: argparse.Namespace) -> None:
    from pydantic import ValidationError

    from service.cost.loadtest import LoadTestError, SloCriteria, SweepPlan, local_server_hardware, run_sweep

    try:
        plan = SweepPlan(
            rates_rps=args.rates if args.sweep else [args.rate], step_duration_s=args.step_s, warmup_s=args.warmup_s,
            per_user_rps=args.per_user_rps, arrival=args.arrival, multi_share=args.multi_share,
            max_inputs=args.max_inputs, user_pool=args.user_pool, seed=args.seed,
            stop_after_saturated_steps=args.stop_after_saturated if args.sweep else 0)
        slo = SloCriteria(slo_p99_ms=args.slo_p99_ms, max_error_ratio=args.max_error_ratio,
                          min_achieved_ratio=args.min_achieved_ratio)
        server = local_server_hardware(args.url, description=args.server_hardware, cpu_count=args.server_cpus,
                                       gpu_model=args.server_gpu, instance_type=args.server_instance_type)

        def on_step(variant, s) -> None:
            p99 = f"{s.latency.p99_ms:7.1f}" if s.latency else "    n/a"
            print(f"{variant:>7} step {s.index}: offered {s.offered_rps:7.1f} achieved {s.achieved_rps:7.1f} req/s "
                  f"p99 {p99} ms errors {s.error_ratio:6.2%} generator {s.generator_cpu_cores:.2f} cores  "
                  + ("ok" if s.passed else "; ".join(s.reasons)), file=sys.stderr, flush=True)

        result = run_sweep(args.url, variants=args.variants, plan=plan, slo=slo, server=server, out=args.out,
                           locustfile=args.locustfile, on_step=on_step)
    except (ValidationError, LoadTestError) as e:
        raise CliError(_one_line(e)) from None
    for v in result.variants:
        x = f"{v.x_slo_rps:.1f} req/s" if v.x_slo_rps is not None else "none (no step met the SLO)"
        print(f"{v.variant}: X_slo {x} on {result.server.description}" + "".join(f"\n  note: {n}" for n in v.notes))
    print(f"load-test results written to {args.out} (per-request latencies in {args.out.stem}-raw/)")


def _cmd_report(args: argparse.Namespace) -> None:
    from pydantic import ValidationError

    from service.cost.prices import PriceError
    from service.cost.report import (
        ReportConfig,
        ReportError,
        build_report,
        dense_share_from_serve_config,
        write_report,
    )

    try:
        dense_share, source = args.dense_share, "--dense-share"
        if dense_share is None:
            if args.serve_config.is_file():
                dense_share = dense_share_from_serve_config(args.serve_config)
                source = f"{args.serve_config} (Router user_config)"
            else:
                dense_share, source = 0.5, f"the default ({args.serve_config} not found)"
        config = ReportConfig(utilisation=args.utilisation, dense_share=dense_share, dense_share_source=source,
                              dense_instance=args.dense_instance, pruned_instance=args.pruned_instance,
                              traffic_max_rps=args.traffic_max_rps, shadow_window=args.shadow_window,
                              cost_shape=args.cost_shape)
        gpu = args.gpu_capacity
        if gpu is None:  # the default file is read when it exists (`make gpu-bench` writes it)
            from service.cost.gpu import DEFAULT_GPU_CAPACITY

            gpu = [DEFAULT_GPU_CAPACITY] if DEFAULT_GPU_CAPACITY.is_file() else []
        report, data = build_report(capacity=args.capacity, prices=args.prices, bench=args.bench,
                                    manifest=args.manifest, prometheus_url=args.prometheus_url, config=config,
                                    gpu_capacity=gpu)
        files = write_report(report, data, args.out_dir)
    except (ValidationError, ReportError, PriceError) as e:
        raise CliError(_one_line(e)) from None
    for v in report.variants.values():
        x = f"{v.x_slo_rps:.1f} req/s" if v.x_slo_rps is not None else "none"
        print(f"{v.variant}: X_slo {x} at {v.shape} ({v.shape_description}) on {v.hardware}")
    if report.fleet and report.fleet.crossover:
        print(f"crossover: {report.fleet.crossover.note}")
    for b in report.break_even:
        print(f"break-even {b.gpu_instance}: {b.verdict}")
    print(f"report written to {args.out_dir}: {', '.join(p.name for p in files.values())}")


def _add_cost_commands(sub) -> None:
    lt = sub.add_parser(
        "loadtest", help="Locust step-load sweep per variant; X_slo (writes results/loadtest.json)",
        description="Run loadtests/locustfile.py headless (the locust CLI, as a subprocess) against a running "
                    "twinserve, one step load per variant forced with X-Variant, and write typed JSON: per step the "
                    "client-side percentiles, achieved vs offered rate, errors and the load generator's own CPU use; "
                    "per variant X_slo, the highest step with p99 <= SLO, errors < --max-error-ratio and achieved "
                    ">= --min-achieved-ratio of offered. Per-request latencies go to <out>-raw/.")
    lt.add_argument("--url", default="http://127.0.0.1:8000", help="base URL of the service")
    lt.add_argument("--sweep", action="store_true", help="step through --rates (default: one step at --rate)")
    lt.add_argument("--rates", type=float, nargs="+", default=[5, 10, 20, 40, 80, 160], help="offered req/s per step")
    lt.add_argument("--rate", type=float, default=10.0, help="offered req/s without --sweep")
    lt.add_argument("--variants", nargs="+", default=["dense", "pruned"], choices=["dense", "pruned", "routed"])
    lt.add_argument("--step-s", type=float, default=20.0, help="seconds per step, warm-up included")
    lt.add_argument("--warmup-s", type=float, default=5.0, help="seconds at the start of each step not measured")
    lt.add_argument("--slo-p99-ms", type=float, default=100.0)
    lt.add_argument("--max-error-ratio", type=float, default=0.001)
    lt.add_argument("--min-achieved-ratio", type=float, default=0.95)
    lt.add_argument("--stop-after-saturated", type=int, default=2, help="end a variant after N saturated steps")
    lt.add_argument("--per-user-rps", type=float, default=1.0, help="most req/s per simulated user")
    lt.add_argument("--arrival", choices=["poisson", "constant"], default="poisson")
    lt.add_argument("--multi-share", type=float, default=0.2, help="share of requests with several inputs")
    lt.add_argument("--max-inputs", type=int, default=8)
    lt.add_argument("--user-pool", type=int, default=1000, help="distinct user ids for stickiness (0: none)")
    lt.add_argument("--seed", type=int, default=0)
    lt.add_argument("--server-hardware", help="server's hardware, required when --url is not this machine")
    lt.add_argument("--server-cpus", type=int, help="CPUs the server used (default: this machine's)")
    lt.add_argument("--server-gpu", help="GPU model the dense variant ran on, e.g. 'NVIDIA T4'")
    lt.add_argument("--server-instance-type", help="cloud instance type the server ran on, e.g. c7i.xlarge")
    lt.add_argument("--locustfile", type=Path, help="default: loadtests/locustfile.py")
    lt.add_argument("--out", type=Path, default=Path("results") / "loadtest.json")
    lt.set_defaults(func=_cmd_loadtest)

    rp = sub.add_parser(
        "report", help="cost report: report.md, report.html, report.json and PNGs (writes results/report/)",
        description="From capacity files (the open-loop search of `twinserve capacity --variant V` or `twinserve "
                    "demo`, one per variant), bench results, the artifact manifest and deploy/prices.yaml (and "
                    "Prometheus when given), write report.md, a self-contained report.html, report.json and PNG "
                    "plots: latency vs load, X_slo per variant and request shape, $/1M requests per variant x "
                    "instance at u and u=1 (from X_slo at --cost-shape), fleet cost vs traffic with the crossover, "
                    "blended A/B cost, fidelity beside cost.")
    rp.add_argument("--capacity", type=Path, nargs="+",
                    default=[Path("results") / "demo" / f"capacity-{v}.json" for v in ("dense", "pruned")],
                    help="capacity files, one per variant (twinserve capacity --variant V --shapes 1 8 mix; "
                         "default: the demo's results/demo/capacity-{dense,pruned}.json)")
    rp.add_argument("--cost-shape", default="mix", choices=["1", "8", "mix"],
                    help="request shape whose X_slo the costs use (default: mix, the locustfile's traffic)")
    rp.add_argument("--bench", type=Path, help="bench results (twinserve bench)")
    rp.add_argument("--manifest", type=Path, help="artifact directory or its manifest.json, for fidelity")
    rp.add_argument("--prices", type=Path, default=Path("deploy") / "prices.yaml")
    rp.add_argument("--gpu-capacity", type=Path, nargs="*",
                    help="GPU capacity files of the dense variant (scripts/gpu_bench.py, `make gpu-bench`); default: "
                         "results/gpu/capacity.json when it exists. Without one, the break-even per GPU instance is "
                         "a requirement only")
    rp.add_argument("--prometheus-url", help="e.g. http://127.0.0.1:9090, for live shadow agreement")
    rp.add_argument("--shadow-window", default="1h", help="PromQL range for live shadow agreement")
    rp.add_argument("--utilisation", "-u", type=float, default=0.7, help="target utilisation u, (0, 1]")
    rp.add_argument("--dense-share", type=float,
                    help="share of traffic routed to dense in the A/B split (default: the Router's weights in "
                         "--serve-config)")
    rp.add_argument("--serve-config", type=Path, default=Path("deploy") / "serve_config.yaml",
                    help="Ray Serve config whose Router user_config weights give the A/B split")
    rp.add_argument("--dense-instance", help="instance type for the dense fleet (default: cheapest $/1M)")
    rp.add_argument("--pruned-instance", help="instance type for the pruned fleet (default: cheapest $/1M)")
    rp.add_argument("--traffic-max-rps", type=float, help="right end of the fleet-cost plot")
    rp.add_argument("--out-dir", type=Path, default=Path("results") / "report")
    rp.set_defaults(func=_cmd_report)


def _int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        v = int(text)
        if v < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {v}")
        return v
    return parse


_non_negative_int, _positive_int = _int_at_least(0), _int_at_least(1)


def _weight(text: str) -> float:
    v = float(text)
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {v}")
    return v


def _cmd_serve(args: argparse.Namespace) -> None:
    import os
    import time

    from service.artifacts.manifest import MANIFEST_FILE, verify_artifacts
    from service.serving.config import RoutingConfig, ServingConfig, VariantConfig
    from service.serving.edge import EdgeConfig, EdgeError, check_port_free, ray_haproxy_environment, serve_http
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
            pruned={"graph": args.cpu_graph},
            routing=RoutingConfig(weights={"dense": args.dense_weight, "pruned": 1.0 - args.dense_weight},
                                  shadow_fraction=args.shadow_fraction),
        )
        edge = (EdgeConfig(max_in_flight=args.max_in_flight, queue_timeout_ms=args.queue_timeout_ms,
                           retry_after_s=cfg.router.retry_after_s) if args.max_in_flight else None)
        check_port_free(args.host, args.port)  # in a second, not after Ray has started
    except (ValueError, EdgeError) as e:
        raise CliError(str(e)) from None

    import signal

    if args.ray_ingress == "haproxy":
        # Read by Ray at import and inherited by every process of the cluster ray.init starts below.
        os.environ.update(ray_haproxy_environment())

    import ray
    from ray import serve

    from service.serving.app import build_app

    def _stop(signum, frame):
        raise KeyboardInterrupt

    # Ctrl-C even where the shell started us with SIGINT ignored; SIGTERM (docker stop) the same way.
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)

    # Logical CPUs are reservations: never fewer than the application asks for, even on 2 cores.
    wanted = cfg.dense.num_cpus + cfg.router.num_replicas * cfg.router.num_cpus
    # log_to_driver off: forwarding every replica's access-log line to this terminal cost so much
    # CPU on 2 cores that a 130 req/s burst collapsed (p99 30 s) where it is carried without it
    # (p99 0.26 s; BENCHMARKS.md). The logs stay in Ray's session directory, printed below.
    ray.init(num_cpus=max(os.cpu_count() or 1, int(wanted + 0.999)), include_dashboard=False,
             log_to_driver=False, _metrics_export_port=args.metrics_port)
    edge_error = None
    try:
        with serve_http(args.host, args.port, edge, edge_metrics_port=args.edge_metrics_port):
            serve.run(build_app(cfg), name="twinserve", route_prefix="/")
            _announce(args, art)
            while True:
                time.sleep(1.0)
    except KeyboardInterrupt:
        print("\ntwinserve serve: stopping", file=sys.stderr)
    except EdgeError as e:
        edge_error = e
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the shutdown short
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            signal.signal(signal.SIGINT, signal.default_int_handler)
    print("twinserve serve: stopped")
    if edge_error is not None:
        raise CliError(str(edge_error))


def _announce(args: argparse.Namespace, art: Path) -> None:
    import os

    import ray

    host = "localhost" if args.host in ("0.0.0.0", "::") else args.host
    url = f"http://{host}:{args.port}"
    print(f"\ntwinserve is serving {art} at {url}  (dense weight {args.dense_weight:g}, "
          f"shadow {args.shadow_fraction:g}; Ctrl-C stops it)\n")
    print(f"  curl -s {url}/v1/embeddings -H 'Content-Type: application/json' \\\n"
          f"       -d '{{\"input\": [\"hello world\"], \"model\": \"twinserve\"}}' -D - | head -c 600\n")
    print(f"  models: twinserve (routed), twinserve-dense, twinserve-pruned; v2 API under {url}/v2; "
          f"docs at {url}/docs")
    if args.metrics_port:
        print(f"  metrics (Prometheus text) at http://127.0.0.1:{args.metrics_port}/metrics; "
              "scrape it with deploy/prometheus.yml")
    if args.max_in_flight:
        print(f"  admission: at most {args.max_in_flight} requests inside at once; the next wait up to "
              f"{args.queue_timeout_ms} ms at the edge (HAProxy), then 503 with Retry-After")
        if args.edge_metrics_port:
            print(f"  edge metrics (what it shed, queue): http://127.0.0.1:{args.edge_metrics_port}/metrics")
    logs = ray._private.worker._global_node.get_logs_dir_path()  # no public accessor in Ray 2.60
    print(f"  replica and access logs: {logs}/serve/")
    if not os.environ.get("TWINSERVE_ADMIN_TOKEN"):
        print("  admin endpoint disabled: set TWINSERVE_ADMIN_TOKEN to change weights with PUT /admin/routing")
    sys.stdout.flush()


def _cmd_demo(args: argparse.Namespace) -> None:
    from pydantic import ValidationError

    from service.cost.prices import PriceError
    from service.cost.report import ReportError
    from service.demo import DemoError, run_demo

    try:
        run_demo(out_dir=args.out_dir, artifacts=args.artifacts, preset_name=args.preset, budget_s=args.budget_s,
                 shapes=args.shapes, cost_shape=args.cost_shape, prices=args.prices,
                 say=lambda line: print(line, flush=True))
    except (DemoError, ReportError, PriceError, ValidationError, ValueError) as e:
        raise CliError(_one_line(e)) from None


def _cmd_reliability(args: argparse.Namespace) -> None:
    from service.cost.loadtest import LoadTestError
    from service.demo import DemoError
    from service.reliability import run_reliability

    x_slo = None
    if args.x_slo_pruned is not None:
        if args.x_slo_dense is None:
            raise CliError("--x-slo-pruned needs --x-slo-dense too (the failure and soak rates use both)")
        x_slo = {"pruned": args.x_slo_pruned, "dense": args.x_slo_dense}
    try:
        summary = run_reliability(out_dir=args.out_dir, artifacts=args.artifacts, x_slo_rps=x_slo,
                                  overload_s=args.overload_s, soak_s=args.soak_s, overload_rps=args.overload_rps,
                                  scenarios=args.scenarios, say=lambda line: print(line, flush=True))
    except (DemoError, LoadTestError, RuntimeError) as e:
        raise CliError(_one_line(e)) from None
    if not summary["passed"]:
        raise CliError(f"a scenario failed; see {args.out_dir / 'summary.json'}")

# --- twinserve artifacts: list, gc, pin, unpin (self-contained: the verb's function and its parser) -------------

def _cmd_artifacts(args: argparse.Namespace) -> None:
    from datetime import UTC, datetime

    from rich.console import Console
    from rich.table import Table

    from service.artifacts import collect, list_versions, pin, resolve_version, unpin
    from service.settings import default_artifact_dir

    out = (args.dir or default_artifact_dir()).expanduser().absolute()
    if not out.parent.is_dir():
        raise CliError(f"no artifact directory {out.parent}")
    console = Console(width=140)
    if args.action in ("pin", "unpin"):
        try:
            version = resolve_version(args.version, out)
            if args.action == "pin":
                pin(version, args.note)
                print(f"pinned {version} (gc never removes it; `twinserve artifacts unpin {version.name}` undoes)")
            else:
                print(f"unpinned {version}" if unpin(version) else f"{version} was not pinned")
        except (ValueError, OSError) as e:
            raise CliError(str(e)) from None
        return
    if args.action == "gc":
        try:
            removed = collect(out, keep=args.keep, lease_ttl_s=args.lease_ttl_s, dry_run=args.dry_run)
        except ValueError as e:
            raise CliError(str(e)) from None
        verb = "would remove" if args.dry_run else "removed"
        for p in removed:
            print(f"{verb} {p}")
        print(f"{verb} {len(removed)} version(s) of {out.name}; kept the current one, the newest {args.keep} and "
              "every pinned or leased one")
        return
    versions = list_versions(out, lease_ttl_s=args.lease_ttl_s)
    if not versions:
        print(f"no published versions of {out.name} in {out.parent}")
        return
    now = datetime.now(UTC)
    table = Table(title=f"twinserve artifacts: {out}")
    for col in ("version", "current", "size", "age", "held by"):
        table.add_column(col, justify="left" if col in ("version", "held by") else "right")
    for v in versions:
        age_s = (now - v.created).total_seconds()
        age = f"{age_s / 86400:.1f} d" if age_s >= 86400 else f"{age_s / 3600:.1f} h" if age_s >= 3600 \
            else f"{age_s / 60:.0f} min"
        held = [f"pinned by {v.pin.get('by')}" + (f" ({v.pin['note']})" if v.pin.get("note") else "")] if v.pin else []
        held += [f"lease {lease.holder} ({lease.age_s:.0f} s ago{'' if lease.fresh else ', expired'})"
                 for lease in v.leases]
        table.add_row(v.name, "yes" if v.current else "", f"{v.size_bytes / 1e6:.1f} MB", age,
                      "; ".join(held) or "-")
    console.print(table)


def _add_artifacts_parser(sub) -> None:
    from service.artifacts import DEFAULT_KEEP_VERSIONS

    ar = sub.add_parser(
        "artifacts", help="published artifact versions: list, gc, pin, unpin",
        description="Versions of an artifact directory (artifacts/<model> is a symlink to the current one): "
                    "which exist, their size and age, which a running server leases or a person pinned; gc removes "
                    "the versions beyond the newest K that are neither current, pinned nor leased.")
    acts = ar.add_subparsers(dest="action", required=True)
    ls = acts.add_parser("list", help="versions, the current one, size, age, pins and leases")
    gc = acts.add_parser("gc", help="remove unpinned, unleased versions beyond the newest K (never the current one)")
    for a in (ls, gc):
        a.add_argument("dir", nargs="?", type=Path, help="artifact directory (default: artifacts/all-MiniLM-L6-v2)")
        a.add_argument("--lease-ttl-s", type=float, default=None,
                       help="a lease refreshed within this many seconds holds its version (default: "
                            "TWINSERVE_ARTIFACT_LEASE_TTL_S, 600)")
    gc.add_argument("--keep", type=int, default=DEFAULT_KEEP_VERSIONS, help="versions kept (default 3)")
    gc.add_argument("--dry-run", action="store_true", help="print what would be removed; remove nothing")
    for name, text in (("pin", "keep a version until unpinned"), ("unpin", "drop a version's pin")):
        a = acts.add_parser(name, help=text)
        a.add_argument("version", help="version directory (path or name as `list` shows it) or `current`")
        a.add_argument("--dir", type=Path, help="artifact directory (default: artifacts/all-MiniLM-L6-v2)")
        if name == "pin":
            a.add_argument("--note", default="", help="why (shown by `list`)")
    ar.set_defaults(func=_cmd_artifacts, lease_ttl_s=None)

# --- end of twinserve artifacts ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from service.reliability import SCENARIOS
    from service.serving.edge import EdgeConfig
    p = argparse.ArgumentParser(prog="twinserve", description="Serve a dense and a pruned INT8 twin of one encoder.")
    sub = p.add_subparsers(dest="verb", required=True)

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

    _add_cost_commands(sub)
    from service._cli_capacity import add_commands as _add_capacity_commands

    _add_capacity_commands(sub, CliError)

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
    se.add_argument("--cpu-graph", choices=("manifest", "pruned.onnx"), default="manifest",
                    help="what the CPU variant runs: the manifest's cpu_variant (default), or pruned.onnx on ONNX "
                         "Runtime, the graph any ONNX client or peer server runs")
    se.add_argument("--metrics-port", type=int,
                    help="Ray's metrics export port, for Prometheus (deploy/prometheus.yml expects 8080); "
                         "default: a port Ray picks")
    se.add_argument("--max-in-flight", type=_non_negative_int, default=EdgeConfig().max_in_flight,
                    help="admission at the edge (HAProxy on --port): requests inside Ray Serve at once; "
                         "0 serves without the edge, Ray Serve on --port itself (default: %(default)s, sized "
                         "for 2 cores)")
    se.add_argument("--queue-timeout-ms", type=_positive_int, default=EdgeConfig().queue_timeout_ms,
                    help="how long a request may wait at the edge for a slot before a 503 with Retry-After "
                         "(default: %(default)s)")
    se.add_argument("--edge-metrics-port", type=_positive_int,
                    help="HAProxy's Prometheus exporter for the edge on 127.0.0.1:PORT/metrics: requests it shed "
                         "never reach Ray's metrics (default: off)")
    se.add_argument("--ray-ingress", choices=("haproxy", "proxy"), default="haproxy",
                    help="how requests enter Ray Serve: its HAProxy ingress straight to the router replica "
                         "(default; about half the overhead on 2 cores), or its Python proxy actor")
    se.set_defaults(func=_cmd_serve)

    de = sub.add_parser(
        "demo", help="prune (cached), serve, Prometheus, capacity search per variant and shape, report "
                     "(writes results/demo/)",
        description="End to end on this machine: build the artifacts with the `fast` preset unless --preset is "
                    "given (reused when already built), start `twinserve serve` in the background and Prometheus "
                    "(deploy/prometheus.yml) beside it, find X_slo of each variant (pinned with X-Variant) at each "
                    "request shape with the open-loop capacity search (ramp x2, bisect, repeat), send a short "
                    "shadowed burst, and write the cost report. The whole run keeps to --budget-s: what is left "
                    "after the server is up is shared among the searches, which stop early and say so. Writes "
                    "results/demo/: capacity-dense.json, capacity-pruned.json, capacity.png, serve.log, "
                    "prometheus/, report/ (report.html, report.md, report.json, PNGs). Stops the server and "
                    "Prometheus at the end, on failure and on Ctrl-C.")
    de.add_argument("--preset", choices=["fast", "default", "aggressive"],
                    help="pruning preset (default: reuse existing artifacts, else build `fast`)")
    de.add_argument("--artifacts", type=Path, help="artifact directory (default: artifacts/all-MiniLM-L6-v2)")
    de.add_argument("--budget-s", type=float, default=570.0,
                    help="wall-time budget of the whole demo, artifact build included, seconds (default: "
                         "%(default)s, under 10 minutes)")
    de.add_argument("--shapes", nargs="+", choices=["1", "8", "mix"], default=["mix", "1", "8"],
                    help="request shapes to search: the costed one first, then in this order (default: mix 1 8)")
    de.add_argument("--cost-shape", choices=["1", "8", "mix"], default="mix",
                    help="request shape whose X_slo the report's costs use (default: mix)")
    de.add_argument("--prices", type=Path, default=Path("deploy") / "prices.yaml")
    de.add_argument("--out-dir", type=Path, default=Path("results") / "demo")
    de.set_defaults(func=_cmd_demo)

    re_ = sub.add_parser(
        "reliability", help="overload, replica kills and a soak against a local server (writes results/reliability/)",
        description="Start `twinserve serve` on the artifacts in the background, find each variant's X_slo with the "
                    "open-loop capacity search (unless given; capacity.json), then: 3x the pruned X_slo for "
                    "--overload-s (shedding with Retry-After, accepted p99 within 2x the SLO, no replica death, "
                    "recovery within 10 s); SIGKILL "
                    "of the pruned replica, then of the dense one, under routed load (fallback, <= 0.1%% failures, "
                    "replacement, split restored, fallbacks in the metrics); a soak at half of X_slo for --soak-s "
                    "(no error, RSS growth < 10%%). Writes summary.json after every scenario; exits 2 if one failed.")
    re_.add_argument("--artifacts", type=Path, help="artifact directory (default: artifacts/all-MiniLM-L6-v2)")
    re_.add_argument("--x-slo-pruned", type=float, help="pruned X_slo, req/s (default: measured by a search)")
    re_.add_argument("--x-slo-dense", type=float, help="dense X_slo, req/s (default: measured by a search)")
    re_.add_argument("--overload-s", type=float, default=60.0, help="length of the 3x burst, seconds")
    re_.add_argument("--overload-rps", type=float,
                     help="offered rate of the burst when more than 3x X_slo (default: 3x X_slo, or twice the "
                          "highest rate the search saw the pruned variant answer, whichever is more)")
    re_.add_argument("--soak-s", type=float, default=600.0, help="length of the soak, seconds")
    re_.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=list(SCENARIOS),
                     help="which scenarios to run, in this order (default: all)")
    re_.add_argument("--out-dir", type=Path, default=Path("results") / "reliability")
    re_.set_defaults(func=_cmd_reliability)

    _add_artifacts_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from service.artifacts import ArtifactIntegrityError, PublishError
    from service.model.encoder import ModelLoadError
    from service.pruning.corpus import CorpusError
    from service.pruning.job import PruneError

    try:
        args.func(args)
    except (CliError, PruneError, ModelLoadError, CorpusError, ArtifactIntegrityError, PublishError) as e:
        print(f"twinserve {args.verb}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"twinserve {args.verb}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
