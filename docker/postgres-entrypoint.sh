#!/bin/sh
# Entry point of docker/postgres.Dockerfile. On the first start (empty PGDATA) it creates the cluster with
# POSTGRES_USER as its superuser (password POSTGRES_PASSWORD, required) and the database POSTGRES_DB; then it
# runs PostgreSQL in the foreground. Password authentication (scram-sha-256) over TCP; trust only on the
# container's own Unix socket.
set -eu

: "${PGDATA:?}" "${POSTGRES_USER:?}" "${POSTGRES_DB:?}"

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  if [ -z "${POSTGRES_PASSWORD:-}" ]; then
    echo "postgres-entrypoint: POSTGRES_PASSWORD is empty: set it (docker-compose.yml takes it from .env or from" \
      "the metah-secrets volume that its secrets service fills)" >&2
    exit 1
  fi
  echo "postgres-entrypoint: creating the cluster in $PGDATA (superuser $POSTGRES_USER, database $POSTGRES_DB)"
  pwfile=$(mktemp)
  trap 'rm -f "$pwfile"' EXIT
  printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
  initdb --pgdata="$PGDATA" --username="$POSTGRES_USER" --pwfile="$pwfile" --encoding=UTF8 --locale=C.UTF-8 \
    --auth-local=trust --auth-host=scram-sha-256 >/dev/null
  rm -f "$pwfile"
  trap - EXIT
  printf '%s\n' "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
  # Create the database on a server that listens on the Unix socket only, then stop it.
  pg_ctl --pgdata="$PGDATA" --options="-c listen_addresses=''" --wait --silent start
  if [ "$POSTGRES_DB" != "postgres" ]; then
    createdb --username="$POSTGRES_USER" --maintenance-db=postgres "$POSTGRES_DB"
  fi
  pg_ctl --pgdata="$PGDATA" --mode=fast --wait --silent stop
fi

exec postgres -D "$PGDATA" -c listen_addresses='*'
