#!/usr/bin/env bash
# Installs an S3-compatible server from PyPI into a folder of this directory
# that git ignores.
#
#   localstack/install.sh moto        # .venv: moto's server (Python 3.11+), quick
#   localstack/install.sh localstack  # .venv-localstack: LocalStack (Python 3.13)
#   localstack/install.sh all
#
# Installing again is a no-op once the server's entry point is there.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

install_moto() {
  if [ -x "$here/.venv/bin/moto_server" ]; then
    return
  fi
  echo "installing moto into $here/.venv" >&2
  python3 -m venv "$here/.venv"
  "$here/.venv/bin/pip" install -q 'moto[server]>=5.2,<6' 'boto3>=1.40'
}

# LocalStack needs Python 3.13; pyenv provides it on these machines, a
# python3.13 on PATH does too.
python313() {
  if command -v python3.13 >/dev/null 2>&1 && python3.13 -c 'import sys; assert sys.version_info[:2] == (3, 13)' 2>/dev/null; then
    command -v python3.13
    return
  fi
  if command -v pyenv >/dev/null 2>&1; then
    local prefix
    prefix="$(pyenv prefix 3.13.0 2>/dev/null || true)"
    if [ -x "$prefix/bin/python3.13" ]; then
      echo "$prefix/bin/python3.13"
      return
    fi
  fi
  echo "localstack/install.sh: LocalStack needs Python 3.13 (python3.13 on PATH or pyenv 3.13.0)" >&2
  exit 1
}

install_localstack() {
  if [ -f "$here/.venv-localstack/.installed" ]; then
    return
  fi
  echo "installing LocalStack into $here/.venv-localstack" >&2
  "$(python313)" -m venv "$here/.venv-localstack"
  # The pins keep LocalStack's dependencies at versions it runs with.
  "$here/.venv-localstack/bin/pip" install -q 'localstack-core[runtime]==2026.3.0' \
    'cbor2<6' 'pyopenssl<24.3' 'cryptography<44' 'hypercorn' 'boto3'
  touch "$here/.venv-localstack/.installed"
}

case "${1:-moto}" in
  moto) install_moto ;;
  localstack) install_localstack ;;
  all) install_moto; install_localstack ;;
  *) echo "usage: localstack/install.sh moto|localstack|all" >&2; exit 2 ;;
esac
