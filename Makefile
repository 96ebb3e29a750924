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

.PHONY: setup system-packages run prune bench demo reliability audit test test-unit clean

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
	@if $(VENV)/bin/twinserve serve --help >/dev/null 2>&1; then \
	  $(VENV)/bin/twinserve serve --artifacts $(ARTIFACTS); \
	else \
	  echo "artifacts are ready in $(ARTIFACTS); serving (twinserve serve) is not built yet"; \
	fi

# End to end on this machine: prune (cached; `fast` unless PRESET=...), serve in the background,
# Prometheus, a Locust sweep of both variants, the cost report (results/demo/report/report.html).
demo: setup
	$(VENV)/bin/twinserve demo $(if $(PRESET),--preset $(PRESET))

# The long reliability scenarios on the default artifacts (~20 min): overload at 3x X_slo, SIGKILL of
# each variant's replica under load, a 10-minute soak. Writes results/reliability/summary.json.
reliability: setup $(ARTIFACTS)/manifest.json
	$(VENV)/bin/twinserve reliability --artifacts $(ARTIFACTS)

# Dependency vulnerability scan (also a test in `make test`); known findings: deploy/dependency-audit.yaml.
audit: setup
	$(PY) -m pytest tests/unit/test_dependency_audit.py -rs

test: setup
	$(PY) -m pytest tests

test-unit: setup
	$(PY) -m pytest tests/unit

clean:
	rm -rf $(VENV) artifacts results reports
