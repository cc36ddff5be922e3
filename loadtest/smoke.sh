#!/usr/bin/env bash
# Locust smoke run: start a Warbler cluster (`warbler up`), run a few chat users headless for a
# few seconds, and fail unless locust saw zero failures (lost or duplicated deliveries, error
# answers, missing acks, dropped sockets). Everything started here is stopped here, by PID:
# the cluster runs in its own session (setsid) and every process left in that session is
# killed at the end.
#
# Usage: bash loadtest/smoke.sh <venv-dir>
set -euo pipefail
venv=${1:?usage: bash loadtest/smoke.sh <venv-dir>}
venv=$(cd "$venv" && pwd)
cd "$(dirname "$0")/.."
py="$venv/bin/python"
users=${SMOKE_USERS:-6}
# Spawning includes register + login (argon2: seconds on a busy machine), then they chat.
seconds=${SMOKE_SECONDS:-25}

port=$("$py" -c 'from serve.ingress import free_port; print(free_port())')
# A short directory: haproxy's unix sockets live below the data dir.
data_dir=$(mktemp -d /tmp/wsmoke-XXXXXX)
log="$data_dir/server.log"
server_pid=""
server_sid=""

cleanup() {
  local status=$?
  if [ -n "$server_pid" ]; then
    # Ctrl-C first, as a user would stop `warbler up`; then whatever is left of its session.
    kill -INT "$server_pid" 2>/dev/null || true
    for _ in $(seq 1 240); do
      kill -0 "$server_pid" 2>/dev/null || break
      sleep 0.5
    done
    if kill -0 "$server_pid" 2>/dev/null; then
      kill -KILL "$server_pid" 2>/dev/null || true
      # `warbler down` stops what `up` started, by the PIDs in its state file.
      if [ -f "$data_dir/up.json" ]; then "$venv/bin/warbler" down || true; fi
    fi
    if [ -n "$server_sid" ]; then
      for pid in $(ps -e -o pid= -o sid= | awk -v sid="$server_sid" '$2 == sid {print $1}'); do
        kill -KILL "$pid" 2>/dev/null || true
      done
    fi
  fi
  if [ "$status" -ne 0 ] && [ -f "$log" ]; then
    echo "--- server log (last 40 lines)"
    tail -n 40 "$log" || true
  fi
  rm -rf "$data_dir"
  exit "$status"
}
trap cleanup EXIT INT TERM

what="Warbler (warbler up)"
export WARBLER_DATA_DIR="$data_dir"
export WARBLER_NAMESPACE="smoke$(basename "$data_dir" | tr -dc 'a-z0-9')"
setsid "$venv/bin/warbler" up --port "$port" >"$log" 2>&1 &
ready_path=/readyz
startup_s=300
server_pid=$!
echo "smoke: started $what, pid $server_pid, port $port"

base="http://127.0.0.1:$port"
deadline=$(( $(date +%s) + startup_s ))
until "$py" -c "import httpx, sys; sys.exit(0 if httpx.get('$base$ready_path', timeout=2).status_code == 200 else 1)" 2>/dev/null; do
  if ! kill -0 "$server_pid" 2>/dev/null; then
    echo "smoke: the server exited before it was ready"
    exit 1
  fi
  if [ "$(date +%s)" -ge "$deadline" ]; then
    echo "smoke: the server was not ready within ${startup_s}s"
    exit 1
  fi
  sleep 1
done
# readyz answers once one replica serves; `warbler up` says it is up once every initial replica
# runs (a replica that comes later makes the others rebalance their sockets: locust users cope,
# but the smoke run should measure a settled cluster).
until grep -q "Warbler is up." "$log"; do
  if ! kill -0 "$server_pid" 2>/dev/null || [ "$(date +%s)" -ge "$deadline" ]; then
    echo "smoke: warbler up did not finish"
    exit 1
  fi
  sleep 1
done
# setsid made the server the leader of a new session (sid == pid); only then is "every process
# of that session" ours alone to kill at the end.
sid=$(ps -o sid= -p "$server_pid" | tr -d ' ' || true)
if [ "$sid" = "$server_pid" ]; then server_sid=$sid; fi
echo "smoke: ready at $base; locust: $users users for ${seconds}s"

# locust exits non-zero when any request failed (lost/duplicated deliveries count as failures).
"$venv/bin/locust" -f loadtest/locustfile.py --headless --only-summary \
  -u "$users" -r "$users" -t "${seconds}s" --stop-timeout 5 --csv "$data_dir/locust" \
  --host "$base" --send-rate 2 --group-size 3 --gap-grace 3
# Zero failures proves nothing if nothing flowed: demand acks and deliveries too.
"$py" - "$data_dir/locust_stats.csv" <<'PY'
import csv, sys
rows = {row["Name"]: int(row["Request Count"]) for row in csv.DictReader(open(sys.argv[1]))}
missing = [n for n in ("send->ack", "send->delivery") if rows.get(n, 0) == 0]
if missing:
    sys.exit(f"smoke: no {' and no '.join(missing)} at all: {rows}")
print(f"smoke: {rows['send->ack']} acks, {rows['send->delivery']} deliveries")
PY
echo "smoke: zero failures against $what"
