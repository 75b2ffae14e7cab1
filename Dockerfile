# pyshelf as one container: gunicorn on port 3141, all state in the /data volume.
#   docker build -t pyshelf .
#   docker run -d -p 3141:3141 -v pyshelf-data:/data -e ADMIN_PASSWORD=... pyshelf
# BASE_IMAGE may be any Debian-based image with Python >= 3.11 on PATH as `python`.
ARG BASE_IMAGE=python:3.12-slim

# --- builder: a wheel for every pinned requirement, installed into /opt/venv ----------------
FROM ${BASE_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /build
COPY requirements.txt .
# Every requirement ships a wheel today. One that has to be compiled would get its compiler
# installed here (apt-get install build-essential), never in the runtime stage below.
RUN python -m pip wheel --quiet --wheel-dir /wheels -r requirements.txt \
    && python -m venv /opt/venv \
    && /opt/venv/bin/pip install --quiet --no-index --find-links /wheels -r requirements.txt \
    && /opt/venv/bin/pip uninstall --quiet --yes pip setuptools

# --- runtime: the venv, the code, a non-root user; no compilers, no secrets, no data ---------
FROM ${BASE_IMAGE}
ARG PYSHELF_UID=10001
ARG PYSHELF_GID=10001
ARG VERSION=dev
ARG REVISION=
LABEL org.opencontainers.image.title="pyshelf" \
      org.opencontainers.image.description="Private Python package index and caching PyPI mirror" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"

# pg_dump and psql: `pyshelf backup` and `restore` with a PostgreSQL DATABASE_URL.
RUN apt-get update \
    && apt-get install -y --no-install-recommends postgresql-client \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --gid "${PYSHELF_GID}" pyshelf \
    && useradd --uid "${PYSHELF_UID}" --gid pyshelf --no-create-home --no-log-init \
       --home-dir /data --shell /usr/sbin/nologin pyshelf \
    && install -d -o pyshelf -g pyshelf -m 0700 /data
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
COPY entrypoint.sh ./
COPY migrations ./migrations
COPY app ./app
# `pyshelf` on PATH: docker exec CONTAINER pyshelf user list
RUN ln -s /app/entrypoint.sh /usr/local/bin/pyshelf
# Bytecode compiled now, as root: the code stays read-only to the pyshelf user.
RUN /opt/venv/bin/python -m compileall -q /app
ENV PATH=/opt/venv/bin:$PATH \
    PYSHELF_PYTHON=/opt/venv/bin/python \
    PYSHELF_IN_CONTAINER=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DATA_DIR=/data \
    HOST=0.0.0.0 \
    PORT=3141
# Numeric, so that orchestrators can verify "runs as non-root" without reading /etc/passwd.
USER ${PYSHELF_UID}:${PYSHELF_GID}
VOLUME /data
EXPOSE 3141
# gunicorn's graceful shutdown: stop accepting, let requests in flight finish for up to
# GRACEFUL_TIMEOUT seconds (default 30; give `docker stop --time` a little more), exit 0.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["/app/entrypoint.sh", "healthcheck"]
ENTRYPOINT ["/app/entrypoint.sh"]
CMD ["serve"]
