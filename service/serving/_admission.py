"""Where the edge starts shedding, against where latency would leave the SLO.

    PYTHONPATH=. python -m service.serving._admission --artifacts artifacts/all-MiniLM-L6-v2 \\
        --rates-1 512 640 768 896 --rates-8 160 208 256 --edge 8:50 32:50 32:80

Starts its own Ray instance and the Serve application `twinserve serve` runs (two ingress
replicas hosting the CPU variant), without the edge, then offers open-loop load (schedule-based
sends, latency from the scheduled time) at fixed rates, one text or eight per request, pinned to
the CPU variant. At every rate the same load goes, one after the other, to Serve directly
("none") and through an edge HAProxy of each ``--edge IN_FLIGHT:QUEUE_MS`` setting, so the
configurations meet the same machine state. For each it records the accepted requests' p99,
what the edge shed (503) and what got through. ``--queue-delays-ms off 50 100`` compares the CPU
variant's wait budgets (``pruned.max_queue_delay_s``) the same way, one application each.

A well-set edge sheds nothing at a rate the server without it carries within the SLO, and keeps
accepted p99 within the SLO where the server without it does not. Results:
``results/admission.json``; a table on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

from service._platform import free_port

MODEL = "twinserve-pruned"  # pinned: the CPU variant's own capacity, no fallback to dense


def _edge_setting(text: str) -> tuple[int, int]:
    try:
        in_flight, queue_ms = (int(x) for x in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"an edge setting is IN_FLIGHT:QUEUE_MS, e.g. 32:80; got {text!r}") from None
    if in_flight < 1 or queue_ms < 1:
        raise argparse.ArgumentTypeError(f"both parts of {text!r} must be positive")
    return in_flight, queue_ms


def _edge_or_direct(setting: tuple[int, int] | None, direct: str, inner: int):
    """A context giving the URL to load: Serve itself (``setting`` None) or an edge of that setting."""
    from service.serving.edge import Edge, EdgeConfig

    if setting is None:
        return contextlib.nullcontext(SimpleNamespace(url=direct))
    return Edge(EdgeConfig(max_in_flight=setting[0], queue_timeout_ms=setting[1]), listen_host="127.0.0.1",
                listen_port=free_port(), backend_port=inner)


def _row(p, **where) -> dict:
    """One probe as a row: where it ran, what the edge shed (503), what else failed, latency."""
    shed = p.status_counts.get("503", 0)
    return {**where, "sent": p.sent, "ok": p.ok, "shed": shed, "shed_ratio": shed / p.sent if p.sent else 0.0,
            "other_errors": p.errors - shed, "answered_rps": p.answered_rps,
            "p50_ms": p.latency.p50_ms if p.latency else None, "p99_ms": p.latency.p99_ms if p.latency else None,
            "machine_cpu_cores": p.machine_cpu_cores, "passed": p.passed, "reasons": p.reasons}


def measure(artifacts: Path, rates: dict[str, list[float]], edges: list[tuple[int, int]], window_s: float,
            slo_p99_ms: float, queue_delays_ms: list[float | None], include_no_edge: bool = True) -> dict:
    import ray
    from ray import serve

    from service._platform import hardware_description, wait_ready
    from service.capacity_search import SearchPlan, SloCriteria, http_probe
    from service.loadgen import SHAPES
    from service.serving.app import build_app
    from service.serving.edge import serve_http

    plan = SearchPlan(min_requests=1, min_duration_s=window_s, min_window_s=window_s, warmup_s=2.0, pause_s=1.0,
                      recovery_s=3.0)
    criteria = SloCriteria(slo_p99_ms=slo_p99_ms)
    settings = ([None] if include_no_edge else []) + list(edges)
    points = [(shape, rate) for shape, shape_rates in rates.items() for rate in shape_rates]
    rows = []
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        inner = free_port()
        with serve_http("127.0.0.1", inner, None) as direct:
            for delay_ms in queue_delays_ms:  # one application per budget, every point and setting under it
                budget = None if delay_ms is None else delay_ms / 1e3
                serve.run(build_app({"artifact_dir": str(artifacts), "pruned": {"max_queue_delay_s": budget}}),
                          name="admission", route_prefix="/")
                wait_ready(direct, 180)
                time.sleep(5)  # the replaced replicas drain; Ray's HAProxy learns the new ones
                for (shape, rate), setting in itertools.product(points, settings):
                    edge = "none" if setting is None else f"{setting[0]}:{setting[1]}"
                    with _edge_or_direct(setting, direct, inner) as target:
                        p = http_probe(f"{target.url}/v1/embeddings", shape=SHAPES[shape], plan=plan,
                                       criteria=criteria, model=MODEL)(rate, "ramp")
                    row = _row(p, shape=shape, rate_rps=rate, edge=edge, queue_delay_ms=delay_ms)
                    rows.append(row)
                    p99 = f"{row['p99_ms']:8.1f}" if row["p99_ms"] is not None else "     n/a"
                    print(f"budget {delay_ms} ms  {shape:>2} texts {rate:7.1f} req/s  edge {edge:>6}  "
                          f"answered {p.answered_rps:7.1f}  p99 {p99} ms  shed {row['shed_ratio']:6.2%}  "
                          f"other errors {row['other_errors']:4d}  {'pass' if p.passed else '; '.join(p.reasons)}",
                          flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
    return {"created_at": datetime.now(UTC).isoformat(), "hardware": hardware_description(),
            "artifacts": str(artifacts), "model": MODEL, "window_s": window_s, "slo_p99_ms": slo_p99_ms,
            "edges": [f"{a}:{b}" for a, b in edges], "queue_delays_ms": queue_delays_ms, "rows": rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifacts", type=Path, required=True)
    p.add_argument("--rates-1", type=float, nargs="*", default=[512, 640, 768], help="req/s at one text per request")
    p.add_argument("--rates-8", type=float, nargs="*", default=[160, 208, 256], help="req/s at 8 texts per request")
    p.add_argument("--edge", type=_edge_setting, nargs="+", default=[(8, 50), (32, 80)],
                   help="edge settings IN_FLIGHT:QUEUE_MS to compare with no edge")
    p.add_argument("--queue-delays-ms", type=lambda t: None if t == "off" else float(t), nargs="+",
                   default=[50.0], help="the CPU variant's wait budgets to compare (pruned.max_queue_delay_s, ms; "
                                        "'off': none), one application each")
    p.add_argument("--no-edge", action=argparse.BooleanOptionalAction, default=True,
                   help="also measure Serve without an edge (default: yes)")
    p.add_argument("--window-s", type=float, default=8.0, help="measured seconds per probe (after 2 s warm-up)")
    p.add_argument("--slo-p99-ms", type=float, default=100.0)
    p.add_argument("--out", type=Path, default=Path("results/admission.json"))
    args = p.parse_args()
    from service.serving.edge import ray_haproxy_environment

    os.environ.update(ray_haproxy_environment())  # before Ray starts, as `twinserve serve` does
    t0 = time.monotonic()
    result = measure(args.artifacts.resolve(), {"1": args.rates_1, "8": args.rates_8}, args.edge, args.window_s,
                     args.slo_p99_ms, args.queue_delays_ms, args.no_edge)
    result["command"] = "python -m service.serving._admission " + " ".join(sys.argv[1:])
    result["wall_s"] = time.monotonic() - t0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {args.out} ({result['hardware']}, {result['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
