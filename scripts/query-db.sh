#!/usr/bin/env bash
# Inspect the HOMEPOT database from the shell: row counts, or the newest rows of one table.
# Works on SQLite and PostgreSQL alike: the database is HOMEPOT_DATABASE_URL (default: the
# SQLite file ./homepot.db). Credentials belong in that variable or .env, never in here.
# This is a thin wrapper around `homepot db count` and `homepot db show`.
set -euo pipefail

usage() {
    cat <<'USAGE'
Usage:
  ./scripts/query-db.sh count            row counts of every table
  ./scripts/query-db.sh TABLE [LIMIT]    newest LIMIT rows of TABLE (default 20)

Examples:
  ./scripts/query-db.sh api_request_logs
  ./scripts/query-db.sh device_metrics 50

The database is HOMEPOT_DATABASE_URL (default sqlite:///./homepot.db), e.g.
  HOMEPOT_DATABASE_URL=postgresql://homepot@localhost/homepot ./scripts/query-db.sh count
For filters and JSON output use the CLI: .venv/bin/homepot db show --help
USAGE
}

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -x "$root/.venv/bin/homepot" ]]; then
    homepot="$root/.venv/bin/homepot"
elif command -v homepot >/dev/null 2>&1; then
    homepot="$(command -v homepot)"
else
    echo "error: the homepot command was not found (looked in $root/.venv/bin and PATH);" \
        "install the project first: pip install -e ." >&2
    exit 1
fi

case "${1:-}" in
    -h | --help | help)
        usage
        exit 0
        ;;
    "")
        usage >&2
        exit 2
        ;;
    count)
        if [[ $# -ne 1 ]]; then
            usage >&2
            exit 2
        fi
        exec "$homepot" db count
        ;;
esac

if [[ $# -gt 2 ]]; then
    usage >&2
    exit 2
fi
table="$1"
limit="${2:-20}"
if ! [[ "$limit" =~ ^[1-9][0-9]*$ ]]; then
    echo "error: LIMIT must be a positive whole number, got '$limit'" >&2
    usage >&2
    exit 2
fi
# An unknown table makes the CLI list the tables and exit with status 2.
exec "$homepot" db show "$table" --limit "$limit"
