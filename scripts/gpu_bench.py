"""Measure the dense variant's capacity on this machine's GPU and write the file the cost report reads.

    make gpu-bench                                     # = python scripts/gpu_bench.py
    python scripts/gpu_bench.py --instance-type g5.xlarge --start-rps 32 --max-total-s 600
    python scripts/gpu_bench.py --from-capacity results/gpu/search.json --instance-type g5.xlarge

On a machine with an NVIDIA GPU (CUDA torch installed: the default `docker build`, or `pip install
torch==2.13.0` from PyPI), it builds the artifacts with the `fast` preset if they are absent, serves them
with the dense replica on the GPU (`twinserve serve --dense-gpus N`) on a loopback port, finds the dense
variant's X_slo by the open-loop capacity search (`twinserve capacity`'s: pinned with the model name
`twinserve-dense` and `X-Variant: dense`, the same criteria and request shape as the CPU figures), stops the
server and writes:

* ``<out-dir>/search.json``: the full search (``service.capacity_search.CapacityRun``, as `twinserve capacity`
  writes it, with the GPU and the instance type named): every probe, its percentiles, rates and errors;
* ``<out-dir>/capacity.json``: the GPU capacity file (``service.cost.gpu.GpuCapacity``): dense X_slo,
  the GPU model and count, the instance type, the host CPU and its GEMM features, the method (open-loop
  search), and the sha256 of the search it comes from. ``twinserve report`` reads ``results/gpu/capacity.json``
  when it exists and puts the figure beside the break-even requirement of every instance with that GPU.

``--from-capacity`` only converts a search already made on the GPU machine (no GPU needed). Exit codes:
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
        epilog="Finds dense's X_slo by the open-loop capacity search (as `twinserve capacity`), pinned to dense. "
               "Writes <out-dir>/search.json and <out-dir>/capacity.json (default results/gpu/); "
               "`twinserve report` reads results/gpu/capacity.json when it exists.")
    ap.add_argument("--artifacts", type=Path, default=ROOT / "artifacts" / "all-MiniLM-L6-v2",
                    help="artifact directory; built with `twinserve prune --preset fast` when absent")
    ap.add_argument("--out-dir", type=Path, default=Path("results") / "gpu", help="where both files go")
    ap.add_argument("--instance-type", help="cloud instance type of this machine (e.g. g5.xlarge); the report "
                                            "then counts the figure as measured on that instance")
    ap.add_argument("--gpus", type=_positive, default=1.0, help="GPUs for the dense replica (default 1)")
    ap.add_argument("--shape", default="mix",
                    help="request shape searched (1, 8 or mix; default mix, the shape the report costs)")
    ap.add_argument("--start-rps", type=_positive, default=32.0, help="first offered rate of the ramp (default 32)")
    ap.add_argument("--max-rps", type=_positive, default=4096.0, help="highest rate tried (default 4096)")
    ap.add_argument("--max-total-s", type=_positive, default=600.0, help="time budget of the search, s (default 600)")
    ap.add_argument("--slo-p99-ms", type=_positive, default=100.0, help="p99 SLO, ms (default 100, as the CPU runs)")
    ap.add_argument("--port", type=int, default=18400, help="loopback port to serve on (default 18400)")
    ap.add_argument("--max-in-flight", type=int, default=64,
                    help="edge admission limit for the GPU server (default 64; the 2-core default of 8 would shed "
                         "a GPU's load before the GPU is busy)")
    ap.add_argument("--ready-timeout-s", type=_positive, default=600.0, help="wait for readiness, s")
    ap.add_argument("--from-capacity", type=Path,
                    help="convert this search (search.json, or `twinserve capacity --variant dense` made on the GPU "
                         "machine) instead of measuring; needs no GPU")
    ap.add_argument("--gpu-model", help="with --from-capacity: the GPU, when the search file does not name one")
    args = ap.parse_args(argv)
    from service.loadgen import SHAPES

    if args.shape not in SHAPES:
        ap.error(f"--shape must be one of {', '.join(SHAPES)}, got {args.shape}")
    if args.start_rps > args.max_rps:
        ap.error(f"--start-rps must be <= --max-rps, got {args.start_rps:g} > {args.max_rps:g}")
    if not 0 < args.port < 65536:
        ap.error(f"--port must be a TCP port, got {args.port}")
    if args.gpu_model is not None and args.from_capacity is None:
        ap.error("--gpu-model goes with --from-capacity (a measurement names the GPU it ran on)")
    return args


def write_capacity(search: Path, out_dir: Path, *, shape: str, instance_type: str | None, gpus: float,
                   gpu_model: str | None = None) -> Path:
    """``<out_dir>/capacity.json`` (a GpuCapacity) from the search file ``search`` (a CapacityRun)."""
    from service._schema import load_json
    from service.capacity_search import CapacityRun
    from service.cost.gpu import GpuCapacityError, gpu_capacity_from_search

    run = load_json(search, CapacityRun, what="twinserve capacity file", error=GpuCapacityError,
                    missing="run this script on the GPU machine, or `twinserve capacity --variant dense` there")
    update = {k: v for k, v in (("instance_type", instance_type), ("gpu_model", gpu_model)) if v}
    cap = gpu_capacity_from_search(run.model_copy(update=update), search, shape=shape, gpu_count=max(1, round(gpus)))
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / "capacity.json"
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(cap.model_dump_json(indent=2) + "\n")
    tmp.replace(out)
    return out


def _gpu_or_exit() -> str:
    try:
        import torch
    except ImportError:
        sys.exit("gpu_bench: torch is not installed (make setup)")
    if not torch.cuda.is_available():
        print(f"gpu_bench: no CUDA GPU visible (torch {torch.__version__}, torch.cuda.is_available() is False). "
              "Run this on the GPU machine with a CUDA build of torch, or convert a search made there with "
              "--from-capacity.", file=sys.stderr)
        sys.exit(2)
    return torch.cuda.get_device_name(0)


def measure(args: argparse.Namespace) -> Path:
    """Serve the artifacts with dense on the GPU, search dense's X_slo, write ``<out-dir>/search.json``."""
    from service._platform import ChildProcess, hardware_description, wait_ready
    from service.capacity_search import SearchPlan, SloCriteria, capacity_run, find_capacity
    from service.loadgen import SHAPES

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
        plan = SearchPlan(start_rps=args.start_rps, max_rps=args.max_rps, max_total_s=args.max_total_s)
        headers = {"X-Variant": "dense"}
        print(f"open-loop capacity search of dense at {SHAPES[args.shape].description} "
              f"(<= {plan.max_total_s:g} s)", flush=True)
        result = find_capacity(
            f"{url}/v1/embeddings", shape=SHAPES[args.shape], plan=plan,
            criteria=SloCriteria(slo_p99_ms=args.slo_p99_ms), headers=headers, model="twinserve-dense",
            on_probe=lambda p: print(f"  {p.phase:7} {p.offered_rps:7.1f} req/s: p99 "
                                     + (f"{p.latency.p99_ms:.1f} ms" if p.latency else "n/a")
                                     + f", {'pass' if p.passed else '; '.join(p.reasons)}", flush=True))
    finally:
        serve_proc.stop(((signal.SIGINT, 60, True), (signal.SIGKILL, 60, True)))
    run = capacity_run(f"{url}/v1/embeddings", {args.shape: result}, headers=headers, variant="dense",
                       hardware=f"{hardware_description()}, {gpu}", gpu_model=gpu, instance_type=args.instance_type)
    out = args.out_dir / "search.json"
    out.write_text(run.model_dump_json(indent=2) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_capacity is not None:
        search = args.from_capacity
    else:
        try:
            search = measure(args)
        except (RuntimeError, TimeoutError, subprocess.CalledProcessError) as e:
            print(f"gpu_bench: {e} (server log: {args.out_dir / 'serve.log'})", file=sys.stderr)
            return 1
    from service.cost.gpu import GpuCapacityError

    try:
        out = write_capacity(search, args.out_dir, shape=args.shape, instance_type=args.instance_type,
                             gpus=args.gpus, gpu_model=args.gpu_model)
    except GpuCapacityError as e:
        print(f"gpu_bench: {e}", file=sys.stderr)
        return 2
    cap = json.loads(out.read_text())
    x = cap["x_slo_rps"]
    print(f"dense X_slo on {cap['gpu_model']}: {'none' if x is None else f'{x:.1f} req/s'}; wrote {out} "
          f"(from {search}); `twinserve report` reads it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
