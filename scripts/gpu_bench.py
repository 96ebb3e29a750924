#!/usr/bin/env python3
"""Measure the dense variant's capacity on this machine's GPU and write the file the cost report reads.

    make gpu-bench                                     # = python scripts/gpu_bench.py
    python scripts/gpu_bench.py --instance-type g5.xlarge --rates 25 50 100 200 400 800
    python scripts/gpu_bench.py --from-loadtest results/gpu/loadtest.json --instance-type g5.xlarge

On a machine with an NVIDIA GPU (CUDA torch installed: the default `docker build`, or `pip install
torch==2.13.0` from PyPI), it builds the artifacts with the `fast` preset if they are absent, serves them
with the dense replica on the GPU (`twinserve serve --dense-gpus N`) on a loopback port, sweeps the dense
variant pinned with X-Variant (`twinserve loadtest`'s Locust sweep, the same criteria as the CPU
figures), stops the server and writes:

* ``<out-dir>/loadtest.json``: the full sweep (per step percentiles, rates, errors, generator CPU);
* ``<out-dir>/capacity.json``: the GPU capacity file (``service.cost.gpu.GpuCapacity``): dense X_slo,
  the GPU model and count, the instance type, the host CPU and its GEMM features, the method, and the
  sha256 of the sweep it comes from. ``twinserve report`` reads ``results/gpu/capacity.json`` when it
  exists and puts the figure beside the break-even requirement of every instance with that GPU.

``--from-loadtest`` only converts a sweep already made on the GPU machine (no GPU needed). Exit codes:
0 written, 2 no GPU or bad arguments, 1 the measurement failed.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing it


def _positive(text: str) -> float:
    v = float(text)
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return v


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="gpu_bench.py", description=__doc__.split("\n\n")[0],
        epilog="Writes <out-dir>/loadtest.json and <out-dir>/capacity.json (default results/gpu/); "
               "`twinserve report` reads results/gpu/capacity.json when it exists.")
    ap.add_argument("--artifacts", type=Path, default=ROOT / "artifacts" / "all-MiniLM-L6-v2",
                    help="artifact directory; built with `twinserve prune --preset fast` when absent")
    ap.add_argument("--out-dir", type=Path, default=Path("results") / "gpu", help="where both files go")
    ap.add_argument("--instance-type", help="cloud instance type of this machine (e.g. g5.xlarge); the report "
                                            "then counts the figure as measured on that instance")
    ap.add_argument("--gpus", type=_positive, default=1.0, help="GPUs for the dense replica (default 1)")
    ap.add_argument("--rates", type=_positive, nargs="+", default=[25, 50, 100, 200, 400, 800],
                    help="offered request rates of the sweep, req/s (default: 25 .. 800)")
    ap.add_argument("--step-s", type=_positive, default=20.0, help="length of each step, s (default 20)")
    ap.add_argument("--warmup-s", type=float, default=5.0, help="start of each step left out, s (default 5)")
    ap.add_argument("--slo-p99-ms", type=_positive, default=100.0, help="p99 SLO, ms (default 100, as the CPU runs)")
    ap.add_argument("--port", type=int, default=18400, help="loopback port to serve on (default 18400)")
    ap.add_argument("--max-in-flight", type=int, default=64,
                    help="edge admission limit for the GPU server (default 64; the 2-core default of 8 would shed "
                         "a GPU's load before the GPU is busy)")
    ap.add_argument("--ready-timeout-s", type=_positive, default=600.0, help="wait for readiness, s")
    ap.add_argument("--from-loadtest", type=Path,
                    help="convert this sweep (made on the GPU machine) instead of measuring; needs no GPU")
    args = ap.parse_args(argv)
    if args.warmup_s < 0 or args.warmup_s >= args.step_s:
        ap.error(f"--warmup-s must be in [0, --step-s), got {args.warmup_s} with --step-s {args.step_s}")
    if not 0 < args.port < 65536:
        ap.error(f"--port must be a TCP port, got {args.port}")
    return args


def write_capacity(loadtest: Path, out_dir: Path, *, instance_type: str | None, gpus: float) -> Path:
    from service.cost.gpu import gpu_capacity_from_loadtest
    from service.cost.loadtest import load_loadtest

    result = load_loadtest(loadtest)
    if instance_type and result.server.instance_type != instance_type:
        result.server.instance_type = instance_type
    cap = gpu_capacity_from_loadtest(result, loadtest, gpu_count=max(1, round(gpus)))
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / "capacity.json"
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(cap.model_dump(mode="json"), indent=2) + "\n")
    tmp.replace(out)
    return out


def _gpu_or_exit() -> str:
    try:
        import torch
    except ImportError:
        sys.exit("gpu_bench: torch is not installed (make setup)")
    if not torch.cuda.is_available():
        print(f"gpu_bench: no CUDA GPU visible (torch {torch.__version__}, torch.cuda.is_available() is False). "
              "Run this on the GPU machine with a CUDA build of torch, or convert a sweep made there with "
              "--from-loadtest.", file=sys.stderr)
        sys.exit(2)
    return torch.cuda.get_device_name(0)


def measure(args: argparse.Namespace) -> Path:
    from service._platform import ChildProcess, wait_ready
    from service.cost.loadtest import SloCriteria, SweepPlan, local_server_hardware, run_sweep

    gpu = _gpu_or_exit()
    twinserve = [sys.executable, "-m", "service.cli"]
    if not (args.artifacts / "manifest.json").is_file():
        print(f"building artifacts in {args.artifacts} (twinserve prune --preset fast)", flush=True)
        subprocess.run([*twinserve, "prune", "--preset", "fast", "--out", str(args.artifacts)], check=True, cwd=ROOT)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    url = f"http://127.0.0.1:{args.port}"
    serve_proc = ChildProcess([*twinserve, "serve", "--artifacts", str(args.artifacts), "--port", str(args.port),
                               "--dense-gpus", f"{args.gpus:g}", "--max-in-flight", str(args.max_in_flight)],
                              args.out_dir / "serve.log", cwd=ROOT)
    try:
        print(f"serving on {url} with dense on {gpu}; waiting for readiness", flush=True)
        wait_ready(url, args.ready_timeout_s, poll_s=2.0, alive=serve_proc.alive)
        plan = SweepPlan(rates_rps=args.rates, step_duration_s=args.step_s, warmup_s=args.warmup_s)
        server = local_server_hardware(url, gpu_model=gpu, instance_type=args.instance_type)
        out = args.out_dir / "loadtest.json"
        run_sweep(url, variants=("dense",), plan=plan, slo=SloCriteria(slo_p99_ms=args.slo_p99_ms), server=server,
                  out=out, on_step=lambda v, s: print(f"  {v} {s.offered_rps:g} req/s: p99 "
                                                      f"{s.latency.p99_ms if s.latency else float('nan'):.1f} ms, "
                                                      f"{'pass' if s.passed else 'fail'}", flush=True))
        return out
    finally:
        serve_proc.stop(((signal.SIGINT, 60, True), (signal.SIGKILL, 60, True)))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_loadtest is not None:
        loadtest = args.from_loadtest
        if not loadtest.is_file():
            print(f"gpu_bench: {loadtest} not found", file=sys.stderr)
            return 2
    else:
        try:
            loadtest = measure(args)
        except (RuntimeError, TimeoutError, subprocess.CalledProcessError) as e:
            print(f"gpu_bench: {e} (server log: {args.out_dir / 'serve.log'})", file=sys.stderr)
            return 1
    from service.cost.gpu import GpuCapacityError
    from service.cost.loadtest import LoadTestError

    try:
        out = write_capacity(loadtest, args.out_dir, instance_type=args.instance_type, gpus=args.gpus)
    except (GpuCapacityError, LoadTestError) as e:
        print(f"gpu_bench: {e}", file=sys.stderr)
        return 2
    cap = json.loads(out.read_text())
    x = cap["x_slo_rps"]
    print(f"dense X_slo on {cap['gpu_model']}: {'none' if x is None else f'{x:.1f} req/s'}; wrote {out} "
          f"(from {loadtest}); `twinserve report` reads it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
