#!/usr/bin/env bash
# scripts/demo.sh — run a real workflow end to end on nothing but Postgres.
#
# 1. starts (or reuses) the private PostgreSQL (scripts/pg.sh) and its database dbosify_demo;
# 2. exports TEMPORAL_ADDRESS=postgres://postgres@127.0.0.1:<port>/dbosify_demo — the one setting
#    that points a Temporal-style worker and starter at Postgres instead of a Temporal server;
# 3. builds the samples (cargo build --release -p samples --bins);
# 4. starts `hello-worker` in the background (its output: target/demo/worker.log);
# 5. runs `hello-starter` in the foreground and prints its output;
# 6. stops the worker and exits with the starter's status.
#
# Environment: DBOSIFY_DEMO_TIMEOUT (seconds the starter may take, default 120).
# Postgres is left running; stop it with scripts/pg.sh stop.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
# shellcheck source=scripts/pg.sh
source "$here/pg.sh"
cd "$_PG_REPO"

# Stop a background process: TERM, up to 5 s of grace, then KILL.
stop_pid() {
    local pid="$1"
    [ -n "$pid" ] || return 0
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in 1 2 3 4 5 6 7 8 9 10; do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.5
        done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}
worker_pid=""
starter_pid=""
cleanup() {
    trap '' INT TERM          # a second Ctrl-C/kill must not abort the cleanup half-way
    stop_pid "$starter_pid"; starter_pid=""
    stop_pid "$worker_pid"; worker_pid=""
}
# Whatever happens (error, Ctrl-C, kill), no worker or starter is left behind.
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

pg_start
export TEMPORAL_ADDRESS="$DBOSIFY_DEMO_DATABASE_URL"
echo "demo.sh: TEMPORAL_ADDRESS=$TEMPORAL_ADDRESS" >&2

echo "demo.sh: building samples (release)..." >&2
cargo build --release -p samples --bins
# Where cargo put the binaries (honours CARGO_TARGET_DIR and .cargo/config target-dir).
target_dir="$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
bin="${target_dir:-$_PG_REPO/target}/release"
for b in hello-worker hello-starter; do
    [ -x "$bin/$b" ] || { echo "demo.sh: $bin/$b was not built (does samples define it?)" >&2; exit 1; }
done

log_dir="$_PG_REPO/target/demo"
mkdir -p "$log_dir"
worker_log="$log_dir/worker.log"
echo "demo.sh: starting hello-worker (log: $worker_log)" >&2
"$bin/hello-worker" </dev/null >"$worker_log" 2>&1 &
worker_pid=$!

# A worker that dies at once (bad address, schema error) would leave the starter waiting forever.
sleep 1
if ! kill -0 "$worker_pid" 2>/dev/null; then
    rc=0; wait "$worker_pid" || rc=$?
    worker_pid=""
    echo "demo.sh: hello-worker exited at once (status $rc); its log:" >&2
    cat "$worker_log" >&2
    exit 1
fi

echo "demo.sh: running hello-starter" >&2
# In the background + `wait`, so that INT/TERM reach our trap at once instead of after the starter.
timeout "${DBOSIFY_DEMO_TIMEOUT:-120}" "$bin/hello-starter" </dev/null &
starter_pid=$!
rc=0
wait "$starter_pid" || rc=$?
starter_pid=""
if [ "$rc" -ne 0 ]; then
    [ "$rc" -eq 124 ] && echo "demo.sh: hello-starter timed out after ${DBOSIFY_DEMO_TIMEOUT:-120}s" >&2
    echo "demo.sh: hello-starter failed (status $rc); last lines of the worker log:" >&2
    tail -n 50 "$worker_log" >&2 || true
fi
cleanup
exit "$rc"
