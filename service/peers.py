"""``twinserve peers``: twinserve's CPU variant against infinity-emb serving the same graph.

Both servers get the same open-loop capacity search (``service.capacity_search``), one after
the other on the same machine, at 1 and 8 texts per request; X_slo per server and shape goes to
``peers.json`` and the latency-vs-load curves to ``peers.png``.

* **The peer**: infinity-emb (one FastAPI process, its optimum/ONNX Runtime engine) from its own
  virtual environment (``loadtests/peers/setup.sh`` makes ``.venv-peers``), serving the
  artifacts' ``pruned.onnx``. Its optimum engine wants a Hugging Face folder whose graph outputs
  ``last_hidden_state``; :func:`prepare_infinity_model` writes one with an ``Unsqueeze`` of
  ``sentence_embedding`` as that output, so ``--pooling-method cls`` takes back exactly the
  sentence embedding (infinity's extra L2 normalisation leaves a unit vector unchanged).
  infinity's own ONNX optimisation pass is switched off (``--onnx-disable-optimize``) and its
  sessions get twinserve's options (``loadtests/peers/launch_infinity.py``): the same graph,
  run the same way; only the serving path differs.
* **twinserve**: the URL given, or ``twinserve serve`` started here on the same artifacts;
  requests pinned to the pruned variant (``X-Variant: pruned``, model ``twinserve-pruned``).

Every server is checked before it is measured: its embeddings of a few texts are compared with
the other server's (cosine), so a benchmark of two different models cannot pass unnoticed.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import Field

from service._infinity import (
    INFINITY_MODEL_NAME,
    INFINITY_START_TIMEOUT_S,
    INFINITY_VERSION,
    ROOT,
    SETUP,
    infinity_server,
    prepare_infinity_model,
    sha256_file,
)
from service._schema import Strict, load_json
from service.capacity_search import (
    CPU_FEATURES,
    ProbeResult,
    SearchPlan,
    SearchResult,
    SloCriteria,
    find_capacity,
    plot_searches,
)
from service.loadgen import SHAPES, TEXTS, check_loopback

__all__ = [
    "INFINITY_VERSION",
    "PeerBenchResult",
    "ServerRun",
    "load_peers",
    "prepare_infinity_model",
    "run_peers",
]


ServerName = Literal["infinity", "twinserve"]


class ServerRun(Strict):
    name: ServerName
    version: str
    url: str = Field(description="the embeddings endpoint the load went to")
    model: str
    headers: dict[str, str]
    started_here: bool = Field(description="started by this benchmark (else: a URL given, already running)")
    background_cpu_cores: float = Field(
        description="whole machine busy at normal priority before this server started, cores: other work that "
                    "competes with the servers")
    background_niced_cores: float = Field(
        0.0, description="niced work running before this server started, cores: it yields to the servers")
    settings: dict[str, str | int | float | bool | None] = Field(description="threads, batching, graph options")
    log: str | None
    searches: dict[str, SearchResult] = Field(description="by request shape: '1', '8' (texts per request)")


class PeerBenchResult(Strict):
    schema_version: Literal[1] = 1
    kind: Literal["twinserve-peers"] = "twinserve-peers"
    created_at: datetime
    command: str
    hardware: str
    cpu_count: int
    cpu_flags: list[str] = Field(description=f"which of {', '.join(CPU_FEATURES)} the CPU has")
    artifacts: str
    graph_sha256: str = Field(description="pruned.onnx, the graph both servers ran")
    criteria: SloCriteria
    plan: SearchPlan
    shapes: dict[str, str]
    servers: list[ServerRun]
    embedding_agreement: float | None = Field(
        description="lowest cosine between the servers' embeddings of the same texts (1.0: same model)")
    notes: list[str]

    def x_slo(self) -> dict[str, dict[str, float | None]]:
        return {s.name: {shape: r.x_slo_rps for shape, r in s.searches.items()} for s in self.servers}


BUSY_MACHINE_CORES = 0.25  # background above this: the figures are not comparable with a quiet run


def _background_cores(seconds: float = 3.0) -> tuple[float, float]:
    """Cores busy on the whole machine over ``seconds`` while the benchmark itself is idle:
    (at normal priority, niced). Niced work yields the CPU to the servers; the rest competes."""
    import psutil

    def sample() -> tuple[float, float]:
        t = psutil.cpu_times()
        nice = getattr(t, "nice", 0.0)
        return sum(t) - t.idle - getattr(t, "iowait", 0.0) - nice, nice

    (b0, n0), t0 = sample(), time.monotonic()
    time.sleep(seconds)
    (b1, n1), dt = sample(), time.monotonic() - t0
    return (b1 - b0) / dt, (n1 - n0) / dt


def _embed(url: str, model: str, headers: dict[str, str], texts: Sequence[str]):
    import httpx
    import numpy as np

    r = httpx.post(url, json={"input": list(texts), "model": model, "encoding_format": "float"}, headers=headers,
                   timeout=60)
    r.raise_for_status()
    rows = sorted(r.json()["data"], key=lambda d: d["index"])
    emb = np.asarray([d["embedding"] for d in rows], dtype=np.float64)
    return emb / np.linalg.norm(emb, axis=1, keepdims=True)


def _niceness(session_id: int) -> dict[str, int]:
    """Niceness of the serving processes in one process session: what the scheduler gives them
    against other work (Ray starts its workers, Serve replicas included, at 15 by default)."""
    import psutil

    found: dict[str, int] = {}
    for p in psutil.process_iter(["cmdline", "nice"]):
        try:
            if os.getsid(p.pid) != session_id:
                continue
        except OSError:
            continue
        cmd = (p.info["cmdline"] or [""])[0]
        name = cmd if cmd.startswith("ray::ServeReplica") else ("main process" if p.pid == session_id else None)
        if name:
            found[name] = p.info["nice"]
    return dict(sorted(found.items()))


def _warm_up(url: str, model: str, headers: dict[str, str]) -> None:
    for n in (1, 8, 32):
        _embed(url, model, headers, [TEXTS[i % len(TEXTS)] for i in range(n)])


def _twinserve_settings(art: Path) -> dict:
    """What `twinserve serve --cpu-graph pruned.onnx` runs the CPU variant with (its defaults)."""
    from service.serving.config import ServingConfig

    cfg = ServingConfig(artifact_dir=art, pruned={"graph": "pruned.onnx"})
    return {"graph": cfg.pruned.graph, "ingress_replicas": cfg.router.num_replicas,
            "runtime_threads_per_replica": max(1, int(cfg.router.num_cpus)),
            "max_batch_size": cfg.pruned.max_batch_size, "batch_wait_timeout_s": cfg.pruned.batch_wait_timeout_s}


# ---- the benchmark ----------------------------------------------------------------------------------

def run_peers(*, artifacts: Path, out_dir: Path, twinserve_url: str | None = None,
              servers: Sequence[ServerName] = ("infinity", "twinserve"), shapes: Sequence[str] = ("1", "8"),
              plan: SearchPlan | None = None, criteria: SloCriteria | None = None,
              peer_venv: Path = Path(".venv-peers"), infinity_threads: int | None = None,
              infinity_batch_size: int = 32, infinity_nice: int = 0, idle_s: float = 5.0,
              command: str = "", say: Callable[[str], None] = print) -> PeerBenchResult:
    """Search X_slo of each server in ``servers`` (in that order, one at a time) at each request
    shape; write ``peers.json`` and ``peers.png`` to ``out_dir`` (rewritten after every search,
    so an interrupted run keeps what it measured). ``infinity_nice`` starts infinity at that
    niceness: 15 matches the Serve replicas Ray starts, when other work shares the machine."""
    from service._platform import cpu_flags, free_port, hardware_description
    from service.demo import SERVER_START_TIMEOUT_S, LocalServer
    from service.model.onnx_runtime import DISABLED_OPTIMIZERS

    plan = plan or SearchPlan()
    criteria = criteria or SloCriteria()
    for s in shapes:
        if s not in SHAPES:
            raise ValueError(f"unknown request shape {s!r}; known: {', '.join(SHAPES)}")
    if twinserve_url:
        check_loopback(twinserve_url)
    python = peer_venv / "bin" / "python"
    if "infinity" in servers and not (peer_venv / ".installed").is_file():
        raise FileNotFoundError(f"no peer environment at {peer_venv}: create it with `{SETUP.relative_to(ROOT)} "
                                f"{peer_venv}` (installs infinity-emb {INFINITY_VERSION}; a few minutes)")
    out_dir.mkdir(parents=True, exist_ok=True)
    threads = infinity_threads or os.cpu_count() or 1
    notes = [(f"one server at a time on the same machine as the load generator ({os.cpu_count()} CPUs); "
              "the generator's CPU use is in every probe (generator_cpu_cores)")]
    if twinserve_url:
        notes.append(f"twinserve was already running at {twinserve_url} (not started here): it stayed up, idle, "
                     "while infinity was measured")
    result = PeerBenchResult(
        created_at=datetime.now(UTC), command=command, hardware=hardware_description(),
        cpu_count=os.cpu_count() or 1, cpu_flags=cpu_flags() or [], artifacts=str(artifacts.resolve()),
        graph_sha256=sha256_file(artifacts / "pruned.onnx"), criteria=criteria, plan=plan,
        shapes={s: SHAPES[s].description for s in shapes}, servers=[], embedding_agreement=None, notes=notes)
    reference = {}

    def save() -> None:
        tmp = out_dir / "peers.json.tmp"
        tmp.write_text(result.model_dump_json(indent=2) + "\n")
        tmp.replace(out_dir / "peers.json")
        panels = {SHAPES[s].description: {r.name: r.searches[s] for r in result.servers if s in r.searches}
                  for s in shapes}
        panels = {k: v for k, v in panels.items() if v}
        if panels:
            plot_searches(panels, out_dir / "peers.png",
                          title=f"open-loop capacity search, {result.hardware}; SLO p99 <= {criteria.slo_p99_ms:g} ms")

    def on_probe(name: str, shape: str) -> Callable[[ProbeResult], None]:
        def report(p: ProbeResult) -> None:
            p99 = f"{p.latency.p99_ms:8.1f} ms" if p.latency else "     n/a   "
            say(f"  {name:9} {shape:>3} texts  {p.phase:7} {p.offered_rps:7.1f} req/s offered  "
                f"{p.answered_rps:7.1f} answered  p99 {p99}  errors {p.error_ratio:6.2%}  "
                f"CPU generator {p.generator_cpu_cores:.2f} machine {p.machine_cpu_cores:.2f} cores  "
                + ("pass" if p.passed else "; ".join(p.reasons)))
        return report

    for name in servers:
        server = None
        background, niced = _background_cores()
        if background > BUSY_MACHINE_CORES:
            note = (f"before {name} started, the machine was already busy with other work ({background:.2f} of "
                    f"{os.cpu_count()} cores): its figures are not comparable with a quiet machine's")
            result.notes.append(note)
            say(f"warning: {note}")
        if name == "infinity":
            # absolute: infinity joins the model id with the ONNX file's path it found under it
            model_dir = prepare_infinity_model(artifacts, (out_dir / "infinity-model").resolve())
            port = free_port()
            say(f"infinity-emb: serving {model_dir} on 127.0.0.1:{port}, {threads} ONNX Runtime threads "
                f"(log {out_dir / 'infinity.log'})")
            server = infinity_server(python, model_dir, port, out_dir / "infinity.log", threads,
                                      DISABLED_OPTIMIZERS, infinity_batch_size, infinity_nice)
            url, model, headers = f"{server.url}/embeddings", INFINITY_MODEL_NAME, {}
            version = subprocess.run([str(python), "-c", "import infinity_emb; print(infinity_emb.__version__)"],
                                     capture_output=True, text=True, check=False).stdout.strip() or "unknown"
            settings = {"engine": "optimum", "ort_intra_op_threads": threads, "batch_size": infinity_batch_size,
                        "onnx_optimize": False, "disabled_optimizers": ",".join(DISABLED_OPTIMIZERS),
                        "pooling": "cls over last_hidden_state = Unsqueeze(sentence_embedding)"}
            log = str(out_dir / "infinity.log")
        else:
            if twinserve_url:
                base = twinserve_url.rstrip("/")
            else:
                import secrets

                # The same graph as infinity's: pruned.onnx on ONNX Runtime, whatever the manifest serves.
                server = LocalServer(artifacts, free_port(), free_port(), out_dir / "twinserve.log",
                                     secrets.token_urlsafe(16), extra_args=("--cpu-graph", "pruned.onnx"))
                say(f"twinserve: `twinserve serve` on {server.url} (log {out_dir / 'twinserve.log'})")
                base = server.url
            url, model, headers = f"{base}/v1/embeddings", "twinserve-pruned", {"X-Variant": "pruned"}
            from importlib.metadata import version as dist_version

            version = dist_version("twinserve")
            settings = _twinserve_settings(artifacts)
            log = str(out_dir / "twinserve.log") if server else None
        run = ServerRun(name=name, version=version, url=url, model=model, headers=headers,
                        started_here=server is not None, background_cpu_cores=background,
                        background_niced_cores=niced, settings=settings, log=log,
                        searches={})
        result.servers.append(run)
        try:
            if server is not None:
                server.wait_ready(INFINITY_START_TIMEOUT_S if name == "infinity" else SERVER_START_TIMEOUT_S)
            if server is not None:
                run.settings["niceness"] = json.dumps(_niceness(server.proc.pid))
            _warm_up(url, model, headers)
            reference[name] = _embed(url, model, headers, TEXTS)
            for shape in shapes:
                say(f"{name}: capacity search at {SHAPES[shape].description} (budget {plan.max_total_s:g} s)")
                r = find_capacity(url, shape=SHAPES[shape], plan=plan, criteria=criteria, headers=headers,
                                  model=model, on_probe=on_probe(name, shape))
                run.searches[shape] = r
                x = f"{r.x_slo_rps:.1f} req/s" if r.x_slo_rps is not None else "none"
                say(f"{name}: X_slo {x} at {SHAPES[shape].description} ({r.status}"
                    + (f"; {'; '.join(r.notes)}" if r.notes else "") + ")")
                save()
        finally:
            if server is not None:
                server.stop()
                time.sleep(idle_s)  # let the machine go quiet before the next server
    if len(reference) == 2:
        a, b = reference.values()
        result.embedding_agreement = float((a * b).sum(axis=1).min())
        if result.embedding_agreement < 0.99:
            result.notes.append(f"the servers' embeddings disagree (lowest cosine {result.embedding_agreement:.4f}): "
                                "they did not run the same model")
    save()
    say(f"peer benchmark written to {out_dir / 'peers.json'} and {out_dir / 'peers.png'}")
    return result


def load_peers(path: Path) -> PeerBenchResult:
    return load_json(path, PeerBenchResult, what="twinserve peer benchmark result",
                     missing="`twinserve peers` (make peers) writes one")
