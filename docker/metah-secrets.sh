#!/bin/sh
# The two secrets of docker-compose.yml, generated at the first start and kept in a volume, so that
# `docker compose up` needs no hand-made .env. Installed as /usr/local/bin/metah-secrets in both images;
# runs outside Docker too (tests/test_docker_files.py), DIR being any folder.
#
#   metah-secrets generate DIR [--owner UID:GID]
#       For each secret whose variable is unset or empty, writes a random secret_value (256 bits, hex) to its file in
#       DIR unless the file is there already: later starts keep it. Prints a generated METAH_API_KEY once, when
#       it is generated (never a kept one, never the password). --owner: chown the files (run as root).
#   metah-secrets generate-s3 DIR [--owner UID:GID]
#       The same for the S3 keys of the `scale` profile (its scale-secrets service); prints neither.
#   metah-secrets exec DIR COMMAND [ARG...]
#       Exports each secret's variable from its file in DIR when the variable is unset or empty and the file is
#       readable, PGPASSWORD from POSTGRES_PASSWORD when unset (libpq reads it: no password in the database
#       URL), then runs COMMAND in its place.
#
# Secrets: METAH_API_KEY (file metah_api_key, mode 0400: the metah services) and POSTGRES_PASSWORD (file
# postgres_password, mode 0440: the metah services and, by group, postgres); with generate-s3, AWS_ACCESS_KEY_ID
# (file s3_access_key, 20 characters) and AWS_SECRET_ACCESS_KEY (file s3_secret_key), both mode 0440: the metah
# services and, by group, the S3 server, which creates its user with them. A secret_value set in the environment
# (.env) always wins: it is neither generated nor replaced by the file.
set -eu

usage() {
  echo "usage: metah-secrets generate DIR [--owner UID:GID] | metah-secrets generate-s3 DIR [--owner UID:GID]" \
    "| metah-secrets exec DIR COMMAND [ARG...]" >&2
  exit 2
}

say() { echo "metah-secrets: $*"; }

random_hex() { od -An -vtx1 -N32 /dev/urandom | tr -d ' \n'; }

# An S3 access key id: 20 characters like AWS's (upper-case hex here); it names the user, it is not the secret.
random_access_key() { od -An -vtx1 -N10 /dev/urandom | tr -d ' \n' | tr 'a-f' 'A-F'; }

# generate_one NAME FILE MODE [GENERATOR]
generate_one() {
  eval "secret_value=\${$1:-}"
  if [ -n "$secret_value" ]; then
    say "$1 is set in the environment (.env): none generated"
    return 0
  fi
  if [ -s "$secrets_dir/$2" ]; then
    say "$1: keeping the one generated at the first start"
    return 0
  fi
  tmp_file="$secrets_dir/.$2.tmp"
  rm -f "$tmp_file"
  (umask 077 && "${4:-random_hex}" >"$tmp_file")
  [ -s "$tmp_file" ] || { echo "metah-secrets: could not read /dev/urandom" >&2; exit 1; }
  if [ -n "$secrets_owner" ]; then chown "$secrets_owner" "$tmp_file"; fi
  chmod "$3" "$tmp_file"
  mv -f "$tmp_file" "$secrets_dir/$2"
  if [ "$1" = METAH_API_KEY ]; then
    say "generated METAH_API_KEY (shown this once; writes need the header X-API-Key with it):"
    echo "METAH_API_KEY=$(cat "$secrets_dir/$2")"
  else
    say "generated $1"
  fi
}

# export_one NAME FILE
export_one() {
  eval "secret_value=\${$1:-}"
  if [ -z "$secret_value" ] && [ -r "$secrets_dir/$2" ]; then
    secret_value=$(cat "$secrets_dir/$2")
    export "$1=$secret_value"
  fi
}

[ $# -ge 2 ] || usage
action=$1
secrets_dir=$2
shift 2
case $action in
  generate | generate-s3)
    secrets_owner=""
    if [ $# -eq 2 ] && [ "$1" = --owner ]; then
      secrets_owner=$2
    elif [ $# -ne 0 ]; then
      usage
    fi
    mkdir -p "$secrets_dir"
    if [ "$action" = generate ]; then
      generate_one METAH_API_KEY metah_api_key 0400
      generate_one POSTGRES_PASSWORD postgres_password 0440
    else
      generate_one AWS_ACCESS_KEY_ID s3_access_key 0440 random_access_key
      generate_one AWS_SECRET_ACCESS_KEY s3_secret_key 0440
    fi
    ;;
  exec)
    [ $# -ge 1 ] || usage
    export_one METAH_API_KEY metah_api_key
    export_one POSTGRES_PASSWORD postgres_password
    export_one AWS_ACCESS_KEY_ID s3_access_key
    export_one AWS_SECRET_ACCESS_KEY s3_secret_key
    if [ -z "${PGPASSWORD:-}" ] && [ -n "${POSTGRES_PASSWORD:-}" ]; then
      export PGPASSWORD="$POSTGRES_PASSWORD"
    fi
    exec "$@"
    ;;
  *)
    usage
    ;;
esac
