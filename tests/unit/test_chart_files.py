"""The chart's copies in helm/twinserve/files/ are byte for byte their sources in deploy/ (scripts/chart_files.py)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "chart_files.py"


def _script():
    spec = importlib.util.spec_from_file_location("chart_files", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_chart_copies_equal_their_sources():
    stale = _script().drifted()
    assert not stale, f"the chart's copies differ from their sources; run `make chart-files`: {stale}"


def test_check_names_the_drift_and_the_fix(tmp_path, monkeypatch):
    chart_files = _script()
    source, copy = tmp_path / "source.yaml", tmp_path / "copy.yaml"
    source.write_text("a: 1\n")
    copy.write_text("a: 2\n")
    monkeypatch.setattr(chart_files, "ROOT", tmp_path)
    monkeypatch.setattr(chart_files, "COPIES", {copy: source})
    assert chart_files.drifted() == ["copy.yaml (from source.yaml)"]
    assert chart_files.main(["--check"]) == 1
    assert chart_files.main([]) == 0 and copy.read_bytes() == source.read_bytes()
    assert chart_files.main(["--check"]) == 0


def test_check_from_the_command_line():
    r = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, timeout=60,
                       check=False)
    assert r.returncode == 0, r.stderr
