"""scripts/gpu_bench.py without a GPU: its arguments, its refusal to measure without CUDA, and the capacity
file it writes from an open-loop search (made here, with a GPU named in it) that the report then reads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from service.cost.gpu import load_gpu_capacity
from service.cost.report import build_report
from tests.unit.test_report import CPU_BOX, CPU_SPECS, PRICES, T4_BOX, _capacity

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu_bench.py"
GPU_SPEC = {"dense": [(100, 100.0, 20), (200, 199.0, 60), (400, 300.0, 500)]}


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120, cwd=cwd,
                          check=False)


def _search(tmp_path: Path, box=T4_BOX, spec=None) -> Path:
    """What the script writes to search.json on a GPU machine: `twinserve capacity --variant dense`'s file
    (searches at mix and 1 text per request), with the GPU named."""
    (path,) = _capacity(tmp_path, "search.json", box, {"dense": spec or GPU_SPEC["dense"]})
    return path


def test_help_says_what_it_writes_where():
    r = _run("--help")
    assert r.returncode == 0
    assert "capacity.json" in r.stdout and "search.json" in r.stdout and "--from-capacity" in r.stdout
    assert "--instance-type" in r.stdout and "open-loop" in r.stdout


@pytest.mark.parametrize("args, message", [
    (["--start-rps", "500", "--max-rps", "100"], "--start-rps must be <= --max-rps"),
    (["--start-rps", "0"], "must be > 0"),
    (["--port", "70000"], "--port must be a TCP port"),
    (["--shape", "3"], "--shape must be one of"),
    (["--gpu-model", "NVIDIA L4"], "--gpu-model goes with --from-capacity"),
])
def test_bad_arguments_exit_2_in_words(args, message):
    r = _run(*args)
    assert r.returncode == 2 and message in r.stderr


def test_refuses_to_measure_without_a_gpu(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the script would measure it")
    r = _run("--out-dir", str(tmp_path / "gpu"), "--artifacts", str(tmp_path / "none"))
    assert r.returncode == 2 and "no CUDA GPU visible" in r.stderr and "--from-capacity" in r.stderr
    assert not (tmp_path / "none").exists() and not (tmp_path / "gpu" / "capacity.json").exists()


def test_from_capacity_writes_the_file_the_report_reads(tmp_path):
    search = _search(tmp_path, T4_BOX.model_copy(update={"instance_type": None}))
    out = tmp_path / "gpu"
    r = _run("--from-capacity", str(search), "--instance-type", "g4dn.xlarge", "--out-dir", str(out))
    assert r.returncode == 0, r.stderr
    assert f"wrote {out / 'capacity.json'}" in r.stdout
    cap = load_gpu_capacity(out / "capacity.json")
    assert cap.kind == "twinserve-gpu-capacity" and cap.variant == "dense"
    assert cap.x_slo_rps == pytest.approx(200.0) and cap.gpu_model == "Tesla T4"  # the mix search, the costed shape
    assert cap.method.startswith("open-loop capacity search") and "pinned to dense" in cap.method
    assert cap.shape == "mix" and cap.instance_type == "g4dn.xlarge" and cap.measurement_file == str(search)
    assert len(cap.measurement_sha256) == 64

    cpu = _capacity(tmp_path, "cpu.json", CPU_BOX, CPU_SPECS)
    report, _ = build_report(capacity=cpu, prices=PRICES, gpu_capacity=[out / "capacity.json"])
    (g4,) = [b for b in report.break_even if b.gpu_instance == "g4dn.xlarge"]
    assert g4.measured_x_slo_rps == pytest.approx(200.0) and g4.required_x_slo_rps > 0
    assert "open-loop" in g4.measured_on

    r = _run("--from-capacity", str(search), "--shape", "1", "--out-dir", str(out))
    assert r.returncode == 0, r.stderr
    assert load_gpu_capacity(out / "capacity.json").x_slo_rps == pytest.approx(400.0)  # _capacity: 1 text at 2x


def test_from_capacity_refuses_a_cpu_search_unless_the_gpu_is_named(tmp_path):
    search = _search(tmp_path, CPU_BOX, [(10, 10.0, 20)])
    r = _run("--from-capacity", str(search), "--out-dir", str(tmp_path / "gpu"))
    assert r.returncode == 2 and "named no GPU" in r.stderr
    assert not (tmp_path / "gpu" / "capacity.json").exists()
    assert json.loads(search.read_text())["gpu_model"] is None
    r = _run("--from-capacity", str(search), "--gpu-model", "NVIDIA L4", "--out-dir", str(tmp_path / "gpu"))
    assert r.returncode == 0, r.stderr
    assert load_gpu_capacity(tmp_path / "gpu" / "capacity.json").gpu_model == "NVIDIA L4"


def test_from_capacity_refuses_what_is_not_a_dense_search(tmp_path):
    r = _run("--from-capacity", str(tmp_path / "missing.json"))
    assert r.returncode == 2 and "not found" in r.stderr
    (pruned,) = _capacity(tmp_path, "pruned.json", T4_BOX, {"pruned": [(10, 10.0, 20)]})
    r = _run("--from-capacity", str(pruned), "--out-dir", str(tmp_path / "gpu"))
    assert r.returncode == 2 and "not pinned to the dense variant" in r.stderr
    (tmp_path / "junk.json").write_text("{}")
    r = _run("--from-capacity", str(tmp_path / "junk.json"))
    assert r.returncode == 2 and "is not a twinserve capacity file" in r.stderr
