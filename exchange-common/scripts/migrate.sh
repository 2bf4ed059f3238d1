#!/usr/bin/env bash
# Applies exchange-common/migrations/*.sql to DB_URL, each file once, in
# lexical order, each inside its own transaction, recording it in
# schema_migrations. Safe to run again and concurrently (an advisory lock
# serialises runners; a file already recorded is skipped). `exchange migrate`
# applies the same files with the same bookkeeping.
#
# Usage: DB_URL=postgres://... exchange-common/scripts/migrate.sh [--dir DIR]
set -euo pipefail

dir="$(dirname "${BASH_SOURCE[0]}")/../migrations"
if [ "${1:-}" = "--dir" ]; then
    dir="${2:?--dir needs a folder}"
fi
[ -d "$dir" ] || { echo "migrate: migrations folder $dir not found" >&2; exit 66; }
dir="$(cd "$dir" && pwd)"
if [ -z "${DB_URL:-}" ]; then
    echo "migrate: DB_URL is not set (postgres://user:password@host:5432/dbname)" >&2
    exit 64
fi
command -v psql >/dev/null 2>&1 || { echo "migrate: psql not found (apt-get install postgresql-client)" >&2; exit 69; }

psql_run() { psql "$DB_URL" -X -q -v ON_ERROR_STOP=1 "$@"; }

psql_run -c "CREATE TABLE IF NOT EXISTS schema_migrations (
    version text PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
)" >/dev/null 2>&1 || psql_run -c "SELECT 1 FROM schema_migrations LIMIT 1" >/dev/null || {
    echo "migrate: cannot reach the database or create schema_migrations (DB_URL host/credentials?)" >&2
    exit 1
}

shopt -s nullglob
files=("$dir"/*.sql)
if [ "${#files[@]}" -eq 0 ]; then
    echo "migrate: no migrations in $dir" >&2
    exit 1
fi

applied=0
for file in "${files[@]}"; do
    version="$(basename "$file")"
    case "$version" in
        *"'"*) echo "migrate: refusing file name with a quote: $version" >&2; exit 1 ;;
    esac
    # One transaction per file: the advisory lock waits for a concurrent
    # runner, then the check inside the same transaction decides.
    if ! out=$(psql_run -t -A <<SQL 2>&1
BEGIN;
SELECT pg_advisory_xact_lock(727361);
SELECT EXISTS (SELECT 1 FROM schema_migrations WHERE version = '$version') AS already \gset
\if :already
\echo skip
\else
\i '$file'
INSERT INTO schema_migrations (version) VALUES ('$version');
\echo applied
\endif
COMMIT;
SQL
    ); then
        echo "migrate: $version FAILED, nothing of it was applied:" >&2
        echo "$out" >&2
        exit 1
    fi
    case "$out" in
        *applied*) echo "migrate: applied $version"; applied=$((applied + 1)) ;;
        *) ;;
    esac
done
echo "migrate: done, $applied applied, $(( ${#files[@]} - applied )) already present"
