# The load balancer of docker-compose.yml's `scale` profile: Debian's HAProxy, built from the same Debian bookworm
# base as the other images, in front of the N replicas of the scale-api service on one published port.
# docker/haproxy.cfg says how it finds them (compose's DNS) and which ones it sends requests to (/readyz).
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

# The haproxy user gets a fixed uid/gid (10003), so that USER is numeric: moved there after the package has made
# it (the package's `adduser --system` refuses a user made beforehand with a uid beyond the system range: "already
# exists, but is not a system user"). bookworm's haproxy 2.6 (security updates come through the bookworm-security
# source): not pinned to an exact version, so that a rebuild picks up the fixes.
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends haproxy \
    && rm -rf /var/lib/apt/lists/* \
    && groupmod --gid 10003 haproxy \
    && usermod --uid 10003 --gid 10003 haproxy \
    && getent passwd haproxy

COPY haproxy.cfg /etc/haproxy/haproxy.cfg
RUN haproxy -c -q -f /etc/haproxy/haproxy.cfg

USER 10003:10003
EXPOSE 8000

# /lb-health is answered by HAProxy itself (monitor-uri): up, whether or not a replica is ready yet.
HEALTHCHECK --interval=5s --timeout=5s --start-period=10s --retries=5 \
    CMD ["python3", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/lb-health', timeout=4)"]

# -W: master-worker (reloads, and the worker's exit status); -db: in the foreground, logging to stdout.
CMD ["haproxy", "-W", "-db", "-f", "/etc/haproxy/haproxy.cfg"]
