#!/usr/bin/env bash
# scripts/test.sh — THE test command for DBOSify for Rust.
#
# Starts (or reuses) the project's private PostgreSQL (scripts/pg.sh), exports
# DBOSIFY_TEST_DATABASE_URL=postgres://postgres@127.0.0.1:<port>/dbosify_test, then runs
#   cargo test --workspace "$@"
# and exits with cargo's status. Examples:
#   scripts/test.sh                          # everything
#   scripts/test.sh -p dbos-core             # one crate
#   scripts/test.sh -- --nocapture           # arguments after -- go to the test binaries
#
# Options (only before a `--`; everything else is passed to cargo test):
#   --keep   leave Postgres running afterwards (the default: a running cluster is cheap and the
#            next run reuses it)
#   --stop   stop Postgres afterwards
# Stop it by hand with: scripts/pg.sh stop      Its log: target/pg/data/postgres.log
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
# shellcheck source=scripts/pg.sh
source "$here/pg.sh"

stop_after=0
args=()
seen_dashdash=0
for a in "$@"; do
    if [ "$seen_dashdash" -eq 0 ]; then
        case "$a" in
            --keep) stop_after=0; continue ;;
            --stop) stop_after=1; continue ;;
            --) seen_dashdash=1 ;;
        esac
    fi
    args+=("$a")
done

pg_start
echo "test.sh: DBOSIFY_TEST_DATABASE_URL=$DBOSIFY_TEST_DATABASE_URL" >&2

cd "$_PG_REPO"
rc=0
cargo test --workspace ${args[@]+"${args[@]}"} || rc=$?

if [ "$stop_after" -eq 1 ]; then
    pg_stop || true
fi
exit "$rc"
