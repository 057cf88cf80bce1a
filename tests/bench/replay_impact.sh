#!/usr/bin/env bash
# Benchmark: reliable produce throughput while a replay from object storage
# runs against the same broker, as a ratio of produce alone, measured in one
# run; and the replay's own rate through the broker.
#
#   cargo build --release --workspace --bins
#   tests/bench/replay_impact.sh [HISTORY_MESSAGES] [SECONDS]
#
# It starts moto (localstack/), one release broker offloading to it with
# local copies deleted as soon as they are offloaded, fills a history topic,
# then runs `sava bench produce` alone, and again while `sava consume
# --from earliest` replays the history. Everything stops at the end.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
bin="$root/target/release"
history="${1:-300000}"
seconds="${2:-15}"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
work="$(mktemp -d)"
export SAVA_LOCALSTACK_RUN_DIR="$work/run"
broker_pid=""
cleanup() {
  [ -n "$broker_pid" ] && kill "$broker_pid" 2>/dev/null || true
  bash "$root/localstack/stop.sh" moto >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

eval "$(bash "$root/localstack/start.sh" moto --port "$(free_port)" --bucket sava)"
client_port="$(free_port)"; admin_port="$(free_port)"; http_port="$(free_port)"
SAVA_STORAGE__OBJECT_STORE=s3://sava/bench \
SAVA_OFFLOAD__LOCAL_RETENTION_SECS=0 \
SAVA_OFFLOAD__INTERVAL_MS=200 \
  "$bin/sava-broker" --data-dir "$work/data" --client-addr "127.0.0.1:$client_port" \
  --admin-addr "127.0.0.1:$admin_port" --http-addr "127.0.0.1:$http_port" >"$work/broker.log" 2>&1 &
broker_pid=$!
until curl -fs "http://127.0.0.1:$http_port/readyz" >/dev/null; do sleep 0.2; done

export SAVA_SERVICE_URL="http://127.0.0.1:$client_port"
admin() { "$bin/sava-admin" --admin-url "http://127.0.0.1:$admin_port" "$@"; }
admin namespaces create hist >/dev/null
admin namespaces set-policy hist retention_age_secs 86400 >/dev/null

echo "filling /hist/history with $history messages of 1 KiB" >&2
"$bin/sava" bench produce --topic /hist/history --reliable --count "$history" --output json >/dev/null
admin storage offload /hist/history >/dev/null
until admin --output json storage segments /hist/history | python3 -c '
import json, sys
segments = json.load(sys.stdin)["segments"]
sys.exit(0 if not any(s["location"] == "local" and s["sealed"] for s in segments) else 1)'; do
  sleep 0.5
done
stored="$(admin --output json storage segments /hist/history | python3 -c '
import json, sys
print(sum(s["bytes"] for s in json.load(sys.stdin)["segments"] if s["location"] == "object"))')"
echo "history offloaded: $stored bytes in object storage, no sealed local segment left" >&2

rate() { python3 -c 'import json,sys; print(json.load(sys.stdin)["msgs_per_sec"])'; }
alone="$("$bin/sava" bench produce --topic /hist/alone --reliable --duration "$seconds" --output json | rate)"

started="$(date +%s.%N)"
"$bin/sava" consume --topic /hist/history --subscription replay --from earliest \
  --count "$history" --output json >/dev/null &
replay_pid=$!
sleep 1
during="$("$bin/sava" bench produce --topic /hist/during --reliable --duration "$seconds" --output json | rate)"
replaying_still=0
kill -0 "$replay_pid" 2>/dev/null && replaying_still=1
wait "$replay_pid"
finished="$(date +%s.%N)"

python3 - "$alone" "$during" "$history" "$started" "$finished" "$replaying_still" <<'PY'
import sys
alone, during, history, started, finished, still = map(float, sys.argv[1:])
print(f"reliable produce alone:          {alone:,.0f} msgs/s")
print(f"reliable produce during replay:  {during:,.0f} msgs/s")
print(f"ratio: {during / alone:.2f}" + ("" if still else "  (the replay ended before the produce run did)"))
print(f"replay from object storage: {history:,.0f} messages in {finished - started:.1f} s = {history / (finished - started):,.0f} msgs/s")
PY
