#!/usr/bin/env bash
# Validate that analytics collection works on a running HOMEPOT server (the spec's "Testing
# the System"): checks the backend is up, makes test API calls, queries every analytics
# endpoint (waiting for the streams a fleet fills) and prints what each stream collected.
# Exits non-zero when a stream collected nothing. A thin wrapper around `homepot validate`.
#
# Usage:
#   ./scripts/test-analytics.sh [--url URL] [--email E] [--password P | --token T] [--wait S]
# The URL defaults to HOMEPOT_URL, else http://127.0.0.1:8000. Credentials of an admin come
# from the options or HOMEPOT_TOKEN / HOMEPOT_VALIDATE_EMAIL / HOMEPOT_VALIDATE_PASSWORD;
# `homepot demo` prints its admin's password when it starts.
set -euo pipefail

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

for arg in "$@"; do
    case "$arg" in
        --url | --url=* | -h | --help) exec "$homepot" validate "$@" ;;
    esac
done
exec "$homepot" validate --url "${HOMEPOT_URL:-http://127.0.0.1:8000}" "$@"
