"""``twinserve serve``: a local Ray cluster and the twinserve application behind the edge."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from service.cli._common import CliError, non_negative_int, positive_int, weight


__all__ = ["add_commands"]


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
        with serve_http(args.host, args.port, edge, edge_metrics_port=args.edge_metrics_port,
                        edge_access_log=args.edge_access_log):
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


def add_commands(sub) -> None:
    from service.serving.edge import EdgeConfig

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
    se.add_argument("--dense-weight", type=weight, default=0.5, help="share of routed traffic to dense, [0, 1]")
    se.add_argument("--shadow-fraction", type=weight, default=0.0,
                    help="fraction of requests also sent to the other variant in the background, [0, 1]")
    se.add_argument("--dense-gpus", type=float, default=0.0, help="GPUs for the dense replica (1 on a GPU host)")
    se.add_argument("--cpu-graph", choices=("manifest", "pruned.onnx"), default="manifest",
                    help="what the CPU variant runs: the manifest's cpu_variant (default), or pruned.onnx on ONNX "
                         "Runtime, the graph any ONNX client or peer server runs")
    se.add_argument("--metrics-port", type=int,
                    help="Ray's metrics export port, for Prometheus (deploy/prometheus.yml expects 8080); "
                         "default: a port Ray picks")
    se.add_argument("--max-in-flight", type=non_negative_int, default=EdgeConfig().max_in_flight,
                    help="admission at the edge (HAProxy on --port): requests inside Ray Serve at once; "
                         "0 serves without the edge, Ray Serve on --port itself (default: %(default)s, sized "
                         "for 2 cores)")
    se.add_argument("--queue-timeout-ms", type=positive_int, default=EdgeConfig().queue_timeout_ms,
                    help="how long a request may wait at the edge for a slot before a 503 with Retry-After "
                         "(default: %(default)s)")
    se.add_argument("--edge-metrics-port", type=positive_int,
                    help="HAProxy's Prometheus exporter for the edge on 127.0.0.1:PORT/metrics: requests it shed "
                         "never reach Ray's metrics (default: off)")
    se.add_argument("--edge-access-log", type=Path,
                    help="append one line per request to this file: status, ms from the request's first byte at "
                         "the edge to the answer's last, ms queued at the edge (the latency at the service's "
                         "boundary; `twinserve reliability` reads it; default: off)")
    se.add_argument("--ray-ingress", choices=("haproxy", "proxy"), default="haproxy",
                    help="how requests enter Ray Serve: its HAProxy ingress straight to the router replica "
                         "(default; about half the overhead on 2 cores), or its Python proxy actor")
    se.set_defaults(func=_cmd_serve)
