"""Where the serving time goes, for one input at low load (sequential requests, one at a time).

    PYTHONPATH=. python -m service.serving._overhead --artifacts artifacts/all-MiniLM-L6-v2 \\
        --out results/serving_overhead.json

Starts its own Ray instance and Serve application (pruned variant pinned), then times the
same text four ways, interleaved round by round so a noisy neighbour hits all of them alike:

  in_process      the CPU variant's backend.embed in this process (tokenise + runtime)
  http_live       GET /v2/health/live (the ingress's FastAPI, no model)
  http_embed      POST /v1/embeddings, model twinserve-pruned (everything: the ingress serves the
                  CPU variant in-process, @serve.batch, a thread hop, the runtime)
  serialise       request parse + response JSON encode for one embedding, in this process

The path is the one `twinserve serve` runs: the edge HAProxy, Ray Serve's HAProxy ingress, an
ingress replica; ``--no-edge`` and ``--ray-ingress proxy`` measure the others.

It runs twice: with a 5 ms batch window and with batch_wait_timeout_s = 0 (the pruned variant's
default), because at low load a lone request waits the whole batching window for company.

With ``--capacity`` it measures throughput instead: texts per second of the pruned variant in
this process and through HTTP (``--concurrency`` requests in flight), at the same number of
texts per request, in interleaved rounds (results/serving_capacity.json). In-process runs as many
worker threads as the server has ingress replicas, each with its own one-thread session: the same
cores doing the same model work, without HTTP.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from service._platform import free_port
from service._stats import percentile

TEXT = "How long does one request spend outside the model?"


class OverheadRow(BaseModel):
    model_config = ConfigDict(extra="forbid")

    batch_wait_timeout_s: float
    p50_ms: dict[str, float]
    p90_ms: dict[str, float]
    overhead_p50_ms: float  # http_embed - in_process


class OverheadResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    created_at: datetime
    artifact_dir: str
    hardware: str
    runs: int
    text: str
    rows: list[OverheadRow]


def _pct(xs: list[float], q: float) -> float:
    """The ``q``-th percentile of ``xs`` (seconds) in ms, nearest rank."""
    return percentile(xs, q) * 1e3


@contextmanager
def _serve_instance(edge: bool) -> Iterator[str]:
    """A private Ray instance with Serve on a local port; yields the URL clients use.

    Ray's ingress is whatever the environment says (main() sets it as ``twinserve serve`` does);
    with ``edge`` the URL is an edge HAProxy's in front of Serve, as ``twinserve serve`` runs it.
    """
    import ray
    from ray import serve

    from service.serving.edge import EdgeConfig, serve_http

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        with serve_http("127.0.0.1", free_port(), EdgeConfig() if edge else None) as url:
            yield url
    finally:
        serve.shutdown()
        ray.shutdown()


def measure(artifacts: Path, runs: int, waits: list[float], edge: bool) -> OverheadResult:
    import httpx
    from ray import serve

    from service._platform import wait_ready
    from service._platform import hardware_description
    from service.model.backends import cpu_variant_backend
    from service.serving.app import build_app
    from service.serving.schemas import EmbeddingRequest, embedding_response

    backend = cpu_variant_backend(artifacts, threads=1)
    backend.load()
    body = {"input": TEXT, "model": "twinserve-pruned", "encoding_format": "float"}
    raw_body = json.dumps(body).encode()
    emb = backend.embed([TEXT])

    rows = []
    with _serve_instance(edge) as url:
        for wait in waits:
            cfg = {"artifact_dir": str(artifacts), "dense": {"num_cpus": 0.5},
                   "pruned": {"batch_wait_timeout_s": wait}, "router": {"num_cpus": 1}}
            serve.run(build_app(cfg), name="overhead", route_prefix="/")
            # Ray's HAProxy learns the new replicas a moment after serve.run returns (it answered a
            # 500 for the deleted ones): wait until the application answers through it.
            wait_ready(url, 120)
            with httpx.Client(base_url=url, timeout=30) as http:
                deadline, in_a_row = time.monotonic() + 60, 0
                while in_a_row < 20:  # every ingress replica in HAProxy's table, none of the deleted ones
                    assert time.monotonic() < deadline, "the application never answered 20 times in a row"
                    in_a_row = in_a_row + 1 if http.get("/v2/health/live").status_code == 200 else 0
                def embed_http() -> None:
                    r = http.post("/v1/embeddings", content=raw_body, headers={"content-type": "application/json"})
                    assert r.status_code == 200 and r.headers["x-variant"] == "pruned", r.text

                def serialise() -> None:
                    EmbeddingRequest.model_validate_json(raw_body)
                    embedding_response(emb, "twinserve-pruned", 12, "float")

                paths = {
                    "in_process": lambda: backend.embed([TEXT]),
                    "http_live": lambda: http.get("/v2/health/live").raise_for_status(),
                    "http_embed": embed_http,
                    "serialise": serialise,
                }
                for _ in range(20):  # warm up every path
                    for f in paths.values():
                        f()
                t = {k: [] for k in paths}
                for _ in range(runs):  # one of each per round: a noisy moment hits all paths alike
                    for k, f in paths.items():
                        s = time.perf_counter()
                        f()
                        t[k].append(time.perf_counter() - s)
            p50 = {k: round(_pct(v, 50), 3) for k, v in t.items()}
            rows.append(OverheadRow(batch_wait_timeout_s=wait, p50_ms=p50,
                                    p90_ms={k: round(_pct(v, 90), 3) for k, v in t.items()},
                                    overhead_p50_ms=round(p50["http_embed"] - p50["in_process"], 3)))
            serve.delete("overhead")
    return OverheadResult(created_at=datetime.now(UTC), artifact_dir=str(artifacts),
                          hardware=hardware_description(), runs=runs, text=TEXT, rows=rows)


class CapacityRow(BaseModel):
    model_config = ConfigDict(extra="forbid")

    texts_per_request: int
    in_process_texts_per_s: float  # median over rounds
    http_texts_per_s: float
    ratio: float  # http / in_process
    http_concurrency: int
    batch_wait_timeout_s: float  # the pruned replica's, as deployed (its default)


def _texts(n: int, offset: int = 0) -> list[str]:
    return [f"{TEXT} Request {offset + i} of the capacity run." for i in range(n)]


async def _http_throughput(url: str, batch: int, concurrency: int, seconds: float) -> float:
    import asyncio

    import aiohttp  # the cheaper client (see service.reliability): its CPU is taken from the server's 2 cores

    done = 0
    endpoint = f"{url.rstrip('/')}/v1/embeddings"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
        deadline = time.perf_counter() + seconds

        async def client(k: int) -> None:
            nonlocal done
            i = 0
            while time.perf_counter() < deadline:
                body = {"input": _texts(batch, k * 1000 + i), "model": "twinserve-pruned", "encoding_format": "base64"}
                async with http.post(endpoint, json=body) as r:
                    r.raise_for_status()
                    await r.read()
                done += batch
                i += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(client(k) for k in range(concurrency)))
        return done / (time.perf_counter() - t0)


def _in_process_throughput(backends: list, batch: int, seconds: float) -> float:
    """Texts per second of ``len(backends)`` threads each embedding ``batch`` texts per call."""
    from concurrent.futures import ThreadPoolExecutor

    deadline = time.perf_counter() + seconds

    def worker(k: int) -> int:
        n = 0
        while time.perf_counter() < deadline:
            backends[k].embed(_texts(batch, k * 100_000 + n))
            n += batch
        return n

    t0 = time.perf_counter()
    with ThreadPoolExecutor(len(backends)) as pool:
        done = sum(pool.map(worker, range(len(backends))))
    return done / (time.perf_counter() - t0)


def capacity(artifacts: Path, batches: list[int], seconds: float, rounds: int, concurrency: int,
             edge: bool) -> list[CapacityRow]:
    """Texts per second of the CPU variant in this process vs through HTTP, at the same batch sizes
    (texts per request), rounds interleaved. The server runs its default ingress replicas with one
    runtime thread each; in-process runs one worker thread per replica, each with a one-thread
    session (the runtimes release the GIL), so both use the same cores for the same model work."""
    import asyncio
    import statistics

    from ray import serve

    from service._platform import wait_ready
    from service.model.backends import cpu_variant_backend
    from service.serving.app import build_app
    from service.serving.config import ServingConfig

    cfg = ServingConfig.model_validate({"artifact_dir": str(artifacts), "dense": {"num_cpus": 0.5},
                                        "router": {"num_cpus": 1}})
    backends = [cpu_variant_backend(artifacts, threads=1) for _ in range(cfg.router.num_replicas)]
    for b in backends:
        b.load()
    with _serve_instance(edge) as url:
        serve.run(build_app(cfg), name="capacity", route_prefix="/")
        wait_ready(url, 120)
        rows = []
        for batch in batches:
            asyncio.run(_http_throughput(url, batch, concurrency, 2.0))  # warm-up
            local, remote = [], []
            for _ in range(rounds):
                local.append(_in_process_throughput(backends, batch, seconds))
                remote.append(asyncio.run(_http_throughput(url, batch, concurrency, seconds)))
            lo, re_ = statistics.median(local), statistics.median(remote)
            rows.append(CapacityRow(texts_per_request=batch, in_process_texts_per_s=round(lo, 1),
                                    http_texts_per_s=round(re_, 1), ratio=round(re_ / lo, 3),
                                    http_concurrency=concurrency,
                                    batch_wait_timeout_s=cfg.pruned.batch_wait_timeout_s))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifacts", type=Path, required=True)
    p.add_argument("--runs", type=int, default=300)
    p.add_argument("--waits", type=float, nargs="+", default=[0.005, 0.0], help="batch_wait_timeout_s values")
    p.add_argument("--out", type=Path, default=Path("results/serving_overhead.json"))
    p.add_argument("--capacity", action="store_true",
                   help="measure throughput, in-process vs HTTP at the same batch sizes, instead")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32], help="texts per request (--capacity)")
    p.add_argument("--seconds", type=float, default=10.0, help="seconds per measurement (--capacity)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds per batch size (--capacity)")
    p.add_argument("--concurrency", type=int, default=4, help="HTTP requests in flight (--capacity)")
    p.add_argument("--ray-ingress", choices=("haproxy", "proxy"), default="haproxy",
                   help="Ray Serve's ingress, as `twinserve serve --ray-ingress` (default: haproxy)")
    p.add_argument("--edge", action=argparse.BooleanOptionalAction, default=True,
                   help="put the edge HAProxy in front, as `twinserve serve` does (default: yes)")
    args = p.parse_args()
    if args.ray_ingress == "haproxy":  # before Ray is imported, as in `twinserve serve`
        import os

        from service.serving.edge import ray_haproxy_environment

        os.environ.update(ray_haproxy_environment())
    if args.capacity:
        rows = capacity(args.artifacts.resolve(), args.batches, args.seconds, args.rounds, args.concurrency,
                        args.edge)
        out = args.out.with_name("serving_capacity.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps([r.model_dump() for r in rows], indent=2) + "\n")
        for r in rows:
            print(f"{r.texts_per_request:3d} texts/request: in-process {r.in_process_texts_per_s:8.1f} texts/s, "
                  f"HTTP {r.http_texts_per_s:8.1f} texts/s ({r.ratio:.0%})")
        print(f"written to {out}")
        return
    result = measure(args.artifacts.resolve(), args.runs, args.waits, args.edge)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(result.model_dump_json(indent=2) + "\n")
    for row in result.rows:
        cells = "  ".join(f"{k} {v:.2f}" for k, v in row.p50_ms.items())
        print(f"batch wait {row.batch_wait_timeout_s * 1e3:.1f} ms  p50 ms: {cells}  "
              f"overhead {row.overhead_p50_ms:.2f}")
    print(f"written to {args.out} ({result.hardware})")


if __name__ == "__main__":
    main()
