"""Placement across nodes, from the chart's own config, on a real local multi-node Ray cluster.

Runs tests/integration/multinode_scenario.py in its own process (its own Ray cluster; the session's
single-node Ray instance in this process is untouched) with a time limit, then checks its report.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from service._platform import free_port

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("multinode_scenario.py")
LIMIT_S = 300  # a loaded 2-core machine; normally about a minute


def test_dense_on_the_gpu_stand_in_node_ingress_with_the_cpu_variant_on_the_cpu_pool_one_endpoint(tiny_artifacts, tmp_path):
    out = tmp_path / "multinode.json"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    cmd = [sys.executable, str(SCRIPT), "--artifacts", str(tiny_artifacts), "--port", str(free_port()),
           "--out", str(out)]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=LIMIT_S)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # the script tears its cluster down on SIGTERM
        try:
            output, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
        raise AssertionError(f"multi-node scenario over {LIMIT_S} s:\n{output[-6000:]}") from None
    assert proc.returncode == 0, output[-6000:]
    report = json.loads(out.read_text())

    # The nodes offered what the chart's groups advertise (read by Ray's KubeRay autoscaler code).
    types = report["node_types"]
    assert types["dense"]["resources"]["dense_pool"] == 1 and types["pruned"]["resources"]["pruned_pool"] == 1
    assert report["serve_args"]["dense"]["resources"] == {"dense_pool": 0.01}
    assert report["serve_args"]["router"]["resources"] == {"pruned_pool": 0.01}

    # Placement: dense replicas only on the GPU stand-in; the ingress replicas, which serve the CPU
    # variant, only on the CPU pool.
    placed = report["replica_nodes"]
    assert placed["Dense"] == ["dense"], placed
    assert set(placed) == {"Dense", "Router"}, placed
    assert len(placed["Router"]) == 2 and set(placed["Router"]) == {"pruned"}, placed

    # Within a minute of RUNNING, every ingress replica's probe has seen dense: routed requests stop
    # falling back (the warm-up ends on 8 in a row without one).
    warmup = report["warmup_reasons"]
    assert len(warmup) >= 8 and "fallback" not in warmup[-8:], (warmup, output[-6000:])

    # One endpoint, both variants answer: forced and routed by weight (0.5 / 0.5 over 14 requests).
    answers = report["answers"]
    assert all(a["status"] == 200 and len(a["dims"]) == 2 for a in answers), answers
    assert (answers[0]["variant"], answers[0]["reason"]) == ("dense", "override")
    assert (answers[1]["variant"], answers[1]["reason"]) == ("pruned", "override")
    routed = {a["variant"] for a in answers[2:] if a["reason"] == "weight"}
    assert routed == {"dense", "pruned"}, (answers, output[-6000:])
