#!/usr/bin/env bash
# A throwaway Jumpgate cluster on this machine, in ./demo (delete it to start over):
#   - auth + proxy on an embedded SQLite backend;
#   - a throwaway PostgreSQL (TLS on, certificate authentication only) enrolled through a
#     Database Service agent that joins with a db token, as in the self-hosted PostgreSQL guide;
#   - a user alice with a password, ready for `tsh login`;
#   - a bot (tbot) with a database output, and `tbot proxy db --tunnel` in front of it;
#   - a small web app (scripts/demo_app.py) behind the proxy as "demo-app".
# Runs in the foreground; Ctrl-C stops everything (state is kept for the next run).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BIN=$ROOT/.venv/bin
DEMO=${JUMPGATE_DEMO_DIR:-$ROOT/demo}
mkdir -p "$DEMO"
chmod 711 "$DEMO"
export PATH=$BIN:$PATH

free_port() {
  "$BIN/python" - "$1" <<'PY'
import socket, sys
for port in (int(sys.argv[1]), 0):
    try:
        s = socket.socket(); s.bind(("127.0.0.1", port)); print(s.getsockname()[1]); break
    except OSError:
        continue
PY
}

PIDS=()
PG_CTL=""
stop() {
  trap - INT TERM EXIT
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  [[ -n $PG_CTL ]] && $PG_CTL stop -m fast >/dev/null 2>&1 || true
  echo
  echo "Demo stopped (state kept in $DEMO)."
  exit 0
}
trap stop INT TERM EXIT

# ------------------------------------------------------------------ the cluster
CONF=$DEMO/teleport.yaml
if [[ ! -f $CONF ]]; then
  WEB=$(free_port "${JUMPGATE_WEB_PORT:-3080}")
  AUTH=$(free_port "${JUMPGATE_AUTH_PORT:-3025}")
  teleport configure -o "file://$CONF" --cluster-name=demo.jumpgate.local \
    --public-addr="localhost:$WEB" --data-dir="$DEMO/data" \
    --web-listen-addr="127.0.0.1:$WEB" --auth-listen-addr="127.0.0.1:$AUTH" 2>/dev/null
fi
WEB=$(sed -n 's/^ *web_listen_addr: *127.0.0.1:\([0-9]*\).*/\1/p' "$CONF")
# ------------------------------------------------------------------ a small web app behind the proxy
if ! grep -q '^app_service:' "$CONF"; then
  cat >>"$CONF" <<YAML
app_service:
  enabled: true
  apps:
  - name: demo-app
    description: Demo web app
    uri: http://127.0.0.1:$(free_port 18080)
    labels:
      env: demo
YAML
fi
APP_PORT=$(sed -n 's|^ *uri: *http://127.0.0.1:\([0-9]*\).*|\1|p' "$CONF" | head -1)
"$BIN/python" scripts/demo_app.py --port "$APP_PORT" 2>"$DEMO/demo-app.log" &
PIDS+=($!)
teleport start -c "$CONF" 2>"$DEMO/teleport.log" &
PIDS+=($!)
TEL_PID=$!
TCTL="tctl -c $CONF"
for _ in $(seq 1 100); do
  $TCTL status >/dev/null 2>&1 && break
  kill -0 "$TEL_PID" 2>/dev/null || { echo "teleport failed to start:"; tail -20 "$DEMO/teleport.log"; exit 1; }
  sleep 0.1
done

# ------------------------------------------------------------------ a throwaway PostgreSQL
PGBIN=$(dirname "$(command -v initdb 2>/dev/null || ls -d /usr/lib/postgresql/*/bin/initdb | sort -V | tail -1)")
PGDATA=$DEMO/pgdata
RUN_AS=()
if [[ $(id -u) == 0 ]]; then
  id jumpgate-pg >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin jumpgate-pg
  RUN_AS=(runuser -u jumpgate-pg --)
fi
if [[ ! -f $DEMO/pg/server.crt ]]; then
  mkdir -p "$DEMO/pg"
  $TCTL auth sign --format=db --host=localhost,127.0.0.1 --out="$DEMO/pg/server" --ttl=2190h >/dev/null
fi
if [[ ! -d $PGDATA ]]; then
  PGPORT=$(free_port 55432)  # not 5433: the port the dashboard's snippets suggest for tsh proxy db
  mkdir -p "$PGDATA" && chmod 700 "$PGDATA"
  [[ ${#RUN_AS[@]} -gt 0 ]] && chown -R jumpgate-pg "$PGDATA" "$DEMO/pg"
  "${RUN_AS[@]}" "$PGBIN/initdb" -D "$PGDATA" -U postgres --auth=trust >/dev/null
  cat >>"$PGDATA/postgresql.conf" <<CONF
port = $PGPORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$DEMO/pg'
ssl = on
ssl_cert_file = '$DEMO/pg/server.crt'
ssl_key_file = '$DEMO/pg/server.key'
ssl_ca_file = '$DEMO/pg/server.cas'
CONF
  printf 'local all all trust\nhostssl all all ::/0 cert\nhostssl all all 0.0.0.0/0 cert\n' >"$PGDATA/pg_hba.conf"
  [[ ${#RUN_AS[@]} -gt 0 ]] && chown -R jumpgate-pg "$PGDATA"
fi
PGPORT=$(sed -n 's/^port = \([0-9]*\)/\1/p' "$PGDATA/postgresql.conf" | tail -1)
PG_CTL="${RUN_AS[*]} $PGBIN/pg_ctl -D $PGDATA -l $DEMO/pg/postgres.log"
$PG_CTL -w start >/dev/null
psql -h "$DEMO/pg" -p "$PGPORT" -U postgres -qAtc "select 1 from pg_roles where rolname='alice'" | grep -q 1 ||
  psql -h "$DEMO/pg" -p "$PGPORT" -U postgres -q -c "create user alice" -c "create database example owner alice"

# ------------------------------------------------------------------ the Database Service agent
if [[ ! -f $DEMO/db.yaml ]]; then
  $TCTL tokens add --type=db --ttl=1h --format=text >"$DEMO/db-token"
  teleport db configure create -o "file://$DEMO/db.yaml" --token="$DEMO/db-token" \
    --proxy="localhost:$WEB" --name=demo-postgres --protocol=postgres --uri="localhost:$PGPORT" \
    --labels=env=demo --description="Demo PostgreSQL" --data-dir="$DEMO/db-data" 2>/dev/null
fi
teleport start -c "$DEMO/db.yaml" 2>"$DEMO/db-agent.log" &
PIDS+=($!)

# ------------------------------------------------------------------ a user with a password
PASS_FILE=$DEMO/alice-password
if ! $TCTL get user/alice >/dev/null 2>&1; then
  URL=$($TCTL users add alice --roles=access,editor --db-users='*' --db-names='*' | grep -o 'https://[^ ]*')
  PASS=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
  curl -s -o /dev/null --cacert <($TCTL auth export --type=tls-host) -H "Origin: https://localhost:$WEB" \
    --data-urlencode "password=$PASS" --data-urlencode "password_confirm=$PASS" "$URL"
  umask 077 && echo "$PASS" >"$PASS_FILE"
fi
for _ in $(seq 1 100); do
  $TCTL get db_server/demo-postgres >/dev/null 2>&1 && break
  sleep 0.1
done

# ------------------------------------------------------------------ a bot (Machine ID)
BOT_CONF=$DEMO/tbot.yaml
BOT_OUT=$DEMO/machine-id
new_bot() {
  $TCTL bots rm demo-bot >/dev/null 2>&1 || true
  rm -rf "$DEMO/bot-data" "$BOT_OUT"
  TOKEN=$($TCTL bots add demo-bot --roles=demo-bot-db | sed -n 's/^The bot token: //p')
  PIN=$($TCTL status | sed -n 's/^CA pin *//p')
  cat >"$BOT_CONF" <<YAML
version: v2
proxy_server: localhost:$WEB
onboarding:
  join_method: token
  token: "$TOKEN"
  ca_pins: ["$PIN"]
storage:
  type: directory
  path: $DEMO/bot-data
outputs:
  - type: database
    destination:
      type: directory
      path: $BOT_OUT
    service: demo-postgres
    database: example
    username: alice
YAML
}
if ! $TCTL get role/demo-bot-db >/dev/null 2>&1; then
  $TCTL create -f /dev/stdin >/dev/null <<YAML
kind: role
version: v7
metadata:
  name: demo-bot-db
spec:
  allow:
    db_labels:
      '*': '*'
    db_names: [example]
    db_users: [alice]
    rules:
      - resources: [db_server, db]
        verbs: [read, list]
YAML
fi
# a stored identity older than its TTL (1h) cannot renew: start the demo bot afresh
[[ -f $BOT_CONF ]] && tbot start -c "$BOT_CONF" --oneshot >>"$DEMO/tbot.log" 2>&1 || new_bot
# diagnostics (/readyz, /metrics) on a free port: the dashboard shows tbot's own renewal times
BOT_DIAG=$(free_port 13001)
sed -i --follow-symlinks '/^diag_addr:/d' "$BOT_CONF"
[[ -z $(tail -c1 "$BOT_CONF") ]] || echo >>"$BOT_CONF"  # a last line without its newline
echo "diag_addr: 127.0.0.1:$BOT_DIAG" >>"$BOT_CONF"
tbot start -c "$BOT_CONF" 2>>"$DEMO/tbot.log" &
PIDS+=($!)
for _ in $(seq 1 100); do
  grep -q CERTIFICATE "$BOT_OUT/tlscert" 2>/dev/null && break
  sleep 0.1
done
BOT_PG=$(free_port 15433)
# TELEPORT_HOME: its status file goes beside the tsh profile's, where the dashboard looks
TELEPORT_HOME=$DEMO/tsh tbot -c "$BOT_CONF" proxy --destination-dir="$BOT_OUT" db --port="$BOT_PG" --tunnel demo-postgres \
  >>"$DEMO/tbot-proxy.log" 2>&1 &
BOT_PROXY_PID=$!
PIDS+=($BOT_PROXY_PID)
# listening once its status file is there: only then print the psql line that uses it
for _ in $(seq 1 150); do
  [[ -f $DEMO/tsh/proxies/$BOT_PROXY_PID-$BOT_PG.json ]] && break
  kill -0 "$BOT_PROXY_PID" 2>/dev/null || { echo "tbot proxy failed to start:"; tail -20 "$DEMO/tbot-proxy.log"; exit 1; }
  sleep 0.1
done

cat <<TXT

 Jumpgate demo is running (logs in $DEMO: teleport.log, db-agent.log, tbot.log,
 tbot-proxy.log, demo-app.log, pg/postgres.log)

   Proxy web port   https://localhost:$WEB   (certificate signed by the cluster's host CA)
   PostgreSQL       localhost:$PGPORT (TLS, certificate authentication only), behind the
                    Database Service as "demo-postgres"

$($TCTL status | sed 's/^/   /')

 In another terminal:

   export PATH=$BIN:\$PATH TELEPORT_HOME=$DEMO/tsh
   tsh login --proxy=localhost:$WEB --user=alice     # password: $(cat "$PASS_FILE")
   tsh db ls
   tsh db connect --db-user=alice --db-name=example demo-postgres
   tsh proxy db --tunnel --port=15432 --db-user=alice --db-name=example demo-postgres
   tctl -c $CONF audit ls

 The bot "demo-bot" (tbot, renewing in $BOT_OUT) serves demo-postgres through
 an authenticated tunnel — any local client, no certificates needed:

   psql "host=localhost port=$BOT_PG dbname=example user=alice"
   tctl -c $CONF bots ls
   curl http://127.0.0.1:$BOT_DIAG/readyz                 # the bot's health and renewal times

 The dashboard (databases, apps, the setup wizard, certificate countdowns; after tsh login):

   jumpgate -c $BOT_CONF

 The web app "demo-app" (scripts/demo_app.py on 127.0.0.1:$APP_PORT) behind the proxy, after tsh login:

   tsh apps ls
   tsh apps login demo-app
   tsh proxy app demo-app --port=18081 &   # then open http://127.0.0.1:18081/
   curl http://127.0.0.1:18081/api/users

 Or open https://demo-app.localhost:$WEB/ in a browser and sign in as alice (the proxy's
 certificate is signed by the cluster's own CA: accept it, or import the CA from
 tctl -c $CONF auth export --type=tls-host); the page shows the JWT the app receives.

 Press Ctrl-C to stop.
TXT
wait "$TEL_PID" || true
echo "teleport exited; see $DEMO/teleport.log"
