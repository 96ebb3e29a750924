"""``twinserve loadtest`` and ``report``: the Locust sweep and the cost report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from service.cli._common import CliError, one_line


__all__ = ["add_commands"]


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
        raise CliError(one_line(e)) from None
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
        raise CliError(one_line(e)) from None
    for v in report.variants.values():
        x = f"{v.x_slo_rps:.1f} req/s" if v.x_slo_rps is not None else "none"
        print(f"{v.variant}: X_slo {x} at {v.shape} ({v.shape_description}) on {v.hardware}")
    if report.fleet and report.fleet.crossover:
        print(f"crossover: {report.fleet.crossover.note}")
    for b in report.break_even:
        print(f"break-even {b.gpu_instance}: {b.verdict}")
    print(f"report written to {args.out_dir}: {', '.join(p.name for p in files.values())}")


def add_commands(sub) -> None:
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
