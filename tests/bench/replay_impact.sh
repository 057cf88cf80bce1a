#!/usr/bin/env bash
# Benchmark: reliable produce throughput while a catch-up read of a topic's
# history runs against the same broker, as a ratio of produce alone,
# measured in one run; and the catch-up read's own rate through the broker.
#
#   cargo build --release --workspace --bins
#   tests/bench/replay_impact.sh [object|local] [HISTORY_MESSAGES] [SECONDS] [ROUNDS]
#
# object (the default): the history is replayed from object storage. It
# starts moto (localstack/) and one release broker offloading to it, with
# local copies deleted as soon as they are offloaded, and waits until no
# sealed local segment is left.
# local: offload is off, so the history is read back from the local
# segments (beyond the memory tail once it is larger than
# storage.tail_cache_bytes).
#
# Then, in alternating rounds, it runs `sava bench produce --reliable`
# alone, and again while a new subscription reads the history from the
# earliest offset (`sava bench consume`), counting what the broker
# delivered to that subscription meanwhile; and last times that read on
# its own. The measured topics live in /default, which keeps nothing no
# subscription needs, so they do not pile up between rounds. Choose a
# history the read takes longer than SECONDS + 1 to get through; a round
# whose read ended early says so. The bound on
# sealed bytes waiting for offload (offload.max_pending_bytes) is raised
# for the run: a producer at full speed outpaces the Parquet encoding on a
# small machine, and this bench measures the read's impact, not that bound.
# READER_NICE (default 0) runs the reading client at that nice value: on one
# machine its own CPU competes with the producer too, where a consumer in a
# deployment runs elsewhere; 19 leaves mostly the broker's share of the
# catch-up in the figure. STORE_NICE (default 0) does the same for the S3
# server of the object runs, a stand-in for object storage on other
# machines. BIN (default target/release) is where the binaries are, so two
# builds can be compared. Everything stops at the end.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
bin="${BIN:-$root/target/release}"
source="${1:-object}"
history="${2:-300000}"
seconds="${3:-5}"
rounds="${4:-3}"
case "$source" in
  object | local) ;;
  *) echo "unknown history source '$source': expected object or local" >&2; exit 2 ;;
esac
if ! [ "$rounds" -ge 1 ] 2>/dev/null; then
  echo "invalid rounds '$rounds': expected at least 1" >&2; exit 2
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
work="$(mktemp -d)"
export SAVA_LOCALSTACK_RUN_DIR="$work/run"
broker_pid=""
reader=""
cleanup() {
  [ -n "$reader" ] && kill "$reader" 2>/dev/null || true
  if [ -n "$broker_pid" ]; then
    kill "$broker_pid" 2>/dev/null || true
    wait "$broker_pid" 2>/dev/null || true
  fi
  [ "$source" = object ] && bash "$root/localstack/stop.sh" moto >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

if [ "$source" = object ]; then
  eval "$(bash "$root/localstack/start.sh" moto --port "$(free_port)" --bucket sava)"
  renice -n "${STORE_NICE:-0}" -p "$(cat "$SAVA_LOCALSTACK_RUN_DIR/moto.pid")" >/dev/null
  export SAVA_STORAGE__OBJECT_STORE=s3://sava/bench
  export SAVA_OFFLOAD__LOCAL_RETENTION_SECS=0
  export SAVA_OFFLOAD__INTERVAL_MS=200
  export SAVA_OFFLOAD__MAX_PENDING_BYTES=68719476736
else
  export SAVA_OFFLOAD__ENABLED=false
fi
client_port="$(free_port)"; admin_port="$(free_port)"; http_port="$(free_port)"
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
if [ "$source" = object ]; then
  admin storage offload /hist/history >/dev/null
  until admin --output json storage segments /hist/history | python3 -c '
import json, sys
segments = json.load(sys.stdin)["segments"]
sys.exit(0 if not any(s["location"] == "local" and s["sealed"] for s in segments) else 1)'; do
    sleep 0.5
  done
fi
stored="$(admin --output json storage segments /hist/history | python3 -c '
import json, sys
segments = json.load(sys.stdin)["segments"]
for where in ("local", "object"):
    print(where, sum(s["bytes"] for s in segments if s["location"] == where), end=" ")')"
echo "history stored (bytes): $stored" >&2

rate() { python3 -c 'import json,sys; print(json.load(sys.stdin)["msgs_per_sec"])'; }
# Messages the broker delivered to a catch-up subscription so far, once
# the reading client has created it (within 10 s).
delivered() {
  local tries=0 answer
  until answer="$(admin --output json subscriptions describe /hist/history "$1" 2>/dev/null)"; do
    tries=$((tries + 1))
    if [ "$tries" -ge 50 ]; then
      echo "subscription $1 did not appear" >&2
      return 1
    fi
    sleep 0.2
  done
  python3 -c 'import json, sys; print(json.load(sys.stdin)["delivered"])' <<<"$answer"
}
# Alternating rounds, so both sides see the same state of a disk whose
# speed changes with what was written before.
alone=(); during=(); read_during=()
for round in $(seq "$rounds"); do
  alone+=("$("$bin/sava" bench produce --topic "/default/alone-$round" --reliable --duration "$seconds" --output json | rate)")
  nice -n "${READER_NICE:-0}" "$bin/sava" bench consume --topic /hist/history --subscription "catch-up-$round" \
    --count "$history" --output json >/dev/null &
  reader=$!
  sleep 1
  before="$(delivered "catch-up-$round")"
  started="$(date +%s.%N)"
  during+=("$("$bin/sava" bench produce --topic "/default/during-$round" --reliable --duration "$seconds" --output json | rate)")
  after="$(delivered "catch-up-$round")"
  ended="$(date +%s.%N)"
  read_during+=("$(python3 -c "print(($after - $before) / ($ended - $started))")")
  if ! kill "$reader" 2>/dev/null; then
    echo "round $round: the catch-up ended before the produce run did; its rates understate both" >&2
  fi
  wait "$reader" 2>/dev/null || true
  reader=""
done

# The catch-up read on its own.
read_alone="$("$bin/sava" bench consume --topic /hist/history --subscription timed \
  --count "$history" --output json | rate)"

python3 - "$source" "$history" "$read_alone" "${alone[*]}" "${during[*]}" "${read_during[*]}" <<'PY'
import statistics, sys
source, history, read_alone = sys.argv[1], *map(float, sys.argv[2:4])
alone = [float(x) for x in sys.argv[4].split()]
during = [float(x) for x in sys.argv[5].split()]
read_during = [float(x) for x in sys.argv[6].split()]
show = lambda rates: ", ".join(f"{r:,.0f}" for r in rates)
print(f"reliable produce alone (msgs/s):            {show(alone)}; median {statistics.median(alone):,.0f}")
print(f"reliable produce during catch-up (msgs/s):  {show(during)}; median {statistics.median(during):,.0f}")
print(f"ratio of medians: {statistics.median(during) / statistics.median(alone):.2f}")
where = "object storage" if source == "object" else "local segments"
print(f"catch-up from {where} during the produce runs (msgs/s): {show(read_during)}")
print(f"catch-up from {where} alone: {history:,.0f} messages at {read_alone:,.0f} msgs/s")
PY
