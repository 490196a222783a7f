#!/usr/bin/env bash
# Run every Jumpgate benchmark with its defaults; JSON results go to bench/results/.
# Usage: bash bench/run_all.sh   (or: make bench)
# Extra environment: PY (interpreter, default .venv/bin/python), SECONDS_ISSUANCE (default 20).
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
echo "results: $OUT/cert_issuance.json $OUT/cli_startup.json"
exit "$status"
