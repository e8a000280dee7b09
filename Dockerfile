# segswap on a CUDA runtime: the API server with the diffusion engine.
#   docker build -t segswap .
#   docker run --gpus all -p 8000:8000 -e SEGSWAP_API_KEYS=change-me -v "$PWD/weights:/weights:ro" -v segswap-data:/data segswap
# Installs with scripts/install.sh, the same script the README and CI use.
#
# scripts/check_image.sh builds it on another base (BASE: any Debian or Ubuntu with apt), composite engine only
# (INSTALL_FLAGS empty: no torch), up to the smoke stage, which serves and swaps the example inside the build.
ARG BASE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04

FROM ${BASE} AS segswap

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 segswap

WORKDIR /app
COPY pyproject.toml README.md ./
COPY scripts scripts
COPY examples/make_examples.py examples/
COPY pipelines pipelines
COPY server server

# PyPI's Linux torch wheel is the CUDA build, which is what this image wants.
ARG INSTALL_FLAGS=--diffusion
ENV SEGSWAP_VENV=/opt/venv SEGSWAP_TORCH="torch==2.13.0"
RUN scripts/install.sh ${INSTALL_FLAGS} && mkdir /data && chown -R segswap:segswap /app /data

ENV PATH=/opt/venv/bin:$PATH \
    SEGSWAP_HOST=0.0.0.0 \
    SEGSWAP_PORT=8000 \
    SEGSWAP_WEIGHTS_DIR=/weights \
    SEGSWAP_DATA_DIR=/data \
    HF_HUB_OFFLINE=1
USER segswap
VOLUME /weights /data
EXPOSE 8000
# Loading and warming a model set takes minutes on first start: give it a long start period.
HEALTHCHECK --interval=15s --timeout=5s --start-period=600s --retries=3 \
    CMD ["python3", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health/ready', timeout=4).status != 200)"]
STOPSIGNAL SIGTERM
CMD ["segswap", "serve"]

# Built only with --target smoke (scripts/check_image.sh): the image, as its user, serves on the composite
# engine and swaps the README's example; a failure fails the build. A new SMOKE_RUN runs it again on a cached image.
FROM segswap AS smoke
ARG SMOKE_RUN=
RUN python3 scripts/smoke_image.py

# The default target: the image above, unchanged.
FROM segswap
