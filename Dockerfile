# pyshelf as one container: gunicorn on port 3141, all state in the /data volume.
ARG BASE_IMAGE=python:3.12-slim

FROM ${BASE_IMAGE} AS builder
WORKDIR /build
COPY requirements.txt .
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check -r requirements.txt

FROM ${BASE_IMAGE}
ARG PYSHELF_UID=10001
ARG PYSHELF_GID=10001
LABEL org.opencontainers.image.title="pyshelf" \
      org.opencontainers.image.description="Private Python package index and caching PyPI mirror" \
      org.opencontainers.image.licenses="MIT"
RUN groupadd --system --gid ${PYSHELF_GID} pyshelf \
    && useradd --system --uid ${PYSHELF_UID} --gid pyshelf --home-dir /data --shell /usr/sbin/nologin pyshelf \
    && mkdir -p /data && chown pyshelf:pyshelf /data
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
COPY entrypoint.sh gunicorn.conf.py ./
COPY app ./app
COPY migrations ./migrations
ENV PATH=/opt/venv/bin:$PATH \
    PYSHELF_PYTHON=/opt/venv/bin/python \
    PYTHONDONTWRITEBYTECODE=1 \
    DATA_DIR=/data \
    PORT=3141
USER pyshelf
VOLUME /data
EXPOSE 3141
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/opt/venv/bin/python", "-c", "import os,urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/+status' % os.environ.get('PORT', '3141'), timeout=4)"]
ENTRYPOINT ["/app/entrypoint.sh"]
CMD ["serve"]
