#!/usr/bin/env bash
# Start a throw-away local PostgreSQL for the shared-study evolve test; prints the URL to use.
# Usage: eval "$(bash .ci/postgres.sh start)"   ...   bash .ci/postgres.sh stop
set -euo pipefail
ver() { ls /usr/lib/postgresql 2>/dev/null | sort -n | tail -1; }
case "${1:-start}" in
  start)
    if [ -z "$(ver)" ]; then
      (apt-get install -y -q postgresql >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q postgresql >/dev/null 2>&1; }) >&2
    fi
    v="$(ver)"
    pg_ctlcluster "$v" main start >&2 2>/dev/null || service postgresql start >&2
    for _ in $(seq 30); do su postgres -c "pg_isready -q" && break; sleep 1; done
    su postgres -c "psql -q -tc \"SELECT 1 FROM pg_roles WHERE rolname='slideyolo'\" | grep -q 1 || psql -q -c \"CREATE ROLE slideyolo LOGIN SUPERUSER PASSWORD 'slideyolo'\"" >&2
    su postgres -c "psql -q -tc \"SELECT 1 FROM pg_database WHERE datname='slideyolo_test'\" | grep -q 1 || createdb -O slideyolo slideyolo_test" >&2
    echo "export EVOLVE_TEST_POSTGRES_URL=postgresql+psycopg2://slideyolo:slideyolo@127.0.0.1:5432/slideyolo_test"
    ;;
  stop)
    v="$(ver)"
    [ -n "$v" ] && (pg_ctlcluster "$v" main stop 2>/dev/null || service postgresql stop) >&2 || true
    ;;
esac
