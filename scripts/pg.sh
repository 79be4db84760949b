#!/usr/bin/env bash
# scripts/pg.sh — a PRIVATE PostgreSQL cluster for DBOSify for Rust's tests, demo and CI.
#
# It never touches any other Postgres on the machine. The cluster lives in this repo's
# target/pg/ (override with DBOSIFY_PG_DIR), listens on 127.0.0.1 only, on the first free
# port from 54329 upwards, with trust auth and superuser `postgres`. fsync and
# synchronous_commit stay ON so that timings measured against it are honest.
#
# Run it:
#   scripts/pg.sh start        init on first use, start (or reuse a running cluster), create the
#                              databases dbosify_test and dbosify_demo; prints one line on stdout:
#                                DBOSIFY_TEST_DATABASE_URL=postgres://postgres@127.0.0.1:<port>/dbosify_test
#   scripts/pg.sh stop         stop the cluster (fast shutdown); no-op if not running
#   scripts/pg.sh restart      stop + start (keeps the port if it is still free); prints like start
#   scripts/pg.sh url [db]     print postgres://postgres@127.0.0.1:<port>/<db> (db defaults to dbosify_test)
#   scripts/pg.sh status       say whether it runs, where, and on which port
#
# Or source it (scripts/test.sh and scripts/demo.sh do) and call pg_start / pg_stop / pg_url.
# pg_start exports:
#   DBOSIFY_TEST_DATABASE_URL  postgres://postgres@127.0.0.1:<port>/dbosify_test
#   DBOSIFY_DEMO_DATABASE_URL  postgres://postgres@127.0.0.1:<port>/dbosify_demo
#   DBOSIFY_PG_PORT            the port
#   DBOSIFY_PG_DATA            the data directory (postgres.log is in it)
#   DBOSIFY_PG_SCRIPT          absolute path of this script (tests that restart Postgres call it)
#
# Inputs (environment):
#   DBOSIFY_PG_DIR         base directory; the cluster is $DBOSIFY_PG_DIR/data (default <repo>/target/pg)
#   DBOSIFY_PG_PORT_START  first port probed for a NEW start (default 54329)
#
# If initdb/pg_ctl are missing it installs Debian's `postgresql` package with apt-get.
# Postgres refuses to run as root: as root, the server runs as the `postgres` system user, or
# as a `dbosify-pg` system user created on the spot if `postgres` does not exist.
#
# As a library this file does not change the caller's shell options; functions return non-zero
# and print "pg.sh: ..." on stderr when something fails.

_PG_SCRIPT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)/$(basename "${BASH_SOURCE[0]}")"
_PG_REPO="$(cd "$(dirname "$_PG_SCRIPT")/.." && pwd -P)"
_PG_SUPERUSER=postgres
_PG_DATABASES="dbosify_test dbosify_demo"

# State filled in by _pg_resolve (kept in globals so the helpers stay short).
_PG_BASE=""      # base dir: holds data/ (and initdb.log)
_PG_DATA=""      # PGDATA
_PG_BIN=""       # directory with initdb, pg_ctl, postgres
_PG_PSQL=""      # psql binary
_PG_OS_USER=""   # OS user that owns/runs the cluster; empty = the current user
_PG_LOCK_FD=""   # fd holding the start/stop lock, if flock(1) exists

_pg_err() { echo "pg.sh: $*" >&2; }

# ---------------------------------------------------------------------------------------------
# Locating things
# ---------------------------------------------------------------------------------------------

# The base directory we want, and the /tmp fallback used when the server's OS user cannot reach it.
_pg_wanted_base() {
    local want="${DBOSIFY_PG_DIR:-$_PG_REPO/target/pg}"
    case "$want" in /*) ;; *) want="$PWD/$want" ;; esac
    printf '%s\n' "${want%/}"
}
_pg_fallback_base() {
    local sum
    sum="$(printf '%s' "$1" | cksum | cut -d' ' -f1)"
    printf '/tmp/dbosify-pg-%s\n' "$sum"
}

# Find the PostgreSQL server binaries. $1 = major version of an existing cluster (may be empty).
# Order: binaries of that exact version; initdb on PATH; newest /usr/lib/postgresql/*/bin.
_pg_find_bin() {
    local want_ver="$1" c d
    _PG_BIN=""
    if [ -n "$want_ver" ] && [ -x "/usr/lib/postgresql/$want_ver/bin/pg_ctl" ]; then
        _PG_BIN="/usr/lib/postgresql/$want_ver/bin"
    fi
    if [ -z "$_PG_BIN" ] && c="$(command -v initdb 2>/dev/null)" && [ -n "$c" ]; then
        d="$(dirname "$(readlink -f "$c")")"
        [ -x "$d/pg_ctl" ] && [ -x "$d/postgres" ] && _PG_BIN="$d"
    fi
    if [ -z "$_PG_BIN" ]; then
        for d in $(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V -r); do
            if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then _PG_BIN="$d"; break; fi
        done
    fi
    [ -n "$_PG_BIN" ] || return 1
    if [ -x "$_PG_BIN/psql" ]; then
        _PG_PSQL="$_PG_BIN/psql"
    else
        _PG_PSQL="$(command -v psql 2>/dev/null)" || true
    fi
    return 0
}

# Install PostgreSQL from the distribution (Debian/Ubuntu). Output goes to a log, shown on failure.
_pg_install() {
    local sudo="" log
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
            _pg_err "PostgreSQL (initdb, pg_ctl) is not installed and I am not root and there is no sudo;"
            _pg_err "install the 'postgresql' package, or put initdb/pg_ctl on PATH"
            return 1
        fi
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        _pg_err "PostgreSQL (initdb, pg_ctl) is not installed and there is no apt-get; install PostgreSQL server binaries and put them on PATH"
        return 1
    fi
    log="$(mktemp "${TMPDIR:-/tmp}/dbosify-pg-apt.XXXXXX")"
    _pg_err "note: PostgreSQL not found; installing the 'postgresql' package with apt-get (log: $log)"
    if ! { $sudo env DEBIAN_FRONTEND=noninteractive apt-get update &&
           $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql; } >"$log" 2>&1; then
        tail -n 30 "$log" >&2
        _pg_err "apt-get install postgresql failed (full log: $log)"
        return 1
    fi
    rm -f "$log"
}

# Which OS user runs the server. Non-root: ourselves. Root: the owner of an existing data dir,
# else `postgres`, else a dedicated `dbosify-pg` system user (created if needed).
_pg_pick_os_user() {
    local owner
    _PG_OS_USER=""
    [ "$(id -u)" -eq 0 ] || return 0
    if [ -d "$_PG_DATA" ]; then
        owner="$(stat -c %U "$_PG_DATA")"
        if [ "$owner" != root ] && [ "$owner" != UNKNOWN ]; then _PG_OS_USER="$owner"; return 0; fi
    fi
    if id -u postgres >/dev/null 2>&1; then _PG_OS_USER=postgres; return 0; fi
    if ! id -u dbosify-pg >/dev/null 2>&1; then
        if ! useradd --system --user-group --no-create-home --home-dir /nonexistent \
                --shell /usr/sbin/nologin dbosify-pg >/dev/null 2>&1; then
            _pg_err "running as root, no 'postgres' user, and 'useradd --system dbosify-pg' failed"
            return 1
        fi
    fi
    _PG_OS_USER=dbosify-pg
}

# Run a command as the server's OS user (from /, so an unreadable cwd does not matter).
_pg_as() {
    if [ -z "$_PG_OS_USER" ] || [ "$_PG_OS_USER" = "$(id -un)" ]; then
        "$@"
    elif command -v runuser >/dev/null 2>&1; then
        (cd / && runuser -u "$_PG_OS_USER" -- "$@")
    else
        (cd / && su -s /bin/bash "$_PG_OS_USER" -c "$(printf '%q ' "$@")")
    fi
}

# Resolve base/data dirs (an existing cluster wins: wanted dir, then its /tmp fallback).
_pg_resolve() {
    local want alt
    want="$(_pg_wanted_base)"
    alt="$(_pg_fallback_base "$want")"
    if [ -f "$want/data/PG_VERSION" ]; then _PG_BASE="$want"
    elif [ -f "$alt/data/PG_VERSION" ]; then _PG_BASE="$alt"
    else _PG_BASE="$want"
    fi
    _PG_DATA="$_PG_BASE/data"
}

# ---------------------------------------------------------------------------------------------
# Locking: concurrent `start`s (two test runs at once) must not both initdb or pick ports.
# ---------------------------------------------------------------------------------------------
_pg_lock() {
    local lockfile
    command -v flock >/dev/null 2>&1 || return 0
    lockfile="$(_pg_wanted_base).lock"
    mkdir -p "$(dirname "$lockfile")" || return 1
    exec {_PG_LOCK_FD}>>"$lockfile" || return 1
    if ! flock -w 300 "$_PG_LOCK_FD"; then
        _pg_err "timed out waiting for $lockfile"
        _pg_unlock
        return 1
    fi
}
_pg_unlock() {
    if [ -n "$_PG_LOCK_FD" ]; then exec {_PG_LOCK_FD}>&-; _PG_LOCK_FD=""; fi
    return 0
}

# ---------------------------------------------------------------------------------------------
# Cluster operations
# ---------------------------------------------------------------------------------------------

# pg_ctl as the server's user, in a subshell that first closes every fd above 2: the postmaster
# would inherit them and hold them for its whole life -- our lock (blocking every later start) or
# a CI harness's output pipe (the job would never see EOF). stdin is /dev/null for the same reason.
_pg_ctl() {
    (
        local f n
        if [ -n "$_PG_LOCK_FD" ]; then eval "exec $_PG_LOCK_FD>&-"; fi
        for f in /proc/self/fd/*; do
            n="${f##*/}"
            case "$n" in ''|*[!0-9]*) continue ;; esac
            if [ "$n" -gt 2 ] && [ "$n" -lt 255 ]; then eval "exec $n>&-" 2>/dev/null || true; fi
        done
        _pg_as "$_PG_BIN/pg_ctl" -D "$_PG_DATA" "$@" </dev/null
    )
}

_pg_running() { _pg_ctl status >/dev/null 2>&1; }

# After a reboot or container restart, postmaster.pid may name a PID that now belongs to some
# unrelated process; pg_ctl would then think the server runs and postgres would refuse to start.
# Remove such a pid file, but only when that process is certainly not a postgres.
_pg_clear_stale_pid() {
    local pid comm
    [ -f "$_PG_DATA/postmaster.pid" ] && [ -d /proc/1 ] || return 0
    pid="$(sed -n 1p "$_PG_DATA/postmaster.pid" 2>/dev/null)"
    case "$pid" in ''|*[!0-9]*) return 0 ;; esac
    [ -r "/proc/$pid/comm" ] || return 0          # no such process: postgres handles that itself
    comm="$(cat "/proc/$pid/comm" 2>/dev/null)"
    case "$comm" in postgres|postmaster) return 0 ;; esac
    _pg_err "note: removing stale $_PG_DATA/postmaster.pid (PID $pid is now '$comm')"
    rm -f "$_PG_DATA/postmaster.pid"
}

# Port of the running server (postmaster.pid line 4), else the one recorded in dbosify.conf.
_pg_port() {
    local p=""
    if [ -f "$_PG_DATA/postmaster.pid" ] && _pg_running; then
        p="$(sed -n 4p "$_PG_DATA/postmaster.pid" 2>/dev/null)"
    fi
    if [ -z "$p" ] && [ -f "$_PG_DATA/dbosify.conf" ]; then
        p="$(sed -n "s/^port = \([0-9]*\).*/\1/p" "$_PG_DATA/dbosify.conf")"
    fi
    [ -n "$p" ] || return 1
    printf '%s\n' "$p"
}

# Is something listening on 127.0.0.1:$1?
_pg_port_busy() {
    timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" >/dev/null 2>&1
}

# First free port at or above $1.
_pg_free_port() {
    local p="$1" last=$(( $1 + 200 ))
    while [ "$p" -le "$last" ]; do
        _pg_port_busy "$p" || { printf '%s\n' "$p"; return 0; }
        p=$(( p + 1 ))
    done
    _pg_err "no free TCP port in $1..$last on 127.0.0.1"
    return 1
}

# Create the cluster (first start only).
_pg_initdb() {
    local want alt
    if [ -e "$_PG_DATA" ] && [ -n "$(ls -A "$_PG_DATA" 2>/dev/null)" ]; then
        _pg_err "$_PG_DATA exists, is not empty, and holds no cluster (no PG_VERSION); remove it and retry"
        return 1
    fi
    mkdir -p "$_PG_BASE" || return 1
    if [ -n "$_PG_OS_USER" ]; then
        chown "$_PG_OS_USER:" "$_PG_BASE" && chmod 700 "$_PG_BASE" || return 1
        # The server's user must be able to traverse every parent (e.g. a repo under /root cannot).
        if ! _pg_as test -w "$_PG_BASE" -a -x "$_PG_BASE"; then
            want="$_PG_BASE"
            alt="$(_pg_fallback_base "$want")"
            _pg_err "note: user '$_PG_OS_USER' cannot reach $want (a parent directory is not traversable);"
            _pg_err "note: the cluster goes to $alt instead"
            rmdir "$want" 2>/dev/null || true
            _PG_BASE="$alt"; _PG_DATA="$alt/data"
            mkdir -p "$_PG_BASE" && chown "$_PG_OS_USER:" "$_PG_BASE" && chmod 700 "$_PG_BASE" || return 1
        fi
    fi
    if ! _pg_as "$_PG_BIN/initdb" -D "$_PG_DATA" -U "$_PG_SUPERUSER" --auth-local=trust --auth-host=trust \
            -E UTF8 --no-locale >"$_PG_BASE/initdb.log" 2>&1; then
        tail -n 20 "$_PG_BASE/initdb.log" >&2
        _pg_err "initdb failed (log: $_PG_BASE/initdb.log)"
        return 1
    fi
    # Our settings live in dbosify.conf (rewritten at every start); postgresql.conf includes it last.
    printf "\n# DBOSify for Rust: settings managed by scripts/pg.sh\ninclude_if_exists = 'dbosify.conf'\n" \
        >>"$_PG_DATA/postgresql.conf" || return 1
}

# Write dbosify.conf for port $1.
_pg_write_conf() {
    local port="$1" sockdir="$_PG_DATA" sum
    # A Unix socket path must fit in ~107 bytes; a deep checkout would overflow it.
    if [ $(( ${#sockdir} + 18 )) -gt 100 ]; then
        sum="$(printf '%s' "$_PG_DATA" | cksum | cut -d' ' -f1)"
        sockdir="/tmp/dbosify-pg-sock-$sum"
        mkdir -p "$sockdir" && chmod 700 "$sockdir" || return 1
        [ -z "$_PG_OS_USER" ] || chown "$_PG_OS_USER:" "$sockdir" || return 1
    fi
    cat >"$_PG_DATA/dbosify.conf" <<EOF || return 1
# Managed by scripts/pg.sh; rewritten at every start. Edits here are lost.
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$sockdir'
max_connections = 200
# Durability stays on: tests and benchmarks measure the real cost of a commit.
fsync = on
synchronous_commit = on
full_page_writes = on
EOF
    [ -z "$_PG_OS_USER" ] || chown "$_PG_OS_USER:" "$_PG_DATA/dbosify.conf" || return 1
}

# psql against the private cluster (TCP, trust). Args after the port go to psql.
_pg_psql() {
    local port="$1"; shift
    PGCONNECT_TIMEOUT=10 "$_PG_PSQL" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" \
        -U "$_PG_SUPERUSER" "$@"
}

# Create the project databases if missing (tolerates a concurrent creator).
_pg_create_dbs() {
    local port="$1" db have
    for db in $_PG_DATABASES; do
        have="$(_pg_psql "$port" -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'")" || return 1
        [ "$have" = 1 ] && continue
        if ! _pg_psql "$port" -d postgres -c "CREATE DATABASE $db" >/dev/null; then
            have="$(_pg_psql "$port" -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'")"
            [ "$have" = 1 ] || { _pg_err "could not create database $db"; return 1; }
        fi
    done
}

# Start the server if it is not running; retries with the next port if the bind fails.
_pg_start_server() {
    local port first attempt logsize err logf="$_PG_DATA/postgres.log"
    first="$(_pg_port 2>/dev/null)" || first="${DBOSIFY_PG_PORT_START:-54329}"
    for attempt in 1 2 3 4 5; do
        port="$(_pg_free_port "$first")" || return 1
        _pg_write_conf "$port" || return 1
        logsize=0
        [ -f "$logf" ] && logsize="$(wc -c <"$logf")"
        if err="$(_pg_ctl -l "$logf" -w -t 120 start 2>&1 >/dev/null)"; then
            return 0
        fi
        if tail -c +"$(( logsize + 1 ))" "$logf" 2>/dev/null | grep -q -e 'could not bind' -e 'Address already in use'; then
            first=$(( port + 1 ))   # lost a race for the port: walk on
            continue
        fi
        [ -n "$err" ] && printf '%s\n' "$err" >&2
        tail -n 20 "$logf" >&2 2>/dev/null
        _pg_err "pg_ctl start failed (server log: $logf)"
        return 1
    done
    _pg_err "could not bind a port after $attempt attempts (server log: $logf)"
    return 1
}

# Everything `start` does, under the lock; sets _PG_STARTED_PORT.
_pg_start_locked() {
    local ver="" port i
    _pg_resolve
    [ -f "$_PG_DATA/PG_VERSION" ] && ver="$(cat "$_PG_DATA/PG_VERSION")"
    if ! _pg_find_bin "$ver"; then
        _pg_install || return 1
        if ! _pg_find_bin "$ver"; then _pg_err "no PostgreSQL server binaries found after install"; return 1; fi
    fi
    if [ -n "$ver" ] && [ "$("$_PG_BIN/pg_ctl" --version | sed -n 's/^[^0-9]*\([0-9]*\).*/\1/p')" != "$ver" ]; then
        _pg_err "the cluster in $_PG_DATA is PostgreSQL $ver but only $_PG_BIN exists;"
        _pg_err "install postgresql-$ver, or discard the cluster: scripts/pg.sh stop; rm -rf $_PG_BASE"
        return 1
    fi
    if [ -z "$_PG_PSQL" ]; then _pg_err "psql not found (install postgresql-client)"; return 1; fi
    _pg_pick_os_user || return 1
    if [ "$(id -u)" -ne 0 ] && [ -d "$_PG_DATA" ] && [ ! -O "$_PG_DATA" ]; then
        _pg_err "$_PG_DATA belongs to $(stat -c %U "$_PG_DATA"), not to you; run as root, or set DBOSIFY_PG_DIR"
        return 1
    fi
    if [ -z "$ver" ]; then _pg_initdb || return 1; fi

    _pg_clear_stale_pid
    if ! _pg_running; then _pg_start_server || return 1; fi
    port="$(_pg_port)" || { _pg_err "cannot tell the server's port"; return 1; }

    # A "running" server must also answer (guards against a stale pid reused by another process).
    for i in $(seq 1 20); do
        if _pg_psql "$port" -d postgres -tAc 'SELECT 1' >/dev/null 2>&1; then break; fi
        if [ "$i" -eq 20 ]; then
            _pg_err "the cluster in $_PG_DATA looks running but does not answer on 127.0.0.1:$port"
            _pg_err "see $_PG_DATA/postgres.log; try: scripts/pg.sh stop && scripts/pg.sh start"
            return 1
        fi
        sleep 0.5
    done
    _pg_create_dbs "$port" || return 1
    _PG_STARTED_PORT="$port"
}

# ---------------------------------------------------------------------------------------------
# Public functions
# ---------------------------------------------------------------------------------------------

# Start (or reuse) the cluster and export the DBOSIFY_* variables listed in the header.
pg_start() {
    local rc
    _PG_STARTED_PORT=""
    _pg_lock || return 1
    rc=0
    _pg_start_locked || rc=$?
    _pg_unlock
    [ "$rc" -eq 0 ] || return "$rc"
    export DBOSIFY_PG_PORT="$_PG_STARTED_PORT"
    export DBOSIFY_PG_DATA="$_PG_DATA"
    export DBOSIFY_PG_SCRIPT="$_PG_SCRIPT"
    export DBOSIFY_TEST_DATABASE_URL="postgres://$_PG_SUPERUSER@127.0.0.1:$_PG_STARTED_PORT/dbosify_test"
    export DBOSIFY_DEMO_DATABASE_URL="postgres://$_PG_SUPERUSER@127.0.0.1:$_PG_STARTED_PORT/dbosify_demo"
}

# Stop the cluster if it runs (fast shutdown: disconnects clients, clean checkpoint).
pg_stop() {
    local rc=0 err
    _pg_resolve
    [ -f "$_PG_DATA/PG_VERSION" ] || return 0          # never created: nothing to stop
    _pg_find_bin "$(cat "$_PG_DATA/PG_VERSION")" || { _pg_err "PostgreSQL binaries not found"; return 1; }
    _pg_pick_os_user || return 1
    _pg_lock || return 1
    if _pg_running; then
        err="$(_pg_ctl -m fast -w -t 120 stop 2>&1 >/dev/null)" || rc=$?
        if [ "$rc" -ne 0 ]; then printf '%s\n' "$err" >&2; _pg_err "pg_ctl stop failed"; fi
    fi
    _pg_unlock
    return "$rc"
}

# Print the URL of database $1 (default dbosify_test) in the cluster, running or not.
pg_url() {
    local port
    _pg_resolve
    if [ ! -f "$_PG_DATA/PG_VERSION" ]; then _pg_err "no cluster yet in $_PG_DATA; run: scripts/pg.sh start"; return 1; fi
    _pg_find_bin "$(cat "$_PG_DATA/PG_VERSION")" >/dev/null 2>&1 || true
    _pg_pick_os_user >/dev/null 2>&1 || true
    port="$(_pg_port)" || { _pg_err "no port recorded in $_PG_DATA/dbosify.conf"; return 1; }
    printf 'postgres://%s@127.0.0.1:%s/%s\n' "$_PG_SUPERUSER" "$port" "${1:-dbosify_test}"
}

# Human-readable status on stdout; exit 0 if running, 3 if stopped, 4 if never created.
pg_status() {
    local port
    _pg_resolve
    if [ ! -f "$_PG_DATA/PG_VERSION" ]; then echo "no cluster in $_PG_DATA"; return 4; fi
    _pg_find_bin "$(cat "$_PG_DATA/PG_VERSION")" || { _pg_err "PostgreSQL binaries not found"; return 1; }
    _pg_pick_os_user || return 1
    port="$(_pg_port 2>/dev/null)" || port="?"
    if _pg_running; then
        echo "running: PostgreSQL $(cat "$_PG_DATA/PG_VERSION") on 127.0.0.1:$port, data $_PG_DATA, user ${_PG_OS_USER:-$(id -un)}"
        return 0
    fi
    echo "stopped: data $_PG_DATA (last port $port)"
    return 3
}

# ---------------------------------------------------------------------------------------------
# Command-line entry point (only when executed, not when sourced)
# ---------------------------------------------------------------------------------------------
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -euo pipefail
    case "${1:-}" in
        start)   pg_start; echo "DBOSIFY_TEST_DATABASE_URL=$DBOSIFY_TEST_DATABASE_URL" ;;
        stop)    pg_stop ;;
        restart) pg_stop; pg_start; echo "DBOSIFY_TEST_DATABASE_URL=$DBOSIFY_TEST_DATABASE_URL" ;;
        url)     pg_url "${2:-dbosify_test}" ;;
        status)  rc=0; pg_status || rc=$?; exit "$rc" ;;
        *)
            echo "usage: $0 start|stop|restart|url [db]|status" >&2
            echo "  private PostgreSQL for this repo; data in \${DBOSIFY_PG_DIR:-<repo>/target/pg}/data" >&2
            exit 2
            ;;
    esac
fi
