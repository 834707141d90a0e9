#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for the tests, from the installed PostgreSQL binaries:
# a temporary directory, a free port, the unprivileged `postgres` user when run as root.
#   scripts/pg.sh start   -> prints the directory and the URL (postgres://…) on stdout
#   scripts/pg.sh stop DIR
set -euo pipefail
bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
if [ -z "$bin" ] || [ ! -x "$bin/initdb" ]; then
  echo "pg.sh: PostgreSQL server binaries not found (scripts/setup.sh installs them)" >&2
  exit 1
fi
as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
case "${1:-}" in
  start)
    dir="$(mktemp -d /tmp/sluice-pg.XXXXXX)"
    [ "$(id -u)" = 0 ] && chown postgres:postgres "$dir"
    port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')"
    as_pg "$bin/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --no-sync >/dev/null
    as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -o \
      "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
      start >/dev/null
    echo "$dir postgres://postgres@127.0.0.1:$port/postgres"
    ;;
  stop)
    dir="${2:?usage: pg.sh stop DIR}"
    as_pg "$bin/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
    rm -rf "$dir"
    ;;
  *)
    echo "usage: pg.sh start | stop DIR" >&2
    exit 2
    ;;
esac
