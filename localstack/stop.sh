#!/usr/bin/env bash
# Stops a server that localstack/start.sh started, and removes its state.
#
#   localstack/stop.sh [moto|localstack]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
server="${1:-moto}"
# Tests point SAVA_LOCALSTACK_RUN_DIR at a temporary directory of their own.
run="${SAVA_LOCALSTACK_RUN_DIR:-$here/.run}"
pidfile="$run/$server.pid"

if [ ! -f "$pidfile" ]; then
  echo "localstack/stop.sh: $server is not running (no $pidfile)" >&2
  exit 0
fi
pid="$(cat "$pidfile")"
kill "$pid" 2>/dev/null || true
for _ in $(seq 1 40); do
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.25
done
kill -9 "$pid" 2>/dev/null || true
rm -f "$pidfile" "$run/$server.env"
if [ -f "$run/$server.state" ]; then
  rm -rf "$(cat "$run/$server.state")"
  rm -f "$run/$server.state"
fi
echo "stopped $server (pid $pid)" >&2
