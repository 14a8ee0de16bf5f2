#!/usr/bin/env bash
# End-to-end check of Dockerfile + docker-compose.yml on a machine that cannot pull images (not run in CI):
#
#   1. builds the Debian bookworm base image with debootstrap when it is missing (scripts/build-base-image.sh);
#   2. fills a wheelhouse with the pinned requirements through this machine's pip (which finds torch on local
#      disk) and serves it over HTTP on the docker bridge, so the image build needs no registry;
#   3. builds the images with BASE_IMAGE=<that base> and PIP_OPTIONS="--no-index --find-links=<wheelhouse>";
#   4. `docker-compose up -d` under its own project name and port, waits for /readyz and for the demo library,
#      uploads one image with the API key, searches with it and checks the hits;
#   5. tears everything down (`down -v`: containers, network, volumes; the images stay for the next run).
#
#   scripts/docker-smoke.sh                 # as root (debootstrap), with a running docker engine
#   SMOKE_PORT=18000 SMOKE_KEEP=1 scripts/docker-smoke.sh    # SMOKE_KEEP=1: leave the stack running
#
# The first run takes a while (base image, a multi-GB torch install, training the demo model); later runs reuse
# the base image, the wheelhouse and the build cache.
set -euo pipefail
cd "$(dirname "$0")/.."

BASE_TAG=${SMOKE_BASE_IMAGE:-metah-base:bookworm}
PROJECT=${SMOKE_PROJECT:-metah-smoke}
PORT=${SMOKE_PORT:-18000}
WHEELS=${SMOKE_WHEELS:-var/docker-wheels}
WHEEL_PORT=${SMOKE_WHEEL_PORT:-18765}
PYTHON=${SMOKE_PYTHON:-.venv/bin/python}
TIMEOUT_S=${SMOKE_TIMEOUT_S:-1800}
URL="http://127.0.0.1:$PORT"

started=$SECONDS
say() { printf '[smoke %4ds] %s\n' "$((SECONDS - started))" "$*"; }
fail() { say "FAILED: $*"; exit 1; }

if docker compose version >/dev/null 2>&1; then compose_cmd=(docker compose); else compose_cmd=(docker-compose); fi
work=$(mktemp -d /tmp/metah-smoke.XXXXXX)
env_file=$work/smoke.env
compose() { "${compose_cmd[@]}" -p "$PROJECT" -f docker-compose.yml --env-file "$env_file" "$@"; }

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
      say "SMOKE_KEEP=1: the stack keeps running on $URL (stop it: ${compose_cmd[*]} -p $PROJECT down -v)"
    else
      say "tearing down: ${compose_cmd[*]} -p $PROJECT down -v"
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
say "compose: ${compose_cmd[*]} ($("${compose_cmd[@]}" version --short 2>/dev/null || echo '?')), docker engine $(docker version --format '{{.Server.Version}}')"
if docker image inspect "$BASE_TAG" >/dev/null 2>&1; then
  say "base image $BASE_TAG is there"
else
  say "building the base image $BASE_TAG (debootstrap)"
  scripts/build-base-image.sh "$BASE_TAG"
fi

# --- 2. wheelhouse -------------------------------------------------------------------------------------------
say "wheelhouse $WHEELS: pip download of requirements.txt and setuptools (from this machine's pip sources)"
mkdir -p "$WHEELS"
"$PYTHON" -m pip download --quiet --dest "$WHEELS" -r requirements.txt 'setuptools>=68' >"$work/pip.log" 2>&1 \
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
PUBLISH_PORT=$PORT
EOF
umask 022
compose config -q
say "building the images (BASE_IMAGE=$BASE_TAG, PIP_OPTIONS=--no-index --find-links=$find_links ...)"
build_started=$SECONDS
compose build >"$work/build.log" 2>&1 || { tail -n 40 "$work/build.log"; fail "docker-compose build"; }
say "images built in $((SECONDS - build_started)) s:"
docker image ls --format '{{.Repository}}:{{.Tag}}  {{.Size}}' | grep -E '^metah(-postgres|-base)?:' | sed 's/^/  /' || true

# --- 4. run the demo ---------------------------------------------------------------------------------------
say "${compose_cmd[*]} -p $PROJECT up -d (api published on $URL)"
up=1
compose up -d --no-build 2>&1 | sed 's/^/  /'
deadline=$((SECONDS + TIMEOUT_S))

say "waiting for $URL/readyz (the demo model is trained first: a few minutes on 2 cores)"
until ready=$(curl -fsS "$URL/readyz" 2>/dev/null); do
  ((SECONDS < deadline)) || fail "/readyz did not answer 200 within $TIMEOUT_S s"
  sleep 5
done
say "ready: $ready"

say "waiting for the demo-library service to upload the demo digits and exit"
while :; do
  id=$(compose ps -q demo-library 2>/dev/null || true)
  if [[ -n $id && $(docker inspect -f '{{.State.Status}}' "$id") == exited ]]; then break; fi
  ((SECONDS < deadline)) || fail "demo-library did not finish within $TIMEOUT_S s"
  sleep 5
done
exit_code=$(docker inspect -f '{{.State.ExitCode}}' "$id")
compose logs --no-color demo-library 2>&1 | sed 's/^/  /'
[[ $exit_code -eq 0 ]] || fail "demo-library exited with status $exit_code"
say "service states:"
compose ps 2>&1 | sed 's/^/  /'

say "one USPS digit as PNG (data/digits, the repository's own data)"
"$PYTHON" - "$work/digit.png" <<'EOF'
import sys

from PIL import Image

from workbench.datasets import load_digits

usps = load_digits("usps")
Image.fromarray(usps.images[-1]).save(sys.argv[1])
print(f"  label {int(usps.labels[-1])}, {usps.images[-1].shape}")
EOF

status=$(curl -sS -o /dev/null -w '%{http_code}' -F image=@"$work/digit.png" -F domain=smoke "$URL/v1/images")
say "POST /v1/images without X-API-Key -> $status"
[[ $status == 401 ]] || fail "a write without the API key answered $status, not 401"

curl -fsS -H "X-API-Key: $api_key" -F image=@"$work/digit.png" -F domain=smoke -F label=smoke \
  "$URL/v1/images" >"$work/upload.json"
say "POST /v1/images with X-API-Key -> $(cat "$work/upload.json")"
curl -fsS -F image=@"$work/digit.png" "$URL/v1/search?k=5" >"$work/search.json"
curl -fsS -F image=@"$work/digit.png" "$URL/v1/search?k=3&domain=smoke" >"$work/search-smoke.json"

"$PYTHON" - "$work/upload.json" "$work/search.json" "$work/search-smoke.json" <<'EOF'
import json
import sys

uploaded = json.load(open(sys.argv[1]))
everywhere, own_domain = (json.load(open(path)) for path in sys.argv[2:])
print(f"  POST /v1/search?k=5 -> model {everywhere['model_version']}, {everywhere['bits']} bits, {everywhere['took_ms']} ms")
for hit in everywhere["hits"]:
    print(f"    id={hit['id']:<6} distance={hit['distance']:<3} domain={hit['domain']:<8} label={hit['label']}")
print(f"  POST /v1/search?k=3&domain=smoke -> {json.dumps(own_domain['hits'])}")
assert len(everywhere["hits"]) >= 1, "no hit"
assert own_domain["hits"] and own_domain["hits"][0]["id"] == uploaded["id"], "the uploaded image is not the top hit"
assert own_domain["hits"][0]["distance"] == 0, "the uploaded image is not at Hamming distance 0"
print(f"  {len(everywhere['hits'])} hits; the uploaded image (id {uploaded['id']}) is found at distance 0")
EOF
indexed=$(curl -fsS "$URL/readyz")
say "readyz after the upload: $indexed"
say "all checks passed in $((SECONDS - started)) s"
