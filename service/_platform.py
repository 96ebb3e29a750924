"""The machine twinserve runs on: what its CPU is, free ports, and child processes.

The bottom layer: it imports nothing from the rest of ``service`` (tests/unit/test_import_layers.py).

- Hardware: ``hardware_description()`` (the CPU model and logical CPU count, as benchmarks and
  capacity files record it) and ``cpu_flags()``, the one reader of ``/proc/cpuinfo``'s features in
  the vocabulary of :data:`CPU_FEATURES` (x86 kernels print them on a ``flags`` line, arm64 kernels
  on a ``Features`` line). Outside Linux nothing is read and the result is ``None`` (unknown),
  never ``[]`` (which would claim the CPU has none of them).
- Ports: ``free_port()``; readiness: ``poll_until()`` and ``wait_ready()`` (twinserve's
  ``/v2/health/ready``); ``metric_sum()`` reads a Prometheus text endpoint.
- Processes: :class:`ChildProcess` starts a command in its own session with its output in a log
  file, and stops it by a ladder of signals (each with its wait) that the caller names.
"""

from __future__ import annotations

import os
import platform
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

__all__ = [
    "CPU_FEATURES",
    "ChildProcess",
    "cpu_flags",
    "feature_names",
    "free_port",
    "hardware_description",
    "metric_sum",
    "parse_cpu_flags",
    "poll_until",
    "wait_ready",
]

# CPU features that decide how fast INT8 and fp32 GEMMs run (ONNX Runtime's MLAS and OpenVINO pick kernels by
# them), named as Linux's /proc/cpuinfo prints them (x86 `flags`, arm64 `Features`), with the name a person knows.
CPU_FEATURES: dict[str, str] = {
    "avx2": "AVX2",
    "avx512f": "AVX-512",
    "avx512_vnni": "AVX-512 VNNI",
    "avx_vnni": "AVX-VNNI",
    "avx512_bf16": "AVX-512 BF16",
    "amx_tile": "AMX",
    "amx_int8": "AMX-INT8",
    "amx_bf16": "AMX-BF16",
    "asimd": "NEON",
    "asimddp": "NEON dot product",
    "sve": "SVE",
    "sve2": "SVE2",
    "i8mm": "Arm INT8 matrix multiply (I8MM)",
    "bf16": "Arm BF16",
}


# ---------------------------------------------------------------------------------------------- hardware


def parse_cpu_flags(cpuinfo: str) -> list[str] | None:
    """The known GEMM features on the first ``flags``/``Features`` line, in ``CPU_FEATURES`` order
    (``None`` when there is no such line: unknown, not "has none")."""
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("flags", "Features"):
            have = set(value.split())
            return [f for f in CPU_FEATURES if f in have]
    return None


def cpu_flags(path: str | Path = "/proc/cpuinfo") -> list[str] | None:
    """This machine's GEMM features (:func:`parse_cpu_flags` of ``path``); ``None`` when unreadable."""
    try:
        return parse_cpu_flags(Path(path).read_text(errors="replace"))
    except OSError:
        return None


def feature_names(flags: list[str] | set[str]) -> str:
    """``['amx_int8', 'avx512_vnni']`` -> ``'AVX-512 VNNI, AMX-INT8'`` (catalog order)."""
    return ", ".join(CPU_FEATURES[f] for f in CPU_FEATURES if f in flags)


def hardware_description() -> str:
    """``'<CPU model name>, <n> logical CPUs visible'``."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs visible"


# ---------------------------------------------------------------------------------------------- network


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago (the OS picks it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def poll_until(ready: Callable[[], bool], timeout_s: float, *, poll_s: float, what: str,
               alive: Callable[[], bool] | None = None) -> None:
    """Call ``ready()`` every ``poll_s`` until it returns true.

    Raises ``RuntimeError`` as soon as ``alive()`` turns false (the process behind it died, so
    waiting longer is pointless) and ``TimeoutError`` after ``timeout_s``; both name ``what``.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        if alive is not None and not alive():
            raise RuntimeError(f"{what} exited before it was ready")
        if ready():
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready after {timeout_s:g} s")
        time.sleep(poll_s)


def wait_ready(url: str, timeout_s: float, *, poll_s: float = 0.5, alive: Callable[[], bool] | None = None) -> None:
    """Poll ``GET {url}/v2/health/ready`` until it answers 200 (see :func:`poll_until`)."""
    import httpx

    with httpx.Client(base_url=url, timeout=10) as http:
        def ready() -> bool:
            try:
                return http.get("/v2/health/ready").status_code == 200
            except httpx.HTTPError:
                return False  # not listening yet

        poll_until(ready, timeout_s, poll_s=poll_s, alive=alive, what=f"the server behind {url}")


def metric_sum(url: str, sample: str, **labels: str) -> float:
    """Sum of the samples named ``sample`` whose labels include ``labels``, scraped from the
    Prometheus text endpoint at ``url`` now (0 when there are none)."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    families = text_string_to_metric_families(httpx.get(url, timeout=10).text)
    return sum(s.value for f in families for s in f.samples
               if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()))


# ---------------------------------------------------------------------------------------------- processes

# One rung of a stop ladder: the signal, how long to wait for the exit after it, and whether it goes to
# the whole process group (the child's session) or to the child alone.
Rung = tuple[signal.Signals, float, bool]

# A server with a clean shutdown on Ctrl-C (twinserve serve, infinity): SIGINT, then SIGTERM, then the group's SIGKILL.
SERVER_LADDER: tuple[Rung, ...] = ((signal.SIGINT, 90, False), (signal.SIGTERM, 30, False), (signal.SIGKILL, 10, True))


class ChildProcess:
    """``cmd`` in its own session (so a stop can reach the whole group), stdout and stderr to ``log_path``.

    ``stop()`` climbs a ladder of signals until the process has exited; the log file is closed then.
    """

    def __init__(self, cmd: Sequence[str], log_path: str | Path, *, env: Mapping[str, str] | None = None,
                 cwd: str | Path | None = None):
        self.log_path = Path(log_path)
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        try:
            self.proc = subprocess.Popen(list(cmd), stdout=self._log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=None if env is None else dict(env), cwd=cwd,
                                         start_new_session=True)
        except BaseException:
            self._log.close()
            raise

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 5) -> str:
        try:
            return " | ".join(self.log_path.read_text(errors="replace").strip().splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, ladder: Sequence[Rung] = SERVER_LADDER) -> int | None:
        """Send each rung's signal in turn until the process has exited; the exit status (``None``
        if it outlived the ladder)."""
        try:
            for sig, wait_s, group in ladder:
                if self.proc.poll() is not None:
                    break
                try:
                    if group:
                        os.killpg(self.proc.pid, sig)
                    else:
                        self.proc.send_signal(sig)
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(wait_s)
                except subprocess.TimeoutExpired:
                    continue
        finally:
            self._log.close()
        return self.proc.poll()
