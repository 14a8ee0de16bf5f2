#!/usr/bin/env bash
# A Debian bookworm base image built locally with debootstrap, for machines that cannot pull from any registry.
# It stands in for python:3.11-slim-bookworm (BASE_IMAGE in Dockerfile and docker/postgres.Dockerfile):
# Debian's python3 in bookworm is 3.11, the version the project's wheels are built for.
#
#   sudo scripts/build-base-image.sh [TAG]        # default TAG: metah-base:bookworm
#   BASE_IMAGE=metah-base:bookworm docker-compose build
#
# Needs root, debootstrap, a running docker engine and a reachable Debian mirror (DEBIAN_MIRROR, default
# http://deb.debian.org/debian). Takes a few minutes; the image is about 200 MB.
set -euo pipefail

TAG=${1:-metah-base:bookworm}
SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
PACKAGES=python3,python3-venv,python3-pip,python-is-python3,ca-certificates

[[ $(id -u) -eq 0 ]] || { echo "build-base-image: run as root (debootstrap needs it)" >&2; exit 1; }
command -v debootstrap >/dev/null || { echo "build-base-image: debootstrap is not installed" >&2; exit 1; }
docker info >/dev/null 2>&1 || { echo "build-base-image: the docker engine is not reachable" >&2; exit 1; }

rootfs=$(mktemp -d /tmp/metah-rootfs.XXXXXX)
cleanup() {
  # debootstrap may leave /proc mounted in the chroot when it fails half-way
  umount "$rootfs/proc" 2>/dev/null || true
  rm -rf "$rootfs"
}
trap cleanup EXIT

echo "build-base-image: debootstrap $SUITE (minbase + $PACKAGES) from $MIRROR"
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$rootfs" "$MIRROR" >"$rootfs.log" 2>&1 \
  || { tail -n 30 "$rootfs.log" >&2; exit 1; }
rm -f "$rootfs.log"

# The same apt sources as the official Debian images (updates and security included), no caches, no lists.
rm -f "$rootfs/etc/apt/sources.list"
cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $SECURITY_MIRROR
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
# Like the official images: apt keeps no downloaded .deb files and installs no documentation.
cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/var/log/*.log "$rootfs"/tmp/*

echo "build-base-image: importing as $TAG"
tar --numeric-owner -C "$rootfs" --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' -cf - . \
  | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    --message "debootstrap $SUITE minbase + $PACKAGES (scripts/build-base-image.sh)" \
    - "$TAG" >/dev/null
docker run --rm "$TAG" python3 -c 'import sys, venv; print("build-base-image: python", sys.version.split()[0])'
docker image ls "$TAG"
