"""helm/twinserve, checked with the real Helm engine (helm-python-sdk bundles Helm 4 and renders offline),
Ray's own Serve schema and Ray's own reading of a KubeRay RayCluster. No Kubernetes cluster is needed."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.chart import LOCAL_VALUES, ROOT, lint, node_types, pod_specs, render, rayservice, serve_config

CPU_ONLY = {"gpu": {"enabled": False}}
ALL_TOGGLES = {"metrics": {"podMonitor": {"enabled": True}, "prometheusRule": {"enabled": True},
                           "grafanaDashboard": {"enabled": True}}}


@pytest.mark.parametrize("values", [None, CPU_ONLY, ALL_TOGGLES, "local"], ids=["default", "cpu-only", "toggles",
                                                                               "local"])
def test_strict_lint_passes(values):
    if values == "local":
        values = yaml.safe_load(LOCAL_VALUES.read_text())
    report = lint(values)
    assert report["total_charts_linted"] == 1
    assert report["errors"] == [] and report["messages"] == [], report


@pytest.mark.parametrize(("values", "words"), [
    ({"routing": {"weights": {"dense": 1.5}}}, "routing.weights.dense"),
    ({"image": {"tag": "latest"}}, "image.tag"),
    ({"gpu": {"enabled": "yes"}}, "gpu.enabled"),
])
def test_strict_lint_rejects_bad_values_by_name(values, words):
    report = lint(values)
    text = json.dumps(report)
    assert report["errors"] or any(m["severity"] == 3 for m in report["messages"]), report
    assert words.split(".")[-1] in text, text


def test_serve_config_yaml_is_the_chart_rendered_with_local_values():
    """One source of truth: deploy/serve_config.yaml == serveConfigV2 with deploy/local-values.yaml."""
    shipped = yaml.safe_load((ROOT / "deploy" / "serve_config.yaml").read_text())
    rendered = serve_config(render(yaml.safe_load(LOCAL_VALUES.read_text())))
    assert rendered == shipped


@pytest.mark.parametrize("values", [None, CPU_ONLY], ids=["default", "cpu-only"])
def test_rendered_serve_config_validates_against_ray_and_twinserve(values):
    from ray.serve.schema import ServeDeploySchema

    from service.serving.config import RoutingConfig, ServingConfig

    docs = render(values)
    schema = ServeDeploySchema.model_validate(serve_config(docs))
    (app,) = schema.applications
    assert app.import_path == "service.serving.app:build_app"
    cfg = ServingConfig.model_validate(app.args)
    (router,) = [d for d in app.deployments if d.name == "Router"]
    RoutingConfig.model_validate(router.user_config)
    # Placement: dense on its pool, the ingress (which serves the CPU variant) on the CPU pool; the GPU
    # only with gpu.enabled.
    assert set(cfg.dense.resources) == {"dense_pool"} and set(cfg.router.resources) == {"pruned_pool"}
    assert cfg.dense.num_gpus == (0 if values else 1)
    assert str(cfg.artifact_dir) == "/artifacts/all-MiniLM-L6-v2"
    assert cfg.router.max_replicas == 8 and cfg.router.num_replicas >= 2  # the CPU variant autoscales


def test_deploy_serve_config_validates_against_ray_schema():
    from ray.serve.schema import ServeDeploySchema

    ServeDeploySchema.model_validate(yaml.safe_load((ROOT / "deploy" / "serve_config.yaml").read_text()))


def _containers(spec: dict) -> list[dict]:
    return spec.get("initContainers", []) + spec["containers"]


@pytest.mark.parametrize("values", [None, CPU_ONLY], ids=["default", "cpu-only"])
def test_only_the_dense_gpu_group_asks_for_a_gpu(values):
    docs = render(values)
    asking = {(name, c["name"]) for name, spec in pod_specs(docs).items() for c in _containers(spec)
              if "nvidia.com/gpu" in json.dumps(c.get("resources", {}))}
    groups = {g["groupName"]: g for g in rayservice(docs)["spec"]["rayClusterConfig"]["workerGroupSpecs"]}
    dense_pod = groups["dense"]["template"]["spec"]
    if values is None:
        assert asking == {("ray worker group dense", "ray-worker")}
        (ray_container,) = dense_pod["containers"]
        assert ray_container["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert dense_pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert dense_pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    else:
        assert asking == set()
        assert "nodeSelector" not in dense_pod and "tolerations" not in dense_pod
    # Nothing but the dense group's pods may tolerate the GPU taint.
    for name, spec in pod_specs(docs).items():
        if name != "ray worker group dense":
            assert "nvidia" not in json.dumps(spec.get("tolerations", [])) + json.dumps(spec.get("nodeSelector", {}))


def test_gpu_node_selector_and_tolerations_come_from_values():
    # Helm merges maps: a default key is removed with null (README, "a real GPU pool").
    docs = render({"gpu": {"nodeSelector": {"cloud.google.com/gke-accelerator": "nvidia-l4",
                                            "nvidia.com/gpu.present": None},
                           "tolerations": [{"key": "gpu", "operator": "Equal", "value": "l4", "effect": "NoSchedule"}]}})
    groups = {g["groupName"]: g for g in rayservice(docs)["spec"]["rayClusterConfig"]["workerGroupSpecs"]}
    spec = groups["dense"]["template"]["spec"]
    assert spec["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert spec["tolerations"] == [{"key": "gpu", "operator": "Equal", "value": "l4", "effect": "NoSchedule"}]


@pytest.mark.parametrize("values", [None, CPU_ONLY, ALL_TOGGLES], ids=["default", "cpu-only", "toggles"])
def test_every_container_has_requests_limits_and_runs_non_root_read_only(values):
    docs = render(values)
    specs = pod_specs(docs)
    assert {"ray head", "ray worker group dense", "ray worker group pruned"} <= set(specs)
    assert any(n.startswith("Job ") for n in specs), "the pruning Job is missing"
    for name, spec in specs.items():
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["automountServiceAccountToken"] is False, name
        for c in _containers(spec):
            where = f"{name}/{c['name']}"
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][kind]), f"{where}: no {kind}"
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True and sc["allowPrivilegeEscalation"] is False, where
            assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"], where
            assert sc["readOnlyRootFilesystem"] is True, where
            mounts = {m["mountPath"] for m in c["volumeMounts"]}
            if c["name"].startswith("ray-"):  # Ray writes only to /tmp and /dev/shm: both writable volumes
                assert {"/tmp", "/dev/shm", "/artifacts"} <= mounts, where
    # The autoscaler sidecar KubeRay injects into the head pod takes its settings from here.
    opts = rayservice(docs)["spec"]["rayClusterConfig"]["autoscalerOptions"]
    assert {"cpu", "memory"} <= set(opts["resources"]["limits"]) and opts["securityContext"]["runAsNonRoot"]


@pytest.mark.parametrize("values", [None, CPU_ONLY], ids=["default", "cpu-only"])
def test_ray_autoscaler_sees_the_pools_the_deployments_ask_for(values):
    """Ray's own KubeRay autoscaler code reads the rendered groups: what each node offers to Ray."""
    docs = render(values)
    types = node_types(docs)
    assert set(types) == {"headgroup", "dense", "pruned"}
    assert types["headgroup"]["resources"]["CPU"] == 0  # no replicas on the head
    dense, pruned = types["dense"], types["pruned"]
    assert dense["resources"]["dense_pool"] == 1 and "pruned_pool" not in dense["resources"]
    assert pruned["resources"]["pruned_pool"] == 1 and "dense_pool" not in pruned["resources"]
    assert dense["resources"].get("GPU", 0) == (0 if values else 1) and "GPU" not in pruned["resources"]
    assert (pruned["min_workers"], pruned["max_workers"]) == (1, 4)
    args = serve_config(docs)["applications"][0]["args"]
    # A pool node holds at least one replica of its deployment (the CPU pool: an ingress replica,
    # which serves the CPU variant).
    assert pruned["resources"]["CPU"] >= args["router"]["num_cpus"]
    assert dense["resources"]["CPU"] >= args["dense"]["num_cpus"]


def test_pruning_job_publishes_where_the_workers_read():
    docs = render()
    (job,) = [d for d in docs if d["kind"] == "Job"]
    (c,) = job["spec"]["template"]["spec"]["containers"]
    out = c["args"][c["args"].index("--out") + 1]
    assert c["command"] == ["twinserve", "prune"]
    assert out == serve_config(docs)["applications"][0]["args"]["artifact_dir"] == "/artifacts/all-MiniLM-L6-v2"
    (pvc,) = [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    claims = {name: {v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"] if "persistentVolumeClaim" in v}
              for name, spec in pod_specs(docs).items()}
    assert all(c == {pvc["metadata"]["name"]} for c in claims.values()), claims
    # A different build gets a new Job (Jobs are immutable); serveName lets replicas stay on the old one.
    docs2 = render({"prune": {"preset": "aggressive"}, "artifacts": {"name": "minilm-v2",
                                                                      "serveName": "all-MiniLM-L6-v2"}})
    (job2,) = [d for d in docs2 if d["kind"] == "Job"]
    assert job2["metadata"]["name"] != job["metadata"]["name"]
    assert serve_config(docs2)["applications"][0]["args"]["artifact_dir"] == "/artifacts/all-MiniLM-L6-v2"


def test_weights_shadow_rate_and_slo_come_from_values():
    docs = render({"routing": {"weights": {"dense": 0.9, "pruned": 0.1}, "shadowFraction": 0.05},
                   "slo": {"p99Ms": 250}, **ALL_TOGGLES})
    (router,) = serve_config(docs)["applications"][0]["deployments"]
    assert router == {"name": "Router", "user_config": {"weights": {"dense": 0.9, "pruned": 0.1},
                                                        "shadow_fraction": 0.05}}
    (rule,) = [d for d in docs if d["kind"] == "PrometheusRule"]
    assert "> 0.25" in rule["spec"]["groups"][0]["rules"][0]["expr"]
    (dash_cm,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-dashboard")]
    dash = json.loads(dash_cm["data"]["twinserve.json"])
    (slo_panel,) = [p for p in dash["panels"] if "SLO" in p["title"]]
    assert slo_panel["fieldConfig"]["defaults"]["thresholds"]["steps"][-1]["value"] == 0.25


def test_dashboard_configmap_is_the_deploy_dashboard():
    """One dashboard: the chart ships deploy/grafana/twinserve-dashboard.json, only the SLO line set from values
    (its default, 100 ms, is the value the source file carries)."""
    source = json.loads((ROOT / "deploy" / "grafana" / "twinserve-dashboard.json").read_text())
    (dash_cm,) = [d for d in render(ALL_TOGGLES) if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith(
        "-dashboard")]
    assert json.loads(dash_cm["data"]["twinserve.json"]) == source


def test_monitoring_is_behind_toggles_and_scrapes_every_ray_pod():
    kinds = {d["kind"] for d in render()}
    assert not kinds & {"PodMonitor", "PrometheusRule"}
    assert not any(d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-dashboard") for d in render())
    docs = render(ALL_TOGGLES)
    (pm,) = [d for d in docs if d["kind"] == "PodMonitor"]
    assert pm["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    selector = pm["spec"]["selector"]["matchLabels"]
    for name, spec in pod_specs(docs).items():
        if name.startswith("ray "):
            (ray_container,) = spec["containers"]
            assert {"name": "metrics", "containerPort": 8080} in ray_container["ports"], name
    groups = rayservice(docs)["spec"]["rayClusterConfig"]
    for g in [groups["headGroupSpec"], *groups["workerGroupSpecs"]]:
        assert selector.items() <= g["template"]["metadata"]["labels"].items()
        assert g["rayStartParams"]["metrics-export-port"] == "8080"


def test_prices_configmap_is_deploy_prices_yaml(tmp_path):
    from service.cost.prices import load_prices

    (cm,) = [d for d in render() if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-prices")]
    (tmp_path / "prices.yaml").write_text(cm["data"]["prices.yaml"])
    assert load_prices(tmp_path / "prices.yaml") == load_prices(ROOT / "deploy" / "prices.yaml")


def test_rolling_artifacts_or_weights_changes_only_serve_config_v2():
    """KubeRay applies a serveConfigV2 change to the running cluster; a rayClusterConfig change builds a new one."""
    before = rayservice(render())["spec"]
    for values in ({"artifacts": {"serveName": "minilm-v2"}},
                   {"routing": {"weights": {"dense": 0.9, "pruned": 0.1}, "shadowFraction": 0.1}}):
        after = rayservice(render(values))["spec"]
        assert after["rayClusterConfig"] == before["rayClusterConfig"], values
        assert after["serveConfigV2"] != before["serveConfigV2"], values


@pytest.mark.parametrize("values", [None, CPU_ONLY], ids=["default", "cpu-only"])
def test_serving_pods_read_artifacts_read_only_and_lease_through_a_writable_mount_gc_reads(values, monkeypatch):
    """The artifacts volume is read-only in every Ray pod (serving cannot alter the model); the pods that
    serve mount its lease directory a second time, read-write, and name it in TWINSERVE_ARTIFACT_LEASE_DIR.
    The prune Job, as the same UID, sees the whole volume read-write, and its gc reads the leases at the
    default lease directory of its artifacts root: the same directory of the volume."""
    from pathlib import Path

    from service.artifacts import lease_root
    from service.artifacts.publishing import LEASES_DIR

    docs = render(values)
    specs = pod_specs(docs)
    (job_name,) = [n for n in specs if n.startswith("Job ")]
    (job,) = specs[job_name]["containers"]
    job_root = Path({e["name"]: e.get("value") for e in job["env"]}["TWINSERVE_ARTIFACTS_ROOT"])
    monkeypatch.delenv("TWINSERVE_ARTIFACT_LEASE_DIR", raising=False)
    assert lease_root(job_root) == job_root / LEASES_DIR  # where the Job's gc reads the leases: <volume>/.leases
    (pvc,) = [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    claim = pvc["metadata"]["name"]
    serving = ["ray worker group dense", "ray worker group pruned"]
    for name, spec in specs.items():
        volumes = {v["name"]: v for v in spec["volumes"]}
        (c,) = spec["containers"]
        mounts = {m["name"]: m for m in c["volumeMounts"]}
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert volumes["artifacts"]["persistentVolumeClaim"]["claimName"] == claim, name
        if name == job_name:
            assert "readOnly" not in volumes["artifacts"]["persistentVolumeClaim"] and "readOnly" not in mounts[
                "artifacts"] and "subPath" not in mounts["artifacts"], name
            assert "TWINSERVE_ARTIFACT_LEASE_DIR" not in env and "leases" not in volumes
            continue
        # Every Ray pod: the artifacts read-only, on the volume and on the mount.
        assert volumes["artifacts"]["persistentVolumeClaim"]["readOnly"] is True, name
        assert mounts["artifacts"] == {"name": "artifacts", "mountPath": "/artifacts", "readOnly": True}, name
        for init in spec.get("initContainers", []):
            assert {m["name"]: m.get("readOnly") for m in init["volumeMounts"]}["artifacts"] is True, name
        if name not in serving:  # the head runs no replicas
            assert "leases" not in volumes and "TWINSERVE_ARTIFACT_LEASE_DIR" not in env, name
            continue
        assert volumes["leases"] == {"name": "leases", "persistentVolumeClaim": {"claimName": claim}}, name
        assert mounts["leases"] == {"name": "leases", "mountPath": "/leases", "subPath": LEASES_DIR}, name
        assert env["TWINSERVE_ARTIFACT_LEASE_DIR"] == "/leases", name
        # The init container (the pod's UID) makes .leases on the whole claim, so the kubelet never
        # makes the subPath root-owned, whether or not a Job ran since the last upgrade.
        (wait,) = spec["initContainers"]
        init_mounts = {m["name"]: m for m in wait["volumeMounts"]}
        assert "subPath" not in init_mounts["leases"] and not init_mounts["leases"].get("readOnly"), name
        made = f"{init_mounts['leases']['mountPath']}/{LEASES_DIR}"
        script = wait["args"][0]
        assert f"mkdir -p -m 1777 {made}" in script and script.index("manifest.json") < script.index("mkdir"), name
        assert spec["securityContext"]["runAsUser"] == specs[job_name]["securityContext"]["runAsUser"], name
    # Without the Job the workers still make it.
    docs = render({"prune": {"enabled": False}})
    for name in serving:
        (wait,) = pod_specs(docs)[name]["initContainers"]
        assert f"/{LEASES_DIR}" in wait["args"][0] and "manifest.json" in wait["args"][0], name


def test_the_lease_mount_path_comes_from_values():
    docs = render({"artifacts": {"leaseMountPath": "/var/run/twinserve/leases"}})
    (c,) = pod_specs(docs)["ray worker group pruned"]["containers"]
    assert {"name": "TWINSERVE_ARTIFACT_LEASE_DIR", "value": "/var/run/twinserve/leases"} in c["env"]
    assert {"name": "leases", "mountPath": "/var/run/twinserve/leases", "subPath": ".leases"} in c["volumeMounts"]
    report = lint({"artifacts": {"leaseMountPath": "leases"}})  # relative: refused
    assert report["errors"] or any(m["severity"] == 3 for m in report["messages"]), report
