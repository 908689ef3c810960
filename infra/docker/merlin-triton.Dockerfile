# syntax=docker/dockerfile:1.7
# The merlin image: NVIDIA's merlin-tensorflow (CUDA, TensorFlow 2.12 GPU build, NVTabular and merlin-models
# 23.08, tritonserver with the TensorFlow and python backends) plus this package. It runs the `ml/` steps --
# NVTabular fit/transform, Two-Tower and DLRM training and fine-tuning, ONNX export -- as GPU pods that the
# pipeline's MerlinRunner launches through Dagster Pipes (PipesK8sClient). Its tritonserver can serve the
# SavedModels directly; the recommender's ensemble is served by the pipeline image instead (infra/README.md,
# "Images": its python models need Feast, whose dependencies cannot share an environment with Merlin's).
#
# The base is Python 3.10 with its own GPU builds, so the merlin lock is not installed wholesale (it would
# swap in tensorflow-cpu); the few additions in infra/docker/merlin-extras.txt take their versions from the
# locks (infra/docker/pins.py).
#   docker build -f infra/docker/merlin-triton.Dockerfile -t recsys-merlin:0.1.0 .
ARG MERLIN_IMAGE=nvcr.io/nvidia/merlin/merlin-tensorflow:23.08
ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm

# ---- wheel: the package as a wheel and the pinned extras, built without touching the 15 GB base ---------
FROM ${PYTHON_IMAGE} AS wheel
WORKDIR /src
COPY requirements/merlin.lock.txt requirements/pipeline.lock.txt ./requirements/
COPY infra/docker/pins.py infra/docker/merlin-extras.txt ./
RUN mkdir /wheels \
 && python pins.py merlin-extras.txt requirements/merlin.lock.txt requirements/pipeline.lock.txt > /wheels/extras.txt
COPY pyproject.toml README.md ./
COPY recsys_assets ./recsys_assets
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# ---- runtime ---------------------------------------------------------------------------------------------
FROM ${MERLIN_IMAGE} AS runtime
COPY --from=wheel /wheels /tmp/wheels
# --no-deps: the base's numpy/TensorFlow/dask stay exactly as NVIDIA built them.
RUN python -m pip install --no-cache-dir --no-deps -r /tmp/wheels/extras.txt \
 && python -m pip install --no-cache-dir --no-deps /tmp/wheels/recsys_assets-*.whl \
 && rm -rf /tmp/wheels \
 && python -c "import dagster_pipes, boto3, nvtabular, recsys_assets.lib.artifacts"
# Non-root: NVIDIA's Triton-derived images already have uid 1000 (triton-server); create it otherwise.
RUN id -u 1000 >/dev/null 2>&1 || useradd --uid 1000 --create-home recsys
ENV PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TF_CPP_MIN_LOG_LEVEL=1 \
    TF_FORCE_GPU_ALLOW_GROWTH=true \
    HOME=/tmp
USER 1000
WORKDIR /tmp
# No CMD of ours: PipesK8sClient gives each pod its command (python -m recsys_assets.ml.<step>).
