#!/usr/bin/env bash
# The one test command: installs what the tests need on a fresh machine,
# then checks formatting, lints, and runs every test of the workspace,
# including the end-to-end tests over real sava-broker processes.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n==> %s\n' "$*"; }

need_apt=()
command -v protoc >/dev/null 2>&1 || need_apt+=(protobuf-compiler)
command -v etcd >/dev/null 2>&1 || need_apt+=(etcd-server)
# scrapes a broker in the metrics tests and checks the deploy/ configs.
command -v prometheus >/dev/null 2>&1 || need_apt+=(prometheus)
# bindgen, for type-checking the FoundationDB backend.
dpkg -s libclang-dev >/dev/null 2>&1 || need_apt+=(libclang-dev)
# venvs for the S3 servers of localstack/ and for pyarrow.
python3 -m venv --help >/dev/null 2>&1 && dpkg -s python3-venv >/dev/null 2>&1 || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
  log "installing ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

log "S3 servers for the tiered storage tests (moto, LocalStack) and pyarrow, in the background"
# The tests start and stop the servers themselves, through localstack/.
# Installing from PyPI takes minutes, so it runs while cargo builds.
mkdir -p target
python_log=target/python-install.log
(
  bash localstack/install.sh all
  if ! tests/.venv/bin/python -c 'import pyarrow' >/dev/null 2>&1; then
    python3 -m venv tests/.venv
    tests/.venv/bin/pip install -q pyarrow
  fi
) >"$python_log" 2>&1 &
python_install=$!
# A failing step below must not leave pip running.
trap 'kill "$python_install" 2>/dev/null || true' EXIT

log "format"
cargo fmt --all -- --check

log "clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

log "check the syntax of deploy/: dashboards, compose, Prometheus, systemd"
bash deploy/check.sh

log "type-check the FoundationDB metadata backend (it cannot link here)"
cargo check -p sava-metadata --all-targets --features foundationdb --locked
cargo check -p sava-broker --features foundationdb --locked

log "build binaries for the end-to-end tests"
cargo build --workspace --bins --locked

log "waiting for the S3 servers and pyarrow"
if ! wait "$python_install"; then
  cat "$python_log"
  echo "installing the S3 servers or pyarrow failed" >&2
  exit 1
fi

log "tests"
cargo test --workspace --locked -- --test-threads 2
