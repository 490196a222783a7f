#!/usr/bin/env bash
# A throwaway Jumpgate cluster on this machine: auth + proxy on an embedded SQLite
# backend, in ./demo (delete it to start over). Runs in the foreground; Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BIN=$ROOT/.venv/bin
DEMO=${JUMPGATE_DEMO_DIR:-$ROOT/demo}
mkdir -p "$DEMO"
chmod 700 "$DEMO"

free_port() { "$BIN/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", int(__import__("sys").argv[1]))); print(s.getsockname()[1])' "$1" 2>/dev/null || "$BIN/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

CONF=$DEMO/teleport.yaml
if [[ ! -f $CONF ]]; then
  WEB=$(free_port "${JUMPGATE_WEB_PORT:-3080}")
  AUTH=$(free_port "${JUMPGATE_AUTH_PORT:-3025}")
  "$BIN/teleport" configure -o "file://$CONF" --cluster-name=demo.jumpgate.local \
    --public-addr="localhost:$WEB" --data-dir="$DEMO/data" \
    --web-listen-addr="127.0.0.1:$WEB" --auth-listen-addr="127.0.0.1:$AUTH" 2>/dev/null
fi
WEB=$(sed -n 's/^ *web_listen_addr: *127.0.0.1:\([0-9]*\).*/\1/p' "$CONF")

"$BIN/teleport" start -c "$CONF" 2>"$DEMO/teleport.log" &
PID=$!
stop() { kill -TERM $PID 2>/dev/null; wait $PID 2>/dev/null; echo; echo "Demo cluster stopped (state kept in $DEMO)."; exit 0; }
trap stop INT TERM

for _ in $(seq 1 100); do
  if "$BIN/tctl" -c "$CONF" status >/dev/null 2>&1; then break; fi
  if ! kill -0 $PID 2>/dev/null; then echo "teleport failed to start:"; tail -20 "$DEMO/teleport.log"; exit 1; fi
  sleep 0.1
done

TCTL="$BIN/tctl -c $CONF"
if $TCTL get user/alice >/dev/null 2>&1; then
  $TCTL users reset alice >"$DEMO/alice-invite.txt"   # a fresh link each run
else
  $TCTL users add alice --roles=access,editor --db-users='*' --db-names='*' >"$DEMO/alice-invite.txt"
fi

cat <<TXT

 Jumpgate demo cluster is running (logs: $DEMO/teleport.log)

   Proxy web port   https://localhost:$WEB   (certificate signed by the cluster's host CA)
   Config           $CONF

$($TCTL status | sed 's/^/   /')

 Try, in another terminal:

   export PATH=$BIN:\$PATH
   tctl -c $CONF status
   tctl -c $CONF get roles
   tctl -c $CONF bots add app --roles=access
   tctl -c $CONF auth sign --format=db --host=localhost --out=$DEMO/server --ttl=2190h
   curl --cacert <(tctl -c $CONF auth export --type=tls-host) https://localhost:$WEB/webapi/ping

 Invite link for user alice: $(grep -o 'https://[^ ]*' "$DEMO/alice-invite.txt" | head -1)

 Press Ctrl-C to stop.
TXT
wait $PID || true
echo "teleport exited; see $DEMO/teleport.log"
