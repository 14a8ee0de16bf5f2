#!/usr/bin/env bash
# End-to-end check of Dockerfile + docker-compose.yml on a machine that cannot pull images (not run in CI), in one of
# two modes: the default demo profile (SMOKE_PROFILE=default) or the scale-out profile (SMOKE_PROFILE=scale):
#
#   1. builds the Debian bookworm base image with debootstrap when it is missing (scripts/build-base-image.sh);
#   2. fills a wheelhouse with the pinned requirements through this machine's pip (which finds torch on local
#      disk; in scale mode also the Milvus server wheel, pinned in requirements-dev.txt) and serves it over HTTP on
#      the docker bridge, so the image build needs no registry;
#   3. builds the images with BASE_IMAGE=<that base> and PIP_OPTIONS="--no-index --find-links=<wheelhouse>";
#   4. `docker-compose up -d` under its own project name and port, waits for /readyz and for the demo library,
#      uploads one image with the API key (after checking that a write without it gets 401), searches with it and
#      checks that the upload is the top hit at Hamming distance 0;
#   5. scale mode only (`--profile scale up -d scale-lb scale-library`, everything through scale-lb, the HAProxy
#      port SCALE_PUBLISH_PORT): the search is repeated until HAProxy's log shows that every API replica answered
#      one; the image is in the S3 bucket (boto3 inside an API container) and on no API container's disk; then the
#      scale-worker that leads the Milvus indexer is `docker kill`ed, and one more upload must be acknowledged and
#      found at distance 0 (the other worker takes over the indexer lock);
#   6. tears everything down (`down -v`: containers, network, volumes; the images stay for the next run).
#
#   scripts/docker-smoke.sh                       # as root (debootstrap), with a running docker engine
#   SMOKE_PROFILE=scale scripts/docker-smoke.sh   # the `scale` profile (its port: SMOKE_SCALE_PORT, 18001)
#   SMOKE_PORT=18000 SMOKE_KEEP=1 scripts/docker-smoke.sh    # SMOKE_KEEP=1: leave the stack running
#
# The secrets: the script generates the API key and the database password and passes them in its env file
# (METAH_API_KEY, POSTGRES_PASSWORD: a value set there wins, docker/metah-secrets.sh), so it knows the key; the
# stack's `secrets` service then generates neither. In scale mode, scale-secrets generates the S3 keys into the
# metah-secrets volume, and the S3 check reads them inside an API container (`metah-secrets exec`).
#
# apt inside the image builds (postgres, ceph, haproxy) runs a plain `apt-get update/install` against the base
# image's Debian sources (scripts/build-base-image.sh writes them: DEBIAN_MIRROR). On the development machine the
# build containers reached deb.debian.org through the docker bridge's NAT with no proxy or mirror setting, so none
# is set. Where one is needed: export http_proxy / https_proxy (predefined build arguments of every Dockerfile)
# and add `--build-arg http_proxy --build-arg https_proxy` to the `compose build` line below.
#
# The first run takes a while (base image, a multi-GB torch install, training the demo model, in scale mode the
# Ceph and Milvus images too); later runs reuse the base image, the wheelhouse and the build cache.
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=${SMOKE_PROFILE:-default}
BASE_TAG=${SMOKE_BASE_IMAGE:-metah-base:bookworm}
WHEELS=${SMOKE_WHEELS:-var/docker-wheels}
WHEEL_PORT=${SMOKE_WHEEL_PORT:-18765}
PYTHON=${SMOKE_PYTHON:-.venv/bin/python}
TIMEOUT_S=${SMOKE_TIMEOUT_S:-1800}
PUBLISH_PORT=${SMOKE_PORT:-18000}
SCALE_PORT=${SMOKE_SCALE_PORT:-18001}
# How many searches at most until every API replica has answered one (scale mode; HAProxy: round robin).
SEARCHES=${SMOKE_SEARCHES:-8}
case $MODE in
  default)
    PROJECT=${SMOKE_PROJECT:-metah-smoke}
    PORT=$PUBLISH_PORT
    profile_args=()
    up_services=()  # everything without a profile
    library=demo-library
    extra_wheels=()
    ;;
  scale)
    PROJECT=${SMOKE_PROJECT:-metah-scale-smoke}
    PORT=$SCALE_PORT
    profile_args=(--profile scale)
    up_services=(scale-lb scale-library)  # as docker-compose.yml's header says (the demo's services stay down)
    library=scale-library
    mapfile -t extra_wheels < <(grep -oE '^milvus==[^ ]+' requirements-dev.txt)
    ;;
  *)
    echo "SMOKE_PROFILE must be default or scale, not $MODE" >&2
    exit 2
    ;;
esac
URL="http://127.0.0.1:$PORT"

started=$SECONDS
say() { printf '[smoke %4ds] %s\n' "$((SECONDS - started))" "$*"; }
fail() { say "FAILED: $*"; exit 1; }

if docker compose version >/dev/null 2>&1; then compose_cmd=(docker compose); else compose_cmd=(docker-compose); fi
work=$(mktemp -d /tmp/metah-smoke.XXXXXX)
env_file=$work/smoke.env
compose_full=("${compose_cmd[@]}" -p "$PROJECT" -f docker-compose.yml --env-file "$env_file" "${profile_args[@]}")
compose() { "${compose_full[@]}" "$@"; }
shown="${compose_cmd[*]} -p $PROJECT${profile_args[*]:+ ${profile_args[*]}}"  # for the messages

http_pid=
up=
cleanup() {
  status=$?
  if [[ -n $up ]]; then
    if [[ $status -ne 0 ]]; then
      say "last log lines of every service:"
      compose logs --no-color --tail=25 || true
    fi
    if [[ ${SMOKE_KEEP:-0} == 1 ]]; then
      say "SMOKE_KEEP=1: the stack keeps running on $URL (stop it: $shown down -v)"
    else
      say "tearing down: $shown down -v"
      compose down -v --remove-orphans >/dev/null 2>&1 || true
    fi
  fi
  if [[ -n $http_pid ]]; then kill "$http_pid" 2>/dev/null || true; fi
  rm -rf "$work"
  if [[ $status -eq 0 ]]; then say "OK"; else say "exit status $status"; fi
}
trap cleanup EXIT

# --- 1. base image -------------------------------------------------------------------------------------------
docker info >/dev/null 2>&1 || fail "the docker engine is not reachable (start it: dockerd > /tmp/dockerd.log 2>&1 &)"
say "mode $MODE; compose: ${compose_cmd[*]} ($("${compose_cmd[@]}" version --short 2>/dev/null || echo '?')), docker engine $(docker version --format '{{.Server.Version}}')"
if docker image inspect "$BASE_TAG" >/dev/null 2>&1; then
  say "base image $BASE_TAG is there"
else
  say "building the base image $BASE_TAG (debootstrap)"
  scripts/build-base-image.sh "$BASE_TAG"
fi

# --- 2. wheelhouse -------------------------------------------------------------------------------------------
wheel_specs=('setuptools>=68' "${extra_wheels[@]}")
say "wheelhouse $WHEELS: pip download of requirements.txt and ${wheel_specs[*]} (from this machine's pip sources)"
mkdir -p "$WHEELS"
"$PYTHON" -m pip download --quiet --dest "$WHEELS" -r requirements.txt "${wheel_specs[@]}" >"$work/pip.log" 2>&1 \
  || { cat "$work/pip.log"; fail "pip download"; }
say "wheelhouse: $(find "$WHEELS" -name '*.whl' | wc -l) wheels, $(du -sh "$WHEELS" | cut -f1); torch: $(cd "$WHEELS" && ls torch-*.whl)"
gateway=$(docker network inspect bridge --format '{{range .IPAM.Config}}{{.Gateway}}{{end}}')
[[ -n $gateway ]] || gateway=$(ip -4 -o addr show docker0 | awk '{print $4}' | cut -d/ -f1)
[[ -n $gateway ]] || fail "cannot find the docker bridge's address"
"$PYTHON" -m http.server "$WHEEL_PORT" --bind "$gateway" --directory "$WHEELS" >"$work/http.log" 2>&1 &
http_pid=$!
find_links="http://$gateway:$WHEEL_PORT/"
for _ in $(seq 1 50); do curl -fsS -o /dev/null "$find_links" 2>/dev/null && break; sleep 0.2; done
say "wheelhouse served at $find_links (pid $http_pid)"

# --- 3. build ------------------------------------------------------------------------------------------------
api_key=$("$PYTHON" -c 'import secrets; print(secrets.token_hex(16))')
umask 077
cat >"$env_file" <<EOF
BASE_IMAGE=$BASE_TAG
PIP_OPTIONS=--no-index --find-links=$find_links --trusted-host=$gateway
METAH_API_KEY=$api_key
POSTGRES_PASSWORD=$("$PYTHON" -c 'import secrets; print(secrets.token_hex(16))')
PUBLISH_ADDRESS=127.0.0.1
PUBLISH_PORT=$PUBLISH_PORT
SCALE_PUBLISH_PORT=$SCALE_PORT
EOF
umask 022
compose config -q
say "building the images (BASE_IMAGE=$BASE_TAG, PIP_OPTIONS=--no-index --find-links=$find_links ...)"
build_started=$SECONDS
compose build >"$work/build.log" 2>&1 || { tail -n 40 "$work/build.log"; fail "docker-compose build"; }
say "images built in $((SECONDS - build_started)) s:"
docker image ls --format '{{.Repository}}:{{.Tag}}  {{.Size}}' | grep -E '^metah(-[a-z]+)?:' | sed 's/^/  /' || true

# --- 4. run the demo ---------------------------------------------------------------------------------------
say "$shown up -d${up_services[*]:+ ${up_services[*]}} (api published on $URL)"
up=1
up_started=$SECONDS
deadline=$((SECONDS + TIMEOUT_S))
# docker-compose v1 waits here for the dependencies' conditions (the demo model's training among them).
timeout "$TIMEOUT_S" "${compose_full[@]}" up -d --no-build "${up_services[@]}" 2>&1 | sed 's/^/  /' \
  || fail "${compose_cmd[*]} up -d"
say "up -d returned after $((SECONDS - up_started)) s"

say "waiting for $URL/readyz (the demo model is trained first: a few minutes on 2 cores)"
until ready=$(curl -fsS "$URL/readyz" 2>/dev/null); do
  ((SECONDS < deadline)) || fail "/readyz did not answer 200 within $TIMEOUT_S s"
  sleep 5
done
say "ready $((SECONDS - up_started)) s after up: $ready"

say "waiting for the $library service to upload the demo library and exit"
while :; do
  id=$(compose ps -q "$library" 2>/dev/null || true)
  if [[ -n $id && $(docker inspect -f '{{.State.Status}}' "$id") == exited ]]; then break; fi
  ((SECONDS < deadline)) || fail "$library did not finish within $TIMEOUT_S s"
  sleep 5
done
exit_code=$(docker inspect -f '{{.State.ExitCode}}' "$id")
compose logs --no-color "$library" 2>&1 | sed 's/^/  /'
[[ $exit_code -eq 0 ]] || fail "$library exited with status $exit_code"
say "$library done $((SECONDS - up_started)) s after up; service states:"
compose ps 2>&1 | sed 's/^/  /'

say "two USPS digits as PNG (data/digits, the repository's own data)"
"$PYTHON" - "$work/digit.png" "$work/digit-2.png" <<'EOF'
import sys

from PIL import Image

from workbench.datasets import load_digits

usps = load_digits("usps")
for index, path in zip((-1, -2), sys.argv[1:]):
    Image.fromarray(usps.images[index]).save(path)
    print(f"  {path.rsplit('/', 1)[-1]}: label {int(usps.labels[index])}, {usps.images[index].shape}")
EOF

status=$(curl -sS -o /dev/null -w '%{http_code}' -F image=@"$work/digit.png" -F domain=smoke "$URL/v1/images")
say "POST /v1/images without X-API-Key -> $status"
[[ $status == 401 ]] || fail "a write without the API key answered $status, not 401"

# upload_and_find PNG DOMAIN SEARCHES: uploads PNG into DOMAIN with the API key, searches with it everywhere
# (k=5) and then SEARCHES times in DOMAIN (k=3), and checks that it is the top hit at distance 0 in each; the
# upload's answer is left in $work/upload.json.
upload_and_find() {
  local png=$1 domain=$2 searches=$3 i
  curl -fsS -o "$work/upload.json" -w '%{http_code} in %{time_total} s' -H "X-API-Key: $api_key" \
    -F image=@"$png" -F domain="$domain" -F label=smoke "$URL/v1/images" >"$work/upload.status" \
    || fail "POST /v1/images with X-API-Key"
  say "POST /v1/images with X-API-Key -> $(cat "$work/upload.status"): $(cat "$work/upload.json")"
  curl -fsS -F image=@"$png" "$URL/v1/search?k=5" >"$work/search.json"
  rm -f "$work"/search-own-*.json
  for ((i = 1; i <= searches; i++)); do
    curl -fsS -F image=@"$png" "$URL/v1/search?k=3&domain=$domain" >"$work/search-own-$i.json"
  done
  "$PYTHON" - "$work/upload.json" "$work/search.json" "$work"/search-own-*.json <<'EOF'
import json
import sys

uploaded, everywhere, *own_domain = (json.load(open(path)) for path in sys.argv[1:])
print(f"  POST /v1/search?k=5 -> model {everywhere['model_version']}, {everywhere['bits']} bits, {everywhere['took_ms']} ms")
for hit in everywhere["hits"]:
    print(f"    id={hit['id']:<6} distance={hit['distance']:<3} domain={hit['domain']:<15} label={hit['label']}")
assert len(everywhere["hits"]) >= 1, "no hit"
for search in own_domain:
    print(f"  POST /v1/search?k=3&domain={uploaded['domain']} -> {search['took_ms']} ms {json.dumps(search['hits'])}")
    assert search["hits"] and search["hits"][0]["id"] == uploaded["id"], "the uploaded image is not the top hit"
    assert search["hits"][0]["distance"] == 0, "the uploaded image is not at Hamming distance 0"
print(f"  {len(own_domain)} searches in domain {uploaded['domain']}: the uploaded image (id {uploaded['id']}) is the top hit at distance 0 in each")
EOF
}

if [[ $MODE == default ]]; then
  upload_and_find "$work/digit.png" smoke 1
  say "readyz after the upload: $(curl -fsS "$URL/readyz")"
  say "all checks passed in $((SECONDS - started)) s"
  exit 0
fi

# --- 5. scale mode: replicas, S3, no local images, a worker killed --------------------------------------------
mapfile -t api_ids < <(compose ps -q scale-api)
mapfile -t worker_ids < <(compose ps -q scale-worker)
say "${#api_ids[@]} scale-api and ${#worker_ids[@]} scale-worker containers"
((${#api_ids[@]} >= 2 && ${#worker_ids[@]} >= 2)) || fail "expected at least 2 API replicas and 2 workers"
upload_and_find "$work/digit.png" smoke "$SEARCHES"
sha=$("$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["sha256"])' "$work/upload.json")

# HAProxy logs one line per request (option httplog) with the server that answered it: api1..api32.
sleep 1
compose logs --no-color scale-lb 2>&1 | grep -F '/v1/search?k=3&domain=smoke ' | grep -oE 'scale-api/api[0-9]+' \
  | sort | uniq -c >"$work/answered.txt" || true
say "the searches in domain smoke, by the replica that answered (scale-lb's log):"
sed 's/^/  /' "$work/answered.txt"
(($(wc -l <"$work/answered.txt") >= 2)) || fail "fewer than two API replicas answered the searches"

# In the bucket, read by boto3 in an API container (the S3 keys of the metah-secrets volume: metah-secrets exec).
say "the image in the S3 bucket (boto3 in ${api_ids[0]:0:12}, METAH_BLOB_URL):"
docker exec -i "${api_ids[0]}" /usr/local/bin/metah-secrets exec /run/metah-secrets python - "$sha" <<'EOF' \
  || fail "the uploaded image is not in the S3 bucket"
import os
import sys

import boto3

from service.storage import blob_key

bucket, _, prefix = os.environ["METAH_BLOB_URL"].removeprefix("s3://").partition("/")
s3 = boto3.client("s3")
key = f"{prefix}/{blob_key(sys.argv[1])}"
size = s3.head_object(Bucket=bucket, Key=key)["ContentLength"]
pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/")
keys = [item["Key"] for page in pages for item in page.get("Contents", [])]
images = sum(key.startswith(f"{prefix}/images/") for key in keys)
print(f"  s3://{bucket}/{key}: {size} bytes ({os.environ['AWS_ENDPOINT_URL_S3']})")
print(f"  s3://{bucket}/{prefix}/: {len(keys)} objects, {images} of them images")
EOF

say "no image file on the API containers' disk (find / for *$sha*, and the files under their /data):"
for id in "${api_ids[@]}"; do
  found=$(docker exec "$id" find / \( -path /proc -o -path /sys \) -prune -o -name "*$sha*" -print 2>/dev/null || true)
  [[ -z $found ]] || fail "container ${id:0:12} holds the image: $found"
  say "  ${id:0:12}: none; $(docker exec "$id" find /data -type f 2>/dev/null | wc -l) files under /data"
done

# The worker that leads the Milvus indexer says so in its log (service/election.py): the latest to say so.
leader='' leader_since=''
for id in "${worker_ids[@]}"; do
  since=$(docker logs "$id" 2>&1 | grep -F 'leads the indexer' | tail -n 1 | grep -oE '"ts": "[^"]+"' || true)
  if [[ -n $since && $since > $leader_since ]]; then leader=$id leader_since=$since; fi
done
[[ -n $leader ]] || { say "no worker's log names the indexer's leader: killing the first"; leader=${worker_ids[0]}; }
say "docker kill $(docker inspect -f '{{.Name}}' "$leader") (${leader:0:12}, the indexer's leader)"
docker kill "$leader" >/dev/null
upload_and_find "$work/digit-2.png" smoke-failover 3
for id in "${worker_ids[@]}"; do
  [[ $id == "$leader" ]] && continue
  say "$(docker inspect -f '{{.Name}}' "$id"): $(docker logs "$id" 2>&1 | grep -F 'leads the indexer' | tail -n 1 \
    || echo 'no take-over in its log')"
done
say "service states after the kill:"
compose ps 2>&1 | sed 's/^/  /'
say "readyz after the uploads: $(curl -fsS "$URL/readyz")"
say "all checks passed in $((SECONDS - started)) s"
