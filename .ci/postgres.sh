#!/usr/bin/env bash
# Idempotent: install PostgreSQL from Debian's packages if missing, start the cluster on
# loopback if down, create the test role and database if absent. Prints the URL to use.
#   bash .ci/postgres.sh start   →  postgresql+psycopg://flywheel:flywheel@127.0.0.1:5432/flywheel_test
#   bash .ci/postgres.sh stop
set -euo pipefail
action=${1:-start}
if [ "$action" = stop ]; then
  for c in $(pg_lsclusters -h 2>/dev/null | awk '{print $1"/"$2}'); do pg_ctlcluster "${c%/*}" "${c#*/}" stop || true; done
  exit 0
fi
if ! command -v pg_ctlcluster >/dev/null || [ -z "$(ls /usr/lib/postgresql 2>/dev/null)" ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) >&2
fi
version=$(ls /usr/lib/postgresql | sort -n | tail -1)
if ! pg_lsclusters -h | awk '{print $1" "$2}' | grep -q "^$version main$"; then
  pg_createcluster "$version" main >&2
fi
if ! pg_lsclusters -h | awk '$1=="'"$version"'" && $2=="main" {print $4}' | grep -q online; then
  pg_ctlcluster "$version" main start >&2
fi
for _ in $(seq 30); do su postgres -c "psql -qAtc 'select 1'" >/dev/null 2>&1 && break; sleep 1; done
su postgres -c "psql -qAtc \"select 1 from pg_roles where rolname='flywheel'\"" | grep -q 1 \
  || su postgres -c "psql -qc \"create role flywheel login password 'flywheel'\"" >&2
su postgres -c "psql -qAtc \"select 1 from pg_database where datname='flywheel_test'\"" | grep -q 1 \
  || su postgres -c "psql -qc 'create database flywheel_test owner flywheel'" >&2
echo "postgresql+psycopg://flywheel:flywheel@127.0.0.1:5432/flywheel_test"
