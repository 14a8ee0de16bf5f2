# PostgreSQL 15 for docker-compose.yml, built from the same Debian bookworm base as the metah image.
#
# Why not `image: postgres:15`? The compose file must come up on machines that cannot pull from a registry
# (scripts/build-base-image.sh makes the base image there). Building from BASE_IMAGE keeps one code path
# everywhere: one base image to pull (or build), Debian's own postgresql-15 package, and the same conventions as
# the official image (POSTGRES_USER / POSTGRES_PASSWORD / POSTGRES_DB on the first start, data in
# /var/lib/postgresql/data, fast shutdown on stop).
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

# The postgres user with a fixed uid/gid (999, as in the official image) before the package creates one, so that
# USER is numeric and a bind-mounted data dir can be chowned to it. create_main_cluster = false: the package
# would otherwise initdb a cluster in the image that nobody uses.
# Debian bookworm's postgresql-15 (security updates come through the bookworm-security source): not pinned to
# an exact version, so that a rebuild picks up the fixes.
# hadolint ignore=DL3008
RUN groupadd --system --gid 999 postgres \
    && useradd --system --uid 999 --gid postgres --home-dir /var/lib/postgresql --shell /bin/bash postgres \
    && mkdir -p /etc/postgresql-common/createcluster.d \
    && echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.d/no-main-cluster.conf \
    && apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql-15 \
    && rm -rf /var/lib/apt/lists/* \
    && install -d -o postgres -g postgres -m 0700 /var/lib/postgresql/data \
    && install -d -o postgres -g postgres -m 2775 /run/postgresql

COPY postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint.sh
# docker-compose.yml's `secrets` service (generates the secrets into a volume) and the wrapper of the entrypoint
# above that exports POSTGRES_PASSWORD from there when .env does not set it.
COPY metah-secrets.sh /usr/local/bin/metah-secrets

ENV PATH=/usr/lib/postgresql/15/bin:$PATH \
    PGDATA=/var/lib/postgresql/data \
    POSTGRES_USER=metah \
    POSTGRES_DB=metah

USER 999:999
VOLUME ["/var/lib/postgresql/data"]
EXPOSE 5432
# SIGINT is PostgreSQL's fast shutdown (SIGTERM would wait for every client to disconnect).
STOPSIGNAL SIGINT

# Over TCP like the clients; pg_isready needs no password.
HEALTHCHECK --interval=5s --timeout=5s --start-period=30s --retries=10 \
    CMD ["sh", "-c", "pg_isready -q -h 127.0.0.1 -U \"$POSTGRES_USER\" -d \"$POSTGRES_DB\""]

ENTRYPOINT ["/usr/local/bin/postgres-entrypoint.sh"]
