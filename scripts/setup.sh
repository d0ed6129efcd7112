#!/usr/bin/env bash
# Installs everything region-vqa needs on a fresh Debian machine, offline apart from the npm registry
# and Debian's packages: system packages for the browser test, then the npm dependencies (which also
# compiles the TypeScript and the small native llama.cpp companion addon).
set -euo pipefail
cd "$(dirname "$0")/.."
# Dependency install scripts: npm 11 runs none unless package.json `allowScripts` allows it, and it
# denies all four (onnxruntime-node's downloads CUDA libraries from outside the npm registry; the
# others are not needed with the prebuilt binaries). The variable covers npm versions before that.
# The project's own `prepare` script (TypeScript, the native addon, the UI) still runs.
export ONNXRUNTIME_NODE_INSTALL=skip

if [ "${SKIP_APT:-0}" != "1" ] && ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing Debian chromium (for the browser test)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "setup: chromium not found and cannot apt-get it; the browser test will be skipped" >&2
  fi
fi

npm ci --no-audit --no-fund
