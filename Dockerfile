# syntax=docker/dockerfile:1
#
# token-broker container image.
#
#   docker build -t token-broker .
#   cp config/broker.example.yaml config/broker.yaml    # your policy; then edit it
#   docker run --read-only --tmpfs /tmp -p 8080:8080 --env-file .env \
#     -v "$PWD/config:/app/config:ro" token-broker     # serves /app/config/broker.yaml
#
# .env holds the secrets your policy names (see .env.example). The folder, not the
# file, is mounted so that an edited policy is picked up by the reload.
#
# docker-compose.yml runs it with the sandbox and Redis; deploy/kubernetes/ as a sidecar.
#
# Every runtime dependency comes from uv.lock with its hash, so the image holds what CI
# tested (only the wheel's build backend, hatchling, is resolved at build time). tests/deploy/test_install_path.py runs
# the same install steps (export, build the wheel, install both into a fresh venv).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder

ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_NO_CACHE=1 \
    UV_PYTHON_DOWNLOADS=never \
    UV_LINK_MODE=copy \
    UV_COMPILE_BYTECODE=1

RUN pip install --no-cache-dir uv==0.13.8

WORKDIR /src

# Dependencies first, so that a code change does not reinstall them. The otel extra is
# included: tracing is then one environment variable away (BROKER_OTEL_ENABLED).
COPY pyproject.toml uv.lock README.md ./
RUN uv export --frozen --no-dev --extra otel --no-emit-project --no-header --quiet --output-file requirements.txt \
    && uv venv --quiet --python /usr/local/bin/python3.11 /opt/venv \
    && uv pip install --quiet --python /opt/venv/bin/python --require-hashes --no-deps \
       --requirement requirements.txt

COPY app ./app
COPY clients/js ./clients/js
RUN uv build --quiet --wheel --out-dir /tmp/dist \
    && uv pip install --quiet --python /opt/venv/bin/python --no-deps /tmp/dist/*.whl


FROM ${PYTHON_IMAGE} AS runtime

# The root filesystem may be read-only: no bytecode is written at run time (it was
# compiled at install), and the only writable path the process needs is /tmp.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    BROKER_HOST=0.0.0.0 \
    BROKER_PORT=8080 \
    BROKER_CONFIG=/app/config/broker.yaml

RUN groupadd --system --gid 10001 broker \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin broker

COPY --from=builder /opt/venv /opt/venv

WORKDIR /app
USER 10001:10001
EXPOSE 8080

# No curl in a slim image: the interpreter that is already there does the probe.
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('BROKER_PORT', '8080') + '/healthz', timeout=2)"]

ENTRYPOINT ["token-broker"]
CMD ["serve"]
