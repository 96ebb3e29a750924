"""Render and lint helm/twinserve with the real Helm engine (the helm-python-sdk wheel, offline) for tests.

The engine is Go, loaded as a shared library; it runs in a child interpreter of its own. In the
test process, after OpenVINO had compiled a model (its threads and signal handlers), the Go
runtime aborted the whole pytest run (SIGQUIT) in the next Helm call.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "twinserve"
LOCAL_VALUES = ROOT / "deploy" / "local-values.yaml"


_HELM = """
import json, sys
import helm_python as helm
a = json.load(sys.stdin)
if a["op"] == "render":
    out = helm.Chart.load(a["chart"]).render(a["values"], name=a["name"], namespace=a["namespace"], is_install=True)
else:
    out = helm.lint(a["chart"], a["values"], strict=True, namespace=a["namespace"])
json.dump(out, sys.stdout)
"""


def _helm(op: str, values: dict[str, Any] | None, **kw) -> Any:
    args = {"op": op, "chart": str(CHART), "values": values or {}, **kw}
    r = subprocess.run([sys.executable, "-c", _HELM], input=json.dumps(args), capture_output=True, text=True,
                       timeout=120, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"helm {op} failed ({r.returncode}): {r.stderr[-3000:]}")
    return json.loads(r.stdout)


def lint(values: dict[str, Any] | None = None, namespace: str = "ml") -> dict:
    """``helm lint --strict`` with ``values`` over the chart's defaults: the engine's report."""
    return _helm("lint", values, namespace=namespace)


def render(values: dict[str, Any] | None = None, name: str = "ts", namespace: str = "ml") -> list[dict]:
    """Every manifest the chart renders with ``values`` over its defaults (NOTES.txt left out)."""
    out = _helm("render", values, name=name, namespace=namespace)
    return [d for path, text in sorted(out.items()) if path.endswith((".yaml", ".yml"))
            for d in yaml.safe_load_all(text) if d]


def rayservice(docs: list[dict]) -> dict:
    (rs,) = [d for d in docs if d["kind"] == "RayService"]
    return rs


def serve_config(docs: list[dict]) -> dict:
    """The RayService's serveConfigV2, parsed."""
    return yaml.safe_load(rayservice(docs)["spec"]["serveConfigV2"])


def ray_cluster_cr(docs: list[dict]) -> dict:
    """The RayCluster custom resource KubeRay would create from the RayService (what its autoscaler reads)."""
    rs = rayservice(docs)
    return {"apiVersion": "ray.io/v1", "kind": "RayCluster",
            "metadata": {"name": rs["metadata"]["name"] + "-raycluster", "namespace": "ml"},
            "spec": rs["spec"]["rayClusterConfig"]}


def node_types(docs: list[dict]) -> dict[str, dict]:
    """Ray resources per group, as Ray's own KubeRay autoscaler derives them from the RayCluster CR."""
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

    return _derive_autoscaling_config_from_ray_cr(ray_cluster_cr(docs))["available_node_types"]


def pod_specs(docs: list[dict]) -> dict[str, dict]:
    """Every pod spec in the render, by a readable name."""
    specs = {}
    for d in docs:
        if d["kind"] == "RayService":
            cluster = d["spec"]["rayClusterConfig"]
            specs["ray head"] = cluster["headGroupSpec"]["template"]["spec"]
            for g in cluster["workerGroupSpecs"]:
                specs[f"ray worker group {g['groupName']}"] = g["template"]["spec"]
        elif d["kind"] in ("Job", "Deployment", "StatefulSet", "DaemonSet"):
            specs[f"{d['kind']} {d['metadata']['name']}"] = d["spec"]["template"]["spec"]
    return specs


def local_values() -> dict:
    return yaml.safe_load(LOCAL_VALUES.read_text())
