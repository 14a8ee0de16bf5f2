#!/bin/bash
# Entry point of docker/ceph.Dockerfile: a single-node Ceph whose radosgw serves the S3 API on 0.0.0.0:CEPH_S3_PORT
# (7480) with one S3 user, metah, whose keys are AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (required; in
# docker-compose.yml the generated ones of the metah-secrets volume, or S3_ACCESS_KEY / S3_SECRET_KEY from .env).
#
# The one-node settings (no cephx, crc mode, one OSD with pool size 1) are docker/ceph-single-node.conf, shared with
# the tests' S3 server (tests/s3server.py, which also explains tcp_nodelay on beast); the object store differs:
# BlueStore on a sparse file of CEPH_S3_DISK_GB (default 50, fixed at the first start) rather than memstore, so
# that the objects persist in CEPH_S3_DIR (the volume). The monitor and the OSD talk over the container's loopback;
# only radosgw listens beyond it.
#
# First start (no CEPH_S3_DIR/initialised): a new cluster id, the monitor's and the OSD's file systems (an
# interrupted first start is wiped and done again). Every start: monitor, then OSD, then the S3 user is created or
# its key set (before radosgw starts: see tests/s3server.py), then radosgw. The container stops when any daemon
# does (compose restarts it); SIGTERM stops the three.
set -euo pipefail

: "${CEPH_S3_DIR:?}" "${CEPH_S3_PORT:?}"
: "${AWS_ACCESS_KEY_ID:?the S3 access key is missing (docker-compose.yml: the scale-secrets service generates it)}"
: "${AWS_SECRET_ACCESS_KEY:?the S3 secret key is missing (docker-compose.yml: the scale-secrets service generates it)}"
disk_gb=${CEPH_S3_DISK_GB:-50}
mon_port=${CEPH_MON_PORT:-3300}  # the monitor, on the container's loopback only
single_node_conf=${CEPH_SINGLE_NODE_CONF:-/etc/ceph-s3/single-node.conf}
conf=$CEPH_S3_DIR/ceph.conf
# radosgw-admin waits for the OSD and makes radosgw's pools: minutes at most on a slow disk.
admin_timeout_s=300

say() { echo "ceph-entrypoint: $*"; }

write_config() {
  {
    cat "$single_node_conf"
    cat <<EOF
fsid = $1
mon_host = v2:127.0.0.1:$mon_port
run_dir = $CEPH_S3_DIR/run
admin_socket = $CEPH_S3_DIR/run/\$name.asok
log_to_file = false
log_to_stderr = true
err_to_stderr = true
debug_rocksdb = 0/0
debug_bluefs = 0/0
debug_bluestore = 0/0
debug_bdev = 0/0
mon_data = $CEPH_S3_DIR/mon/\$id
osd_data = $CEPH_S3_DIR/osd/\$id
osd_objectstore = bluestore
bluestore_block_create = true
bluestore_block_size = $((disk_gb * 1024 * 1024 * 1024))
osd_memory_target = 1073741824
rgw_data = $CEPH_S3_DIR/rgw
rgw_frontends = beast endpoint=0.0.0.0:$CEPH_S3_PORT tcp_nodelay=1
EOF
  } >"$conf"
}

pids=()
start() {
  "$@" -f -c "$conf" &
  pids+=("$!")
}

# In reverse order, each after the one before has exited: radosgw stopped after the OSD or the monitor waits for
# them until its 120 s alarm (longer than compose's stop grace period), and the OSD wants its monitor.
stop_all() {
  local i
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill -TERM "${pids[i]}" 2>/dev/null || true
    wait "${pids[i]}" 2>/dev/null || true
  done
}
trap 'say "stopping"; stop_all; exit 0' TERM INT

mkdir -p "$CEPH_S3_DIR"
if [ ! -e "$CEPH_S3_DIR/initialised" ]; then
  rm -rf "${CEPH_S3_DIR:?}/mon" "${CEPH_S3_DIR:?}/osd" "${CEPH_S3_DIR:?}/fsid"
  cat /proc/sys/kernel/random/uuid >"$CEPH_S3_DIR/fsid"
fi
fsid=$(cat "$CEPH_S3_DIR/fsid")
mkdir -p "$CEPH_S3_DIR/run" "$CEPH_S3_DIR/mon/a" "$CEPH_S3_DIR/osd/0" "$CEPH_S3_DIR/rgw"
write_config "$fsid"

if [ ! -e "$CEPH_S3_DIR/initialised" ]; then
  say "first start: a new cluster $fsid, OSD on BlueStore ($disk_gb GB sparse file in $CEPH_S3_DIR)"
  monmaptool --create --addv a "[v2:127.0.0.1:$mon_port]" --fsid "$fsid" "$CEPH_S3_DIR/monmap" >/dev/null
  ceph-mon --mkfs -i a --monmap "$CEPH_S3_DIR/monmap" -c "$conf"
  start ceph-mon -i a
  osd_uuid=$(cat /proc/sys/kernel/random/uuid)
  osd_id=$(ceph --connect-timeout 60 -c "$conf" osd new "$osd_uuid")
  [ "$osd_id" = 0 ] || { say "expected OSD 0, got $osd_id" >&2; exit 1; }
  ceph-osd -i 0 --mkfs --osd-uuid "$osd_uuid" -c "$conf"
  touch "$CEPH_S3_DIR/initialised"
else
  say "starting cluster $fsid from $CEPH_S3_DIR"
  start ceph-mon -i a
fi
start ceph-osd -i 0

# The S3 user: created at the first start; at later ones its key is set again (a key changed in .env takes effect).
if timeout "$admin_timeout_s" radosgw-admin -c "$conf" user info --uid=metah >/dev/null 2>&1; then
  timeout "$admin_timeout_s" radosgw-admin -c "$conf" key create --uid=metah --key-type=s3 \
    --access-key="$AWS_ACCESS_KEY_ID" --secret-key="$AWS_SECRET_ACCESS_KEY" >/dev/null
else
  timeout "$admin_timeout_s" radosgw-admin -c "$conf" user create --uid=metah --display-name=metah \
    --access-key="$AWS_ACCESS_KEY_ID" --secret-key="$AWS_SECRET_ACCESS_KEY" >/dev/null
fi
say "S3 user metah ready; radosgw on port $CEPH_S3_PORT"
start radosgw -n client.rgw.a

# Whichever daemon ends first ends the container (its status is the container's).
status=0
wait -n || status=$?
say "a daemon exited ($status): stopping the others"
stop_all
exit "$status"
