# twinserve: two commands on a fresh clone — `make run` serves, `make test` tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
APT_PACKAGES := wordnet-base fortunes prometheus
MODEL_NAME := all-MiniLM-L6-v2
ARTIFACTS := artifacts/$(MODEL_NAME)

.PHONY: setup system-packages run prune bench demo reliability peers audit test test-unit clean image image-test gpu-bench chart-files

setup: system-packages $(STAMP)

# Debian packages: WordNet and fortunes (the default distillation corpus) and Prometheus (real metrics server).
# Installed when missing and we are root; otherwise say what is missing and carry on (the job
# falls back to Python's own docs; Prometheus tests then fail with the install hint).
system-packages:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian packages: $$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "warning: missing Debian packages ($$missing); install them with apt-get"; fi; \
	fi

# torch goes first, pinned, so nothing later resolves it to a CUDA build.
$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev]'
	touch $(STAMP)

$(ARTIFACTS)/manifest.json: | setup
	$(VENV)/bin/twinserve prune --preset fast --out $(ARTIFACTS)

prune: setup
	$(VENV)/bin/twinserve prune --preset $(or $(PRESET),default) --out $(ARTIFACTS)

bench: setup $(ARTIFACTS)/manifest.json
	$(VENV)/bin/twinserve bench --artifacts $(ARTIFACTS)

run: setup $(ARTIFACTS)/manifest.json
	$(VENV)/bin/twinserve serve --artifacts $(ARTIFACTS)

# End to end on this machine: prune (cached; `fast` unless PRESET=...), serve in the background,
# Prometheus, an open-loop capacity search per variant and request shape (all within 10 minutes),
# the cost report (results/demo/report/report.html).
demo: setup
	$(VENV)/bin/twinserve demo $(if $(PRESET),--preset $(PRESET))

# The long reliability scenarios on the default artifacts (~20 min): overload at 3x X_slo, SIGKILL of
# each variant's replica under load, a 10-minute soak. Writes results/reliability/summary.json.
reliability: setup $(ARTIFACTS)/manifest.json
	$(VENV)/bin/twinserve reliability --artifacts $(ARTIFACTS)

# The peer benchmark (loadtests/peers/README.md): infinity-emb in its own environment (.venv-peers),
# then twinserve's pruned variant and infinity on the same pruned.onnx, the same open-loop capacity
# search each, 1 and 8 texts per request (~20 min on 2 cores). Writes results/peers/.
.venv-peers/.installed:
	loadtests/peers/setup.sh .venv-peers

peers: setup .venv-peers/.installed $(ARTIFACTS)/manifest.json
	$(VENV)/bin/twinserve peers --artifacts $(ARTIFACTS)

# Dependency vulnerability scan (also a test in `make test`); known findings: deploy/dependency-audit.yaml.
audit: setup
	$(PY) -m pytest tests/network/test_dependency_audit.py -rs

test: setup
	$(PY) -m pytest tests

# The container image, built for real: buildah (vfs storage, chroot isolation) from a Debian bookworm base made
# locally with debootstrap (no registry is reachable here), torch's CPU wheel from WHEELS (default /opt/wheels).
# Needs root; installs buildah, podman, debootstrap, runc when missing. ~5 min. Not part of `make test`.
image:
	scripts/image.sh image

# Runs the image as UID 10001 with the artifacts mounted read-only and checks from outside, over HTTP, that
# /v2/health/ready answers 200 and /v1/embeddings answers for both variants (results/image-test/). ~3 min.
image-test: $(ARTIFACTS)/manifest.json
	scripts/image.sh test

# On a machine with an NVIDIA GPU: the dense variant's X_slo on it by the open-loop capacity search (results/gpu/
# search.json), written to results/gpu/capacity.json, which `twinserve report` reads. INSTANCE=g5.xlarge names the
# instance; GPU_BENCH_ARGS passes more (--help; --from-capacity FILE converts a search made earlier).
gpu-bench: setup
	$(PY) scripts/gpu_bench.py $(if $(INSTANCE),--instance-type $(INSTANCE)) $(GPU_BENCH_ARGS)

# The Helm chart's copies of deploy/grafana/twinserve-dashboard.json and deploy/prices.yaml (helm/twinserve/files/:
# Helm reads only files inside the chart). Edit the deploy/ files, then run this; tests/unit/test_chart_files.py fails
# on drift.
chart-files:
	$(PYTHON) scripts/chart_files.py

test-unit: setup
	$(PY) -m pytest tests/unit

clean:
	rm -rf $(VENV) artifacts results reports
