"""scripts/gpu_bench.py without a GPU: its arguments, its refusal to measure without CUDA, and the capacity
file it writes from a sweep (made here, with a GPU named in it) that the report then reads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from service.cost.gpu import load_gpu_capacity
from service.cost.report import build_report
from tests.unit.test_report import CPU_BOX, CPU_SPECS, PRICES, T4_BOX, _capacity, _sweep

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu_bench.py"


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120, cwd=cwd,
                          check=False)


def test_help_says_what_it_writes_where():
    r = _run("--help")
    assert r.returncode == 0
    assert "capacity.json" in r.stdout and "--from-loadtest" in r.stdout and "--instance-type" in r.stdout


@pytest.mark.parametrize("args, message", [
    (["--warmup-s", "30", "--step-s", "20"], "--warmup-s must be in [0, --step-s)"),
    (["--rates", "0"], "must be > 0"),
    (["--port", "70000"], "--port must be a TCP port"),
])
def test_bad_arguments_exit_2_in_words(args, message):
    r = _run(*args)
    assert r.returncode == 2 and message in r.stderr


def test_refuses_to_measure_without_a_gpu(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the script would measure it")
    r = _run("--out-dir", str(tmp_path / "gpu"), "--artifacts", str(tmp_path / "none"))
    assert r.returncode == 2 and "no CUDA GPU visible" in r.stderr
    assert not (tmp_path / "none").exists() and not (tmp_path / "gpu" / "capacity.json").exists()


def test_from_loadtest_writes_the_file_the_report_reads(tmp_path):
    sweep = _sweep(tmp_path, "sweep.json", T4_BOX.model_copy(update={"instance_type": None}),
                    {"dense": [(100, 100.0, 20), (200, 199.0, 60), (400, 300.0, 500)]})
    out = tmp_path / "gpu"
    r = _run("--from-loadtest", str(sweep), "--instance-type", "g4dn.xlarge", "--out-dir", str(out))
    assert r.returncode == 0, r.stderr
    assert f"wrote {out / 'capacity.json'}" in r.stdout
    cap = load_gpu_capacity(out / "capacity.json")
    assert cap.kind == "twinserve-gpu-capacity" and cap.variant == "dense"
    assert cap.x_slo_rps == pytest.approx(199.0) and cap.gpu_model == "Tesla T4"
    assert cap.instance_type == "g4dn.xlarge" and cap.measurement_file == str(sweep)
    assert len(cap.measurement_sha256) == 64

    cpu = _capacity(tmp_path, "cpu.json", CPU_BOX, CPU_SPECS)
    report, _ = build_report(capacity=cpu, prices=PRICES, gpu_capacity=[out / "capacity.json"])
    (g4,) = [b for b in report.break_even if b.gpu_instance == "g4dn.xlarge"]
    assert g4.measured_x_slo_rps == pytest.approx(199.0) and g4.required_x_slo_rps > 0


def test_from_loadtest_refuses_a_cpu_sweep(tmp_path):
    sweep = _sweep(tmp_path, "cpu.json", CPU_BOX, {"dense": [(10, 10.0, 20)]})
    r = _run("--from-loadtest", str(sweep), "--out-dir", str(tmp_path / "gpu"))
    assert r.returncode == 2 and "named no GPU" in r.stderr
    assert not (tmp_path / "gpu" / "capacity.json").exists()
    r = _run("--from-loadtest", str(tmp_path / "missing.json"))
    assert r.returncode == 2 and "not found" in r.stderr
    doc = json.loads(sweep.read_text())
    assert doc["server"]["gpu_model"] is None
