#!/usr/bin/env bash
# Run every Jumpgate benchmark with its defaults; JSON results go to bench/results/.
# Usage: bash bench/run_all.sh   (or: make bench)
# Extra environment: PY (interpreter, default .venv/bin/python), SECONDS_ISSUANCE (default 20),
# SECONDS_DB (pgbench phases of db_proxy.py, default 20), COPY_MB_DB (default 1024),
# DB_PROXY_ARGS (more db_proxy.py flags, e.g. "--quick", "--chains tsh" or "--max-load 1.5"),
# BOT_RENEWAL_ARGS (bot_renewal.py flags, e.g. "--quick" or "--bots 200 --duration 60").
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
OUT=bench/results
mkdir -p "$OUT"
status=0

echo "== bench/cert_issuance.py =="
"$PY" bench/cert_issuance.py --seconds "${SECONDS_ISSUANCE:-20}" --json-out "$OUT/cert_issuance.json" || status=$?
echo
echo "== bench/cli_startup.py =="
"$PY" bench/cli_startup.py --json-out "$OUT/cli_startup.json" || status=$?
echo
echo "== bench/db_proxy.py =="
# shellcheck disable=SC2086 # DB_PROXY_ARGS is a list of flags
"$PY" bench/db_proxy.py --seconds "${SECONDS_DB:-20}" --copy-mb "${COPY_MB_DB:-1024}" \
    --json-out "$OUT/db_proxy.json" ${DB_PROXY_ARGS:-} || status=$?
echo
echo "== bench/bot_renewal.py =="
# shellcheck disable=SC2086 # BOT_RENEWAL_ARGS is a list of flags
"$PY" bench/bot_renewal.py --json-out "$OUT/bot_renewal.json" ${BOT_RENEWAL_ARGS:-} || status=$?
echo
echo "results: $OUT/cert_issuance.json $OUT/cli_startup.json $OUT/db_proxy.json $OUT/bot_renewal.json"
exit "$status"
