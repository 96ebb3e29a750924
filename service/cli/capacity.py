"""``twinserve capacity`` and ``twinserve peers``: open-loop capacity searches from the command line."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from service.cli._common import REQUEST_SHAPES, CliError, one_line, print_probe

__all__ = ["add_commands"]


def _plan_and_criteria(args: argparse.Namespace):
    from service.capacity_search import SearchPlan, SloCriteria

    plan = SearchPlan(start_rps=args.start_rps, max_rps=args.max_rps, resolution=args.resolution,
                      min_requests=args.min_requests, min_duration_s=args.min_duration_s,
                      min_window_s=args.min_window_s, warmup_s=args.warmup_s, timeout_s=args.timeout_s,
                      max_total_s=args.max_total_s)
    return plan, SloCriteria(slo_p99_ms=args.slo_p99_ms, max_error_ratio=args.max_error_ratio,
                             min_achieved_ratio=args.min_achieved_ratio)


def _fail(args: argparse.Namespace, e: Exception) -> Exception:
    return CliError(one_line(e))


def _cmd_capacity(args: argparse.Namespace) -> None:
    from pydantic import ValidationError

    from service.capacity_search import find_capacity, plot_searches
    from service.loadgen import SHAPES

    try:
        plan, slo = _plan_and_criteria(args)
        headers = {"X-Variant": args.variant} if args.variant else {}
        model = args.model or (f"twinserve-{args.variant}" if args.variant else None)
        url = f"{args.url.rstrip('/')}{args.path}"
        results = {}
        for shape in args.shapes:
            print(f"capacity search of {url} at {SHAPES[shape].description}", file=sys.stderr, flush=True)
            results[shape] = find_capacity(url, shape=SHAPES[shape], plan=plan, criteria=slo, headers=headers,
                                           model=model, on_probe=print_probe)
    except (ValidationError, ValueError) as e:
        raise _fail(args, e) from None
    from service.capacity_search import capacity_run

    run = capacity_run(url, results, headers=headers, variant=args.variant)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(run.model_dump_json(indent=2) + "\n")
    png = plot_searches({SHAPES[k].description: {args.variant or "server": r} for k, r in results.items()},
                        args.out.with_suffix(".png"), title=url)
    for k, r in results.items():
        x = f"{r.x_slo_rps:.1f} req/s" if r.x_slo_rps is not None else "none"
        print(f"{SHAPES[k].description}: X_slo {x} ({r.status})" + "".join(f"\n  note: {n}" for n in r.notes))
    print(f"capacity search written to {args.out} and {png}")


def _cmd_peers(args: argparse.Namespace) -> None:
    from pydantic import ValidationError

    from service.peers import run_peers
    from service.settings import default_artifact_dir

    art = (args.artifacts or default_artifact_dir()).expanduser()
    if not (art / "pruned.onnx").is_file():
        raise CliError(f"no artifacts at {art}; build them with `twinserve prune --preset fast --out {art}`")
    try:
        plan, slo = _plan_and_criteria(args)
        result = run_peers(artifacts=art, out_dir=args.out_dir, twinserve_url=args.twinserve_url,
                           servers=args.servers, shapes=args.shapes, plan=plan, criteria=slo,
                           peer_venv=args.peer_venv, infinity_threads=args.infinity_threads,
                           infinity_nice=args.infinity_nice,
                           command="twinserve peers " + shlex.join(sys.argv[2:] if len(sys.argv) > 1 else []),
                           say=lambda line: print(line, flush=True))
    except (ValidationError, ValueError, FileNotFoundError, TimeoutError, RuntimeError) as e:
        raise _fail(args, e) from None
    for name, by_shape in result.x_slo().items():
        print(f"{name}: " + ", ".join(f"{s} text(s) X_slo " + (f"{x:.1f} req/s" if x is not None else "none")
                                      for s, x in by_shape.items()))


def _search_arguments(p: argparse.ArgumentParser, max_total_s: float) -> None:
    g = p.add_argument_group("search (ramp x2, bisect, repeat)")
    g.add_argument("--start-rps", type=float, default=8.0, help="first offered rate (default: %(default)s)")
    g.add_argument("--max-rps", type=float, default=4096.0, help="highest rate tried (default: %(default)s)")
    g.add_argument("--resolution", type=float, default=0.05, help="relative width the bisection stops at")
    g.add_argument("--min-requests", type=int, default=1000, help="a probe holds this many requests ...")
    g.add_argument("--min-duration-s", type=float, default=20.0, help="... or lasts this long, whichever first")
    g.add_argument("--min-window-s", type=float, default=5.0, help="but never less than this")
    g.add_argument("--warmup-s", type=float, default=2.0, help="sent before each probe's window, not counted")
    g.add_argument("--timeout-s", type=float, default=10.0, help="client timeout per request")
    g.add_argument("--max-total-s", type=float, default=max_total_s,
                   help="time budget of each search, seconds (default: %(default)s)")
    g.add_argument("--slo-p99-ms", type=float, default=100.0)
    g.add_argument("--max-error-ratio", type=float, default=0.001)
    g.add_argument("--min-achieved-ratio", type=float, default=0.95, help="answered/offered a probe must reach")


def add_commands(sub) -> None:
    shapes = list(REQUEST_SHAPES)

    ca = sub.add_parser(
        "capacity", help="open-loop capacity search of one endpoint: X_slo (writes results/capacity.{json,png})",
        description="Find X_slo, the highest offered rate with p99 <= SLO (timed from the scheduled send), errors "
                    "under --max-error-ratio and answered >= --min-achieved-ratio of offered, by an exponential ramp, "
                    "a binary search and a repeat, with the open-loop generator (loopback targets only). Writes "
                    "every probe as JSON to --out and latency percentiles vs offered load to the same name .png.")
    ca.add_argument("--url", default="http://127.0.0.1:8000", help="base URL of the server (loopback)")
    ca.add_argument("--path", default="/v1/embeddings", help="embeddings endpoint under --url")
    ca.add_argument("--variant", choices=["dense", "pruned"], help="pin twinserve's variant (X-Variant)")
    ca.add_argument("--model", help="model name in the request body (default: twinserve-<variant>)")
    ca.add_argument("--shapes", nargs="+", choices=shapes, default=["1"], help="texts per request")
    ca.add_argument("--out", type=Path, default=Path("results") / "capacity.json")
    _search_arguments(ca, max_total_s=300.0)
    ca.set_defaults(func=_cmd_capacity)

    pe = sub.add_parser(
        "peers", help="twinserve vs infinity-emb on the same pruned graph, same search (writes results/peers/)",
        description="Serve the artifacts' pruned.onnx with infinity-emb (from its own environment, "
                    "loadtests/peers/setup.sh) and with twinserve (--twinserve-url, or `twinserve serve` started "
                    "here), one after the other, and find each one's X_slo with the same open-loop capacity search "
                    "at 1 and 8 texts per request. Writes peers.json (every probe, hardware, settings), peers.png "
                    "(latency percentiles vs offered load) and the servers' logs to --out-dir.")
    pe.add_argument("--artifacts", type=Path, help="artifact directory (default: artifacts/all-MiniLM-L6-v2)")
    pe.add_argument("--twinserve-url", help="a running twinserve (loopback); default: start `twinserve serve`")
    pe.add_argument("--servers", nargs="+", choices=["infinity", "twinserve"], default=["infinity", "twinserve"],
                    help="which servers, in this order")
    pe.add_argument("--shapes", nargs="+", choices=shapes, default=["1", "8"], help="texts per request")
    pe.add_argument("--peer-venv", type=Path, default=Path(".venv-peers"), help="infinity's environment")
    pe.add_argument("--infinity-threads", type=int, help="infinity's ONNX Runtime intra-op threads (default: all CPUs)")
    pe.add_argument("--infinity-nice", type=int, default=0,
                    help="start infinity at this niceness; 15 is what Ray gives twinserve's replicas, for a fair "
                         "share when other work runs on the machine (default: %(default)s)")
    pe.add_argument("--out-dir", type=Path, default=Path("results") / "peers")
    _search_arguments(pe, max_total_s=240.0)
    pe.set_defaults(func=_cmd_peers)
