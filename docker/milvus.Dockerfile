# Milvus standalone for docker-compose.yml's `scale` profile (METAH_INDEX_BACKEND=milvus), built from the same
# Debian bookworm base as the other images: the `milvus` wheel of PyPI (the version the tests run, pinned in
# requirements-dev.txt) ships a standalone Milvus server with embedded etcd and local storage, started by its
# `milvus-server` command. Not Milvus's own image (milvusdb/milvus with etcd and MinIO beside it): the compose
# file must come up where only BASE_IMAGE can be had, and a two-core demo does not need two more services.
#
# What persists: everything, in the volume /var/lib/milvus (etcd's metadata, the segments, the message log; its
# logs/ too, rotated by Milvus). `docker compose down -v` deletes it; the metah indexer then rebuilds each model's
# collection from PostgreSQL (the source of truth) at the next start.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

# PIP_INDEX_URL and PIP_OPTIONS as in the metah image (Dockerfile): a mirror, or a wheelhouse offline.
ARG PIP_INDEX_URL=https://pypi.org/simple
ARG PIP_OPTIONS=""
ARG MILVUS_VERSION=2.3.5
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# A fixed uid/gid (10002), so that a bind-mounted data dir can be chowned to it.
# hadolint ignore=SC2086
RUN python3 -m venv /opt/milvus \
    && /opt/milvus/bin/pip install --no-cache-dir $PIP_OPTIONS --index-url "$PIP_INDEX_URL" "milvus==${MILVUS_VERSION}" \
    && groupadd --system --gid 10002 milvus \
    && useradd --system --uid 10002 --gid milvus --home-dir /var/lib/milvus --shell /usr/sbin/nologin milvus \
    && install -d -o milvus -g milvus -m 0750 /var/lib/milvus

USER 10002:10002
# The server's binaries are unpacked here at the first start (the wheel ships them compressed), next to its data.
VOLUME ["/var/lib/milvus"]
# 19530: the gRPC API (METAH_MILVUS_URI=http://milvus:19530); 9091: /healthz and metrics. Neither is published.
EXPOSE 19530 9091

# milvus-server stops the server on SIGINT (SIGTERM, then SIGKILL one second later: it gives no more time; Milvus
# replays its message log at the next start). On SIGTERM it would exit at once and leave the server behind.
STOPSIGNAL SIGINT
HEALTHCHECK --interval=5s --timeout=5s --start-period=120s --retries=10 \
    CMD ["python3", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:9091/healthz', timeout=4)"]

CMD ["/opt/milvus/bin/milvus-server", "--data", "/var/lib/milvus", "--proxy-port", "19530"]
