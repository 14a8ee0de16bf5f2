#!/usr/bin/env bash
# The local PostgreSQL cluster the tests run against (as root, like .ci/run): installs Debian's package when
# asked (--install) and it is missing, starts the cluster on 127.0.0.1:5432, waits until it accepts
# connections and makes sure the role metah (password metah, allowed to create databases) exists.
# Prints the admin URL the tests take (METAH_TEST_POSTGRES_URL). Exits non-zero when any step fails.
set -euo pipefail
URL="postgresql+psycopg://metah:metah@127.0.0.1:5432/postgres"

if ! command -v pg_ctlcluster >/dev/null; then
  [ "${1-}" = --install ] || { echo "local-postgres: PostgreSQL is not installed" >&2; exit 1; }
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
cluster=$(pg_lsclusters -h | awk '$3 == 5432 {print $1 " " $2; exit}')
if [ -z "$cluster" ]; then
  version=$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -n | tail -1)
  pg_createcluster "$version" main --port 5432 >/dev/null
  cluster="$version main"
fi
# shellcheck disable=SC2086 # "$cluster" is two words: version and name
pg_ctlcluster $cluster start >/dev/null 2>&1 || pg_ctlcluster $cluster status >/dev/null
for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
pg_isready -q -h 127.0.0.1 -p 5432 || { echo "local-postgres: nothing accepts connections on 127.0.0.1:5432" >&2; exit 1; }
as_postgres() { (cd / && runuser -u postgres -- psql -qAt "$@"); }
as_postgres -c "SELECT 1 FROM pg_roles WHERE rolname = 'metah'" | grep -q 1 \
  || as_postgres -c "CREATE ROLE metah LOGIN PASSWORD 'metah' CREATEDB"
echo "$URL"
