# shellcheck shell=bash
# A throw-away PostgreSQL server for the distributed-tuning test (tests/integration/test_tune_postgres.py).
#
# Source it from .ci/run (`. .ci/postgres.sh`): it installs PostgreSQL from Debian packages when
# missing (needs root), starts a private server in a temporary folder listening on 127.0.0.1 only,
# creates a user and a database, exports CNNLAB_TEST_POSTGRES_URL, and stops the server and removes
# the folder when the sourcing shell exits. Without it the test skips with a reason.
#
# Settings (environment): CNNLAB_PG_PORT (default: a free port), CNNLAB_REQUIRE_POSTGRES=1 to fail
# instead of warning when the server cannot be set up.

_cnnlab_pg_fail() {
  echo "postgres.sh: $*" >&2
  if [ "${CNNLAB_REQUIRE_POSTGRES:-0}" = "1" ]; then
    return 1
  fi
  echo "postgres.sh: continuing without PostgreSQL (the PostgreSQL test will be skipped)" >&2
  return 0
}

_cnnlab_pg_bindir() {
  local d
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then
      echo "$d"
      return 0
    fi
  done
  if command -v initdb >/dev/null 2>&1; then
    dirname "$(command -v initdb)"
    return 0
  fi
  return 1
}

_cnnlab_pg_setup() {
  local bindir
  if ! bindir="$(_cnnlab_pg_bindir)"; then
    if [ "$(id -u)" != "0" ]; then
      _cnnlab_pg_fail "PostgreSQL is not installed and installing it needs root"
      return $?
    fi
    echo "postgres.sh: installing PostgreSQL (apt-get)" >&2
    export DEBIAN_FRONTEND=noninteractive
    if ! { apt-get update -qq && apt-get install -y -qq postgresql >/dev/null; }; then
      _cnnlab_pg_fail "apt-get install postgresql failed"
      return $?
    fi
    bindir="$(_cnnlab_pg_bindir)" || { _cnnlab_pg_fail "no initdb after installing postgresql"; return $?; }
  fi

  # Run the server as the unprivileged 'postgres' user when we are root (initdb refuses root).
  local -a as_pg=()
  if [ "$(id -u)" = "0" ]; then
    if ! id postgres >/dev/null 2>&1; then
      _cnnlab_pg_fail "running as root but there is no 'postgres' user to run the server"
      return $?
    fi
    as_pg=(runuser -u postgres --)
  fi

  local port="${CNNLAB_PG_PORT:-}"
  if [ -z "$port" ]; then
    port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"
  fi
  local dir
  dir="$(mktemp -d "${TMPDIR:-/tmp}/cnnlab-pg.XXXXXX")"
  chmod 755 "$dir"
  mkdir "$dir/data" "$dir/socket"
  if [ "$(id -u)" = "0" ]; then
    chown -R postgres: "$dir"
  fi
  CNNLAB_PG_DIR="$dir"
  CNNLAB_PG_BINDIR="$bindir"
  CNNLAB_PG_AS=("${as_pg[@]}")

  local password
  password="cnnlab-$(python3 -c 'import secrets; print(secrets.token_hex(8))')"
  # Local (socket) connections of the server's own OS user are trusted, TCP needs the password.
  if ! "${as_pg[@]}" "$bindir/initdb" -D "$dir/data" -U postgres --auth-local=trust \
      --auth-host=scram-sha-256 -E UTF8 >"$dir/initdb.log" 2>&1; then
    cat "$dir/initdb.log" >&2
    _cnnlab_pg_fail "initdb failed"
    return $?
  fi
  trap '_cnnlab_pg_stop' EXIT
  if ! "${as_pg[@]}" "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
      -o "-c listen_addresses=127.0.0.1 -p $port -k $dir/socket -c fsync=off" start >/dev/null; then
    cat "$dir/server.log" >&2
    _cnnlab_pg_fail "the PostgreSQL server did not start"
    return $?
  fi
  local psql=("${as_pg[@]}" "$bindir/psql" -h "$dir/socket" -p "$port" -U postgres -v ON_ERROR_STOP=1 -q)
  if ! "${psql[@]}" -d postgres -c "CREATE ROLE cnnlab LOGIN PASSWORD '$password';" \
      || ! "${psql[@]}" -d postgres -c "CREATE DATABASE cnnlab_test OWNER cnnlab;"; then
    _cnnlab_pg_fail "could not create the cnnlab user and database"
    return $?
  fi
  export CNNLAB_TEST_POSTGRES_URL="postgresql+psycopg2://cnnlab:${password}@127.0.0.1:${port}/cnnlab_test"
  echo "postgres.sh: PostgreSQL $("$bindir/postgres" --version | awk '{print $3}') on 127.0.0.1:$port," \
       "database cnnlab_test (CNNLAB_TEST_POSTGRES_URL exported)" >&2
}

_cnnlab_pg_stop() {
  if [ -n "${CNNLAB_PG_DIR:-}" ] && [ -d "$CNNLAB_PG_DIR" ]; then
    if [ -f "$CNNLAB_PG_DIR/data/postmaster.pid" ]; then
      "${CNNLAB_PG_AS[@]}" "$CNNLAB_PG_BINDIR/pg_ctl" -D "$CNNLAB_PG_DIR/data" -m fast -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$CNNLAB_PG_DIR"
  fi
  CNNLAB_PG_DIR=""
  unset CNNLAB_TEST_POSTGRES_URL
}

_cnnlab_pg_setup
