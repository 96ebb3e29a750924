"""Multi-node placement on a local Ray cluster, run in its own process by test_multinode.py.

The nodes are what the chart renders with gpu.enabled=false (a CPU-only trial cluster): Ray's own
KubeRay autoscaler code reads the rendered RayCluster and says what each group offers Ray (CPUs and
the `dense_pool` / `pruned_pool` custom resources); one local node is started per group with exactly
those resources, so the `dense` node stands in for a GPU node. The application is the chart's
serveConfigV2, deployed as `serve deploy` does, with only the artifact directory, the HTTP address,
the proxy location (local nodes share one address, so HeadOnly) and CPU reservations scaled down.

Writes a JSON report (--out) that the test asserts on; always shuts the cluster down.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def log(msg: str) -> None:
    print(f"[multinode {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--artifacts", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    def _stop(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, _stop)  # the test's timeout: tear down, do not orphan raylets

    sys.path.insert(0, str(ROOT))
    from tests.chart import node_types, render, serve_config

    docs = render({"gpu": {"enabled": False}})
    types = node_types(docs)
    cfg = serve_config(docs)
    app = cfg["applications"][0]
    app["args"]["artifact_dir"] = args.artifacts
    for name in ("dense", "router"):
        app["args"][name]["num_cpus"] = 0.5
    cfg["proxy_location"] = "HeadOnly"
    cfg["http_options"].update(host="127.0.0.1", port=args.port)
    report: dict = {"node_types": types, "serve_args": app["args"]}

    import httpx
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

    from service._platform import wait_ready
    from tests.integration.conftest import deploy_and_wait

    def ray_args(node_type: dict) -> dict:
        res = {k: float(v) for k, v in node_type["resources"].items() if k not in ("CPU", "GPU", "memory")}
        # Logical CPUs as the chart gives them (2 real cores here: these are reservations only).
        return {"num_cpus": int(node_type["resources"]["CPU"]), "resources": res,
                "object_store_memory": 80 * 1024 * 1024}

    cluster = None
    try:
        head = ray_args(types["headgroup"])
        log(f"head {head}")
        cluster = Cluster(initialize_head=True, head_node_args={
            **head, "include_dashboard": False})  # GCS: 6379, or a random port when taken
        node_ids = {"headgroup": cluster.head_node.node_id}
        for group in ("dense", "pruned"):
            a = ray_args(types[group])
            log(f"{group} node {a}")
            node_ids[group] = cluster.add_node(**a).node_id
        cluster.wait_for_nodes()
        report["node_ids"] = node_ids
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        serve.start(http_options={"host": "127.0.0.1", "port": args.port}, proxy_location="HeadOnly")
        log("deploying the chart's serveConfigV2")
        deploy_and_wait(cfg, timeout_s=150)

        from ray._private.state import actors
        placed: dict[str, list[str]] = {}
        by_id = {v: k for k, v in node_ids.items()}
        for a in actors().values():
            cls = a.get("ActorClassName", "")
            if a.get("State") == "ALIVE" and cls.startswith("ServeReplica:twinserve:"):
                placed.setdefault(cls.rsplit(":", 1)[1], []).append(by_id.get(a["Address"]["NodeID"], "?"))
        report["replica_nodes"] = placed
        log(f"replicas: {placed}")

        url = f"http://127.0.0.1:{args.port}"
        wait_ready(url, 60)

        def post(http: httpx.Client, i: int, headers: dict) -> dict:
            r = http.post("/v1/embeddings", json={"input": [f"text number {i}", "another"]}, headers=headers)
            return {"status": r.status_code, "variant": r.headers.get("x-variant"),
                    "reason": r.headers.get("x-route-reason"),
                    "dims": [len(d["embedding"]) for d in r.json().get("data", [])]}

        with httpx.Client(base_url=url, timeout=60) as http:
            # RUNNING means the dense replica has loaded; each ingress replica routes to it once its
            # own probe has seen it (service/serving/health.py). Until then routed requests fall
            # back, as they should: wait (bounded) for 8 routed answers in a row without a fallback.
            warmup, run, deadline = [], 0, time.monotonic() + 60
            while run < 8 and time.monotonic() < deadline:
                a = post(http, len(warmup), {})
                warmup.append(a["reason"])
                run = 0 if a["reason"] == "fallback" else run + 1
            report["warmup_reasons"] = warmup
            log(f"warm-up: {len(warmup)} routed requests, {warmup.count('fallback')} fell back")
            answers = [post(http, i, {"X-Variant": "dense"} if i == 0 else {"X-Variant": "pruned"} if i == 1 else {})
                       for i in range(16)]
        report["answers"] = answers
        log(f"answers: {[(a['status'], a['variant'], a['reason']) for a in answers]}")
    finally:
        Path(args.out).write_text(json.dumps(report, indent=1, default=str))
        # serve.shutdown() without a connection would start a fresh local Ray: only when connected.
        steps = [serve.shutdown, ray.shutdown] if ray.is_initialized() else []
        for step in (*steps, *([cluster.shutdown] if cluster else [])):
            try:
                step()
            except Exception as e:  # keep tearing down
                log(f"teardown {getattr(step, '__name__', step)}: {e!r}")
        log("cluster shut down")
    return 0


if __name__ == "__main__":
    sys.exit(main())
