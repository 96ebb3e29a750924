"""``twinserve loadtest`` and ``report``: the fixed-step sweep and the cost report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from service.cli._common import REQUEST_SHAPES, CliError, non_negative_int, one_line, print_probe


__all__ = ["add_commands"]


def _cmd_loadtest(args: argparse.Namespace) -> None:
    from pydantic import ValidationError

    from service.capacity_search import SloCriteria, capacity_run, find_capacity, sweep_plan
    from service.loadgen import SHAPES, check_loopback

    try:
        check_loopback(args.url)
        plan = sweep_plan(args.rates, step_s=args.step_s, warmup_s=args.warmup_s,
                          stop_after_saturated=args.stop_after_saturated)
        slo = SloCriteria(slo_p99_ms=args.slo_p99_ms, max_error_ratio=args.max_error_ratio,
                          min_achieved_ratio=args.min_achieved_ratio)
    except (ValidationError, ValueError) as e:
        raise CliError(one_line(e)) from None
    url = f"{args.url.rstrip('/')}/v1/embeddings"
    written = []
    for variant in dict.fromkeys(args.variants):
        pinned = variant != "routed"
        headers = {"X-Variant": variant} if pinned else {}
        sweeps = {}
        for shape in args.shapes:
            print(f"{variant} at {SHAPES[shape].description}: steps of {args.step_s:g} s at "
                  + ", ".join(f"{r:g}" for r in plan.rates_rps) + " req/s", file=sys.stderr, flush=True)
            sweeps[shape] = find_capacity(url, shape=SHAPES[shape], plan=plan, criteria=slo, headers=headers,
                                          model=f"twinserve-{variant}" if pinned else None, on_probe=print_probe)
        run = capacity_run(url, sweeps, headers=headers, variant=variant if pinned else None,
                           gpu_model=args.server_gpu, instance_type=args.server_instance_type)
        out = args.out.with_name(f"{args.out.stem}-{variant}{args.out.suffix}")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(run.model_dump_json(indent=2) + "\n")
        written.append(out)
        for shape, r in sweeps.items():
            x = f"{r.x_slo_rps:.4g} req/s" if r.x_slo_rps is not None else "none (no step met the SLO)"
            print(f"{variant} at {SHAPES[shape].description}: X_slo {x} on {run.hardware}"
                  + "".join(f"\n  note: {n}" for n in r.notes))
    print(f"load-test results written to {', '.join(map(str, written))}; the cost report reads them: "
          f"twinserve report --cost-shape {args.shapes[0]} --capacity {' '.join(map(str, written))}")


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
        "loadtest", help="step sweep per variant at given offered rates; X_slo (writes results/loadtest-<variant>.json)",
        description="Offer each rate of --rates for --step-s seconds, in order, to a running twinserve on this "
                    "machine, once per variant (forced with X-Variant; routed: the router's policy) and request "
                    "shape, with the open-loop generator (loopback only; latency timed from the scheduled send). "
                    "A step counts when p99 <= --slo-p99-ms, errors < --max-error-ratio and answered >= "
                    "--min-achieved-ratio of offered (the capacity search's verdict); X_slo is the highest step "
                    "that counted, not repeated. Writes one capacity file per variant, <out stem>-<variant>.json, "
                    "in the format of `twinserve capacity` (`twinserve report --capacity` reads it).")
    lt.add_argument("--url", default="http://127.0.0.1:8000", help="base URL of the service (loopback)")
    lt.add_argument("--rates", type=float, nargs="+", default=[5, 10, 20, 40, 80, 160], help="offered req/s per step")
    lt.add_argument("--variants", nargs="+", default=["dense", "pruned"], choices=["dense", "pruned", "routed"])
    lt.add_argument("--shapes", nargs="+", choices=list(REQUEST_SHAPES), default=["mix"],
                    help="texts per request, one sweep each (default: mix, the locustfile's)")
    lt.add_argument("--step-s", type=float, default=20.0, help="seconds per step, warm-up included")
    lt.add_argument("--warmup-s", type=float, default=5.0, help="seconds at the start of each step not measured")
    lt.add_argument("--stop-after-saturated", type=non_negative_int, default=2,
                    help="end a variant's sweep after N steps in a row answered under --min-achieved-ratio (0: never)")
    lt.add_argument("--slo-p99-ms", type=float, default=100.0)
    lt.add_argument("--max-error-ratio", type=float, default=0.001)
    lt.add_argument("--min-achieved-ratio", type=float, default=0.95)
    lt.add_argument("--server-gpu", help="GPU model the dense variant ran on, e.g. 'NVIDIA T4' (recorded)")
    lt.add_argument("--server-instance-type", help="cloud instance type of this machine, e.g. c7i.xlarge (recorded)")
    lt.add_argument("--out", type=Path, default=Path("results") / "loadtest.json",
                    help="file name stem: one file per variant, <stem>-<variant>.json beside it")
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
