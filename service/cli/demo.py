"""``twinserve demo`` and ``reliability``: end-to-end runs against a server started here."""

from __future__ import annotations

import argparse
from pathlib import Path

from service.cli._common import RELIABILITY_SCENARIOS, CliError, one_line


__all__ = ["add_commands"]


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
        raise CliError(one_line(e)) from None


def _cmd_reliability(args: argparse.Namespace) -> None:
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
    except (DemoError, RuntimeError) as e:
        raise CliError(one_line(e)) from None
    if not summary["passed"]:
        raise CliError(f"a scenario failed; see {args.out_dir / 'summary.json'}")


def add_commands(sub) -> None:
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
    re_.add_argument("--scenarios", nargs="+", choices=RELIABILITY_SCENARIOS, default=list(RELIABILITY_SCENARIOS),
                     help="which scenarios to run, in this order (default: all)")
    re_.add_argument("--out-dir", type=Path, default=Path("results") / "reliability")
    re_.set_defaults(func=_cmd_reliability)
