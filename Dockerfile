# syntax=docker/dockerfile:1
#
# icgw in a container: the release wheel is built with maturin in a Python + Rust stage, then installed alone
# in a slim Python image that runs `python -m icgw` as an unprivileged user.
#
#   docker build -t icgw .
#   docker run -p 8080:8080 -p 9090:9090 -v icgw-data:/data icgw --ic-network-url https://icp-api.io
#
# Every flag can also be given as an ICGW_* environment variable (`python -m icgw --help`). The gateway's key
# (its principal) lives in the /data volume, so it survives new containers. `docker stop` sends SIGTERM: the
# gateway drains (clients get 1001, ws_close goes to each canister) within --drain-timeout (10 s), as long
# as docker's own stop timeout (10 s by default; `--stop-timeout`) leaves it that time. SIGHUP
# (`docker kill -s HUP`) reloads the TLS certificate files.

# The compiled core is built for one CPython version (no abi3), so both stages use the same one.
ARG PYTHON_VERSION=3.11
ARG DEBIAN_RELEASE=bookworm

FROM python:${PYTHON_VERSION}-slim-${DEBIAN_RELEASE} AS build
ARG RUST_VERSION=1.95.0
ENV RUSTUP_HOME=/usr/local/rustup \
    CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:$PATH \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
# curl fetches rustup; gcc and libc6-dev build blst's C and assembly (the BLS library).
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
RUN curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs \
        | sh -s -- -y --no-modify-path --profile minimal --default-toolchain "${RUST_VERSION}" \
    && rustc --version
RUN pip install "maturin>=1.16,<2"
WORKDIR /src
# Only what the wheel is made of (see .dockerignore).
COPY Cargo.toml Cargo.lock pyproject.toml README.md ./
COPY rust rust
COPY python python
# `locked = true` in pyproject.toml: the build uses Cargo.lock as it is. The native `linux` tag: this wheel is
# for the image below (same Debian, same CPython), not for PyPI. The cache mounts keep crates and compiled
# dependencies between builds.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    maturin build --release --interpreter python --compatibility linux --out /wheels \
    && ls -l /wheels

FROM python:${PYTHON_VERSION}-slim-${DEBIAN_RELEASE} AS runtime
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    ICGW_DATA_DIR=/data \
    ICGW_GATEWAY_ADDRESS=0.0.0.0:8080 \
    ICGW_PROMETHEUS_ENDPOINT=0.0.0.0:9090 \
    ICGW_HEALTHCHECK_URL=http://127.0.0.1:9090/healthz
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install /wheels/icgw-*.whl \
    && python -c "import icgw._core, icgw.gateway.app"
RUN groupadd --system --gid 10001 icgw \
    && useradd --system --uid 10001 --gid icgw --home-dir /data --no-create-home --shell /usr/sbin/nologin icgw \
    && mkdir -p /data \
    && chown icgw:icgw /data \
    && chmod 0700 /data
USER icgw:icgw
WORKDIR /data
# The gateway's key file (key_pair, mode 0600) and, with --log-file, the JSON logs under traces/.
VOLUME ["/data"]
# WebSocket clients; /metrics, /healthz and /readyz.
EXPOSE 8080 9090
# Liveness: the metrics endpoint answers /healthz while the process serves. Point ICGW_HEALTHCHECK_URL
# elsewhere when --prometheus-endpoint moves it (the check fails while the endpoint is disabled).
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['ICGW_HEALTHCHECK_URL'], timeout=2)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["python", "-m", "icgw"]
