# The S3 server of docker-compose.yml's `scale` profile: a single-node Ceph (one monitor, one OSD, radosgw) in one
# container, built from the same Debian bookworm base as the other images, with Debian's own packages.
#
# Why Ceph? MinIO's community edition is no longer maintained; radosgw is, it is in Debian, and the tests already
# run the same single-node setup on loopback (tests/s3server.py). docker/ceph-entrypoint.sh says what it does at
# the first and at later starts. What persists: everything (the OSD is BlueStore on a sparse file in the volume
# /var/lib/ceph-s3, not the tests' in-memory memstore), so the images survive `docker compose down` / `up`; only
# `docker compose down -v` deletes them. One OSD and pool size 1: no replication, a demo of the S3 interface, not
# a durable store (for that: a real Ceph cluster, or AWS S3 itself: README "Scaling out").
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

# The ceph user with Debian's fixed uid/gid (64045) before the packages create one, so that USER is numeric and
# the generated S3 keys can be given to its group (docker/metah-secrets.sh generate-s3 --owner 10001:64045).
# bookworm's ceph 16.2 (security updates come through the bookworm-security source): not pinned to an exact
# version, so that a rebuild picks up the fixes.
# hadolint ignore=DL3008
RUN groupadd --system --gid 64045 ceph \
    && useradd --system --uid 64045 --gid ceph --home-dir /var/lib/ceph --shell /usr/sbin/nologin ceph \
    && apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ceph-mon ceph-osd radosgw \
    && rm -rf /var/lib/apt/lists/* \
    && install -d -o ceph -g ceph -m 0750 /var/lib/ceph-s3

COPY ceph-entrypoint.sh /usr/local/bin/ceph-entrypoint.sh
# The one-node Ceph settings, shared with the tests' S3 server (tests/s3server.py).
COPY ceph-single-node.conf /etc/ceph-s3/single-node.conf
# docker-compose.yml's wrapper of the entrypoint above: exports the generated S3 keys (AWS_ACCESS_KEY_ID,
# AWS_SECRET_ACCESS_KEY) from the metah-secrets volume when .env does not set them.
COPY metah-secrets.sh /usr/local/bin/metah-secrets

ENV CEPH_S3_DIR=/var/lib/ceph-s3 \
    CEPH_S3_PORT=7480

USER 64045:64045
# The monitor's and the OSD's data (the OSD's BlueStore file, sparse: it takes the space its objects take).
VOLUME ["/var/lib/ceph-s3"]
# radosgw's S3 API (plain HTTP: on the compose network only, not published).
EXPOSE 7480

# Healthy once radosgw answers HTTP (any status: GET / is an anonymous ListBuckets).
HEALTHCHECK --interval=5s --timeout=5s --start-period=120s --retries=10 \
    CMD ["python3", "-c", "import os, http.client as h; c = h.HTTPConnection('127.0.0.1', int(os.environ['CEPH_S3_PORT']), timeout=4); c.request('GET', '/'); c.getresponse()"]

ENTRYPOINT ["/usr/local/bin/ceph-entrypoint.sh"]
