"""The open-loop load generator: requests leave on a schedule, whatever the server answers.

One generator for every measurement that offers load over HTTP: the reliability scenarios
(``service.reliability``), the capacity search and ``twinserve loadtest``'s fixed-step sweep
(``service.capacity_search``) and the peer benchmark (``service.peers``). Locust stays as the user-facing locustfile; its users are
closed-loop (each waits for its answer, so a slow server is offered less and a late send is
never timed), which reads p99 too good near saturation.

What it guarantees:

* **Schedule-based sends.** Request ``i`` is due at ``i / rate_rps`` seconds after the start.
  When the generator itself falls behind (a busy event loop, a starved core), it sends every
  overdue request at once and carries on; it never slows the schedule down.
* **Latency from the scheduled send time**, not from when the request actually left: time the
  generator lost counts against the answer, as it would for a real client. How late each send
  left (``lag_s``) is recorded, so a generator that could not keep up is visible.
* **Bounded** in count (``max_requests``) and time: no request is scheduled after
  ``duration_s``, each one is cut off ``timeout_s`` after it left, and the whole run is cut off
  ``timeout_s`` after the last send (what is still pending then counts as no answer).
* **Loopback targets only** (127.0.0.0/8, ::1, ``localhost``): this tool offers overload by
  design and must not be pointed at someone else's service.
* **Its own cost recorded**: the CPU time of the process that runs it, over the run, beside
  the whole machine's busy time (so a neighbour eating the cores shows up in the record).

aiohttp, not httpx: on the 2 cores the server shares, httpx's client cost 1.4-1.5 ms of CPU per
request against aiohttp's 0.6-0.8 (measured side by side at 150 req/s), CPU taken from the
service under test and latency added to every answer the generator times. uvloop is used when
installed (it is, with Ray Serve's uvicorn): less CPU per request again.

Percentiles everywhere in twinserve are :func:`service._stats.percentile`: nearest rank, always
a value that was observed.
"""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict

from service._stats import percentile

__all__ = [
    "SHAPES",
    "TEXTS",
    "Answer",
    "LoadRun",
    "LoadSummary",
    "RequestShape",
    "check_loopback",
    "drive",
    "embedding_bodies",
    "open_loop",
    "summarise",
]

TEXTS = (
    "Where is my parcel? It was due on Tuesday.",
    "The battery lasts two days, which is more than I expected.",
    "How do I reset my password?",
    "Great little cafe, friendly staff, slow service at lunch.",
    "Can I change the delivery address after ordering?",
    "The screen cracked after a week; I want a replacement.",
)


def check_loopback(url: str) -> None:
    """Raise ``ValueError`` unless ``url``'s host is this machine (loopback)."""
    host = urlparse(url).hostname or ""
    if host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise ValueError(f"the load generator only targets loopback addresses (127.0.0.1, ::1, localhost), "
                     f"got {url!r}: it offers overload on purpose")


# ---- request shapes ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class RequestShape:
    """How many texts each request carries: ``texts`` each, or the locustfile's mix (a
    ``multi_share`` of requests with 2..``max_texts`` texts, the rest one)."""

    name: str
    texts: int = 1
    multi_share: float = 0.0
    max_texts: int = 8

    def __post_init__(self) -> None:
        if self.texts < 1:
            raise ValueError(f"a request carries at least one text, got texts={self.texts}")
        if not 0.0 <= self.multi_share <= 1.0:
            raise ValueError(f"multi_share must be in [0, 1], got {self.multi_share}")
        if self.multi_share and self.max_texts < 2:
            raise ValueError(f"max_texts must be >= 2 when multi_share > 0, got {self.max_texts}")

    def counts(self, n: int, seed: int = 0) -> list[int]:
        """Texts per request for ``n`` requests (seeded: the same list for every server)."""
        if not self.multi_share:
            return [self.texts] * n
        rng = random.Random(seed)
        return [rng.randint(2, self.max_texts) if rng.random() < self.multi_share else 1 for _ in range(n)]

    @property
    def description(self) -> str:
        if self.multi_share:
            return (f"mix: {1 - self.multi_share:.0%} of requests 1 text, {self.multi_share:.0%} 2-{self.max_texts} "
                    "texts (the locustfile's default mix)")
        return f"{self.texts} text{'s' if self.texts > 1 else ''} per request"


SHAPES: dict[str, RequestShape] = {
    "1": RequestShape("1", texts=1),
    "8": RequestShape("8", texts=8),
    "mix": RequestShape("mix", multi_share=0.2, max_texts=8),
}


def embedding_bodies(shape: RequestShape, n: int, *, model: str | None = None, users: int = 0,
                     encoding_format: str | None = "base64", seed: int = 0) -> list[bytes]:
    """``n`` OpenAI ``/embeddings`` request bodies, JSON-encoded ahead of the run (no JSON work
    while the clock runs). One text goes as a plain string, several as a list; texts cycle
    through :data:`TEXTS`."""
    bodies = []
    k = 0
    for i, count in enumerate(shape.counts(n, seed)):
        texts = [TEXTS[(k + j) % len(TEXTS)] for j in range(count)]
        k += count
        body: dict = {"input": texts[0] if count == 1 else texts}
        if model:
            body["model"] = model
        if encoding_format:
            body["encoding_format"] = encoding_format
        if users:
            body["user"] = f"user-{i % users}"
        bodies.append(json.dumps(body).encode())
    return bodies


# ---- the generator ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Answer:
    scheduled_s: float  # when the request was due to leave, seconds since the load started
    latency_s: float  # from the scheduled send time to the answer read (or the failure)
    status: int  # HTTP status; 0 when no HTTP answer came (refused, reset, client timeout, cut off)
    variant: str = "none"  # X-Variant response header
    reason: str = "none"  # X-Route-Reason response header
    retry_after: bool = False
    lag_s: float = 0.0  # how late the request actually left (generator behind schedule)
    texts: int = 1

    @property
    def done_s(self) -> float:
        """When the answer (or failure) came, seconds since the load started."""
        return self.scheduled_s + self.latency_s


@dataclass(frozen=True)
class LoadRun:
    """Every answer of one open-loop run, and what the run cost the generator."""

    url: str
    rate_rps: float
    duration_s: float
    answers: list[Answer] = field(repr=False)
    wall_s: float  # from the first scheduled send to the last answer (or the cut-off)
    cpu_s: float  # process CPU time (user + system) the run took: the generator's own cost
    event_loop: str
    machine_busy_s: float = 0.0  # CPU time the whole machine was busy meanwhile (all processes, all cores)

    @property
    def cpu_cores(self) -> float:
        return self.cpu_s / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def machine_busy_cores(self) -> float:
        """Cores busy on the whole machine during the run: server, generator and anything else."""
        return self.machine_busy_s / self.wall_s if self.wall_s > 0 else 0.0


def _machine_busy_s() -> float:
    import psutil

    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


_runs_lock = threading.Lock()
_runs = 0  # open-loop runs in progress in this process (runs in threads may overlap)
_saved_threshold: tuple[int, int, int] = (700, 10, 10)


@contextmanager
def _no_full_collections() -> Iterator[None]:
    """No full (generation 2) garbage collection while the load runs; one after it.

    A full collection walks every live object; with a run's answers and tasks piling up it took
    90-100 ms of the generator's event loop every ~55 s at 288 req/s (sampled from /proc), and the
    sends it held back then left all at once: a burst of 30 requests that the edge, sized for a
    steady stream, partly shed, so a 5-minute soak read 0.24% errors the server did not cause.
    Young generations are still collected (cheap: they hold only new objects); cycles that reach
    the old generation wait for the collection at the end.
    """
    global _runs, _saved_threshold
    with _runs_lock:  # thresholds are process-wide: the first run in saves them, the last one out restores
        if _runs == 0:
            _saved_threshold = gc.get_threshold()
            gc.set_threshold(_saved_threshold[0], _saved_threshold[1], 1_000_000_000)
        _runs += 1
    try:
        yield
    finally:
        with _runs_lock:
            _runs -= 1
            last = _runs == 0
            if last:
                gc.set_threshold(*_saved_threshold)
        if last:
            gc.collect()


def _event_loop_runner() -> tuple[Callable, str]:
    try:
        import uvloop

        return uvloop.run, "uvloop"
    except ImportError:
        return asyncio.run, "asyncio"


async def _open_loop(url: str, rate_rps: float, bodies: Sequence[bytes], headers: dict[str, str],
                     timeout_s: float, texts: Sequence[int]) -> tuple[list[Answer], float]:
    import aiohttp

    answers: list[Answer] = []
    finished: set[int] = set()
    headers = {"Content-Type": "application/json", **headers}
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1024),
                                    timeout=aiohttp.ClientTimeout(total=timeout_s))
    async with session as http:
        async def one(i: int, due: float, t0: float) -> None:
            sent = time.perf_counter()
            try:
                async with http.post(url, data=bodies[i], headers=headers) as r:
                    await r.read()
            except (aiohttp.ClientError, TimeoutError, OSError):
                answers.append(Answer(due - t0, time.perf_counter() - due, 0, lag_s=sent - due, texts=texts[i]))
                finished.add(i)
                return
            answers.append(Answer(due - t0, time.perf_counter() - due, r.status, r.headers.get("x-variant", "none"),
                                  r.headers.get("x-route-reason", "none"), "retry-after" in r.headers,
                                  sent - due, texts[i]))
            finished.add(i)  # a task cancelled at the cut-off never gets here: counted there

        tasks: list[asyncio.Task] = []
        t0 = time.perf_counter() + 0.01
        i, n = 0, len(bodies)
        while i < n:
            now = time.perf_counter()
            while i < n and t0 + i / rate_rps <= now:  # everything due (all overdue ones at once)
                tasks.append(asyncio.create_task(one(i, t0 + i / rate_rps, t0)))
                i += 1
            if i < n:
                await asyncio.sleep(max(0.0, t0 + i / rate_rps - time.perf_counter()))
        # Each request has its own timeout; this cut-off only catches what is stuck past it.
        _, pending = await asyncio.wait(tasks, timeout=timeout_s + 1.0) if tasks else (set(), set())
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
            cut = time.perf_counter()
            for j in range(n):
                if j not in finished:
                    due = t0 + j / rate_rps
                    answers.append(Answer(due - t0, cut - due, 0, texts=texts[j]))
        wall = time.perf_counter() - t0
    return sorted(answers, key=lambda a: a.scheduled_s), wall


def open_loop(url: str, rate_rps: float, duration_s: float, bodies: Sequence[bytes],
              *, headers: dict[str, str] | None = None, timeout_s: float = 30.0, max_requests: int | None = None,
              texts: Sequence[int] | None = None) -> LoadRun:
    """POST to ``url`` at ``rate_rps`` for ``duration_s`` on a fixed schedule; every answer.

    ``bodies`` are the request bodies, in order (see :func:`embedding_bodies`); the run sends
    ``min(rate_rps * duration_s, max_requests)`` requests.
    ``texts`` (texts per request, for the record) defaults to 1 each. Blocks; runs its own
    event loop, so call it from a thread that has none running.
    """
    check_loopback(url)
    if rate_rps <= 0 or duration_s <= 0:
        raise ValueError(f"rate_rps and duration_s must be positive, got {rate_rps} and {duration_s}")
    n = int(rate_rps * duration_s + 1e-9)
    if max_requests is not None:
        n = min(n, max_requests)
    if len(bodies) < n:
        raise ValueError(f"{n} requests to send but only {len(bodies)} bodies")
    counts = list(texts) if texts is not None else [1] * n
    run, loop_name = _event_loop_runner()
    cpu0, busy0 = time.process_time(), _machine_busy_s()
    with _no_full_collections():
        answers, wall = run(_open_loop(url, rate_rps, bodies[:n], dict(headers or {}), timeout_s, counts))
    return LoadRun(url=url, rate_rps=rate_rps, duration_s=duration_s, answers=answers, wall_s=wall,
                   cpu_s=time.process_time() - cpu0, event_loop=loop_name, machine_busy_s=_machine_busy_s() - busy0)


def drive(url: str, rate_rps: float, duration_s: float, *, variant: str | None = None, users: int = 0,
          timeout_s: float = 30.0, shape: RequestShape = SHAPES["1"], path: str = "/v1/embeddings") -> list[Answer]:
    """Send ``rate_rps`` requests to twinserve's ``path`` for ``duration_s`` on a fixed schedule;
    every answer. ``variant`` pins the variant (``X-Variant``); ``users`` > 0 spreads requests
    over that many sticky user ids; otherwise requests are routed by weight."""
    headers = {"X-Variant": variant} if variant else {}
    n = int(rate_rps * duration_s + 1e-9)
    counts = shape.counts(n)
    return open_loop(f"{url.rstrip('/')}{path}", rate_rps, duration_s,
                     embedding_bodies(shape, n, users=users), headers=headers, timeout_s=timeout_s,
                     texts=counts).answers


# ---- the summary the reliability scenarios check ----------------------------------------------------

class LoadSummary(BaseModel):
    model_config = ConfigDict(frozen=True)

    offered_rps: float
    duration_s: float
    sent: int
    ok: int
    shed: int  # 429 or 503: the service said "not now"
    failed: int  # anything else: no answer, another 5xx, an unexpected 4xx
    shed_without_retry_after: int
    by_status: dict[str, int]
    by_route: dict[str, int]  # "variant/reason" of answered requests
    ok_p50_ms: float | None  # latency from the scheduled send time
    ok_p99_ms: float | None

    @property
    def failure_ratio(self) -> float:
        return self.failed / self.sent if self.sent else 0.0


def summarise(answers: Sequence[Answer], offered_rps: float, duration_s: float) -> LoadSummary:
    ok = [a.latency_s * 1000 for a in answers if a.status == 200]
    shed = [a for a in answers if a.status in (429, 503)]
    return LoadSummary(
        offered_rps=offered_rps, duration_s=duration_s, sent=len(answers), ok=len(ok), shed=len(shed),
        failed=sum(1 for a in answers if a.status not in (200, 429, 503)),
        shed_without_retry_after=sum(1 for a in shed if not a.retry_after),
        by_status={str(k): v for k, v in sorted(Counter(a.status for a in answers).items())},
        by_route={k: v for k, v in sorted(Counter(f"{a.variant}/{a.reason}" for a in answers
                                                  if a.status == 200).items())},
        ok_p50_ms=percentile(ok, 50) if ok else None, ok_p99_ms=percentile(ok, 99) if ok else None)
