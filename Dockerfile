# DR4SR regeneration service: one image for the API and the workers.
#
#   docker build -t dr4sr .                                  # CPU torch
#   docker build -t dr4sr --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124 .
#
# torch is installed first and pinned, from the CPU index unless told
# otherwise, so resolving the project's dependencies never pulls a
# multi-GB CUDA build by accident.
FROM python:3.11-slim

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    DR4SR_DATA_DIR=/data \
    DR4SR_HOST=0.0.0.0 \
    DR4SR_PORT=8000

RUN pip install --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}"

WORKDIR /srv/dr4sr
COPY pyproject.toml README.md* ./
COPY app ./app
COPY workers ./workers
COPY models ./models
COPY migrations ./migrations
RUN pip install . && useradd --create-home --uid 10001 dr4sr && mkdir -p /data && chown dr4sr /data

USER dr4sr
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=5 \
    CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)" || exit 1

# Embedded mode by default; compose overrides the command per service.
CMD ["dr4sr", "serve"]
