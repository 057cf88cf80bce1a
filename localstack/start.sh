#!/usr/bin/env bash
# Starts an S3-compatible server on 127.0.0.1, creates a bucket, and prints
# the settings that point Sava (or any S3 client) at it.
#
#   localstack/start.sh [moto|localstack] [--port PORT] [--bucket NAME]
#
# Defaults: moto on port 5000, bucket `sava`. The server runs in the
# background; its pid, log and settings go to localstack/.run/<server>.*,
# and localstack/stop.sh stops it. The settings are also printed as shell
# `export` lines, so `eval "$(localstack/start.sh)"` configures a shell.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

server="moto"
if [ $# -gt 0 ] && [[ "$1" != --* ]]; then
  server="$1"
  shift
fi
port=""
bucket="sava"
while [ $# -gt 0 ]; do
  case "$1" in
    --port) port="$2"; shift 2 ;;
    --bucket) bucket="$2"; shift 2 ;;
    *) echo "localstack/start.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

# Tests point SAVA_LOCALSTACK_RUN_DIR at a temporary directory of their own.
run="${SAVA_LOCALSTACK_RUN_DIR:-$here/.run}"
mkdir -p "$run"
pidfile="$run/$server.pid"
if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
  echo "localstack/start.sh: $server already runs as pid $(cat "$pidfile"); stop it with localstack/stop.sh $server" >&2
  exit 1
fi

"$here/install.sh" "$server"

case "$server" in
  moto)
    port="${port:-5000}"
    "$here/.venv/bin/moto_server" -H 127.0.0.1 -p "$port" >"$run/moto.log" 2>&1 &
    echo $! >"$pidfile"
    health="http://127.0.0.1:$port/moto-api/"
    python="$here/.venv/bin/python"
    ;;
  localstack)
    port="${port:-4566}"
    state="$(mktemp -d)"
    echo "$state" >"$run/localstack.state"
    # hypercorn keeps it on loopback; without it LocalStack listens on
    # every interface.
    GATEWAY_SERVER=hypercorn GATEWAY_LISTEN="127.0.0.1:$port" DNS_ADDRESS=0 \
      SERVICES=s3 LOCALSTACK_VOLUME_DIR="$state" FILESYSTEM_ROOT="$state" \
      "$here/.venv-localstack/bin/python" -m localstack.runtime.main >"$run/localstack.log" 2>&1 &
    echo $! >"$pidfile"
    health="http://127.0.0.1:$port/_localstack/health"
    python="$here/.venv-localstack/bin/python"
    ;;
  *) echo "usage: localstack/start.sh [moto|localstack] [--port PORT] [--bucket NAME]" >&2; exit 2 ;;
esac

for _ in $(seq 1 120); do
  if ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    echo "localstack/start.sh: $server exited while starting; see $run/$server.log" >&2
    tail -n 20 "$run/$server.log" >&2
    rm -f "$pidfile"
    exit 1
  fi
  if [ "$server" = moto ] && curl -fs "$health" >/dev/null 2>&1; then
    break
  fi
  if [ "$server" = localstack ] && curl -fs "$health" 2>/dev/null | grep -q '"s3": "\(running\|available\)"'; then
    break
  fi
  sleep 0.5
done

endpoint="http://127.0.0.1:$port"
AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test "$python" - "$endpoint" "$bucket" <<'PY'
import sys, boto3
endpoint, bucket = sys.argv[1], sys.argv[2]
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
names = [b["Name"] for b in s3.list_buckets().get("Buckets", [])]
if bucket not in names:
    s3.create_bucket(Bucket=bucket)
PY

cat >"$run/$server.env" <<ENV
export AWS_ENDPOINT_URL=$endpoint
export AWS_ACCESS_KEY_ID=test
export AWS_SECRET_ACCESS_KEY=test
export AWS_REGION=us-east-1
export AWS_ALLOW_HTTP=true
export SAVA_STORAGE__OBJECT_STORE=s3://$bucket/sava
ENV
cat "$run/$server.env"
