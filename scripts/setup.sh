#!/usr/bin/env bash
# Installs everything region-vqa needs on a fresh Debian machine, offline apart from the npm registry
# and Debian's packages: system packages for the browser test and for the GPU code path (a Vulkan
# driver for WebGPU: Mesa's software lavapipe, unless the machine has its own), then the npm
# dependencies (which also compiles the TypeScript and the two small native addons).
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

can_apt() { [ "${SKIP_APT:-0}" != "1" ] && [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; }

# Scale-out (deploy/local-cluster.sh and its tests): Debian's redis-server, HAProxy and nginx.
cluster_missing=()
command -v redis-server >/dev/null 2>&1 || cluster_missing+=(redis-server)
command -v haproxy >/dev/null 2>&1 || cluster_missing+=(haproxy)
command -v nginx >/dev/null 2>&1 || cluster_missing+=(nginx-light)
if [ ${#cluster_missing[@]} -gt 0 ]; then
  if can_apt; then
    echo "setup: installing ${cluster_missing[*]} (for the scale-out cluster)"
    apt-get update -qq
    # Installed, not started: the cluster script and the tests start their own on loopback ports.
    RUNLEVEL=1 DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${cluster_missing[@]}" >/dev/null
  else
    echo "setup: ${cluster_missing[*]} not found and cannot apt-get them; the cluster tests will be skipped" >&2
  fi
fi

# WebGPU (ONNX Runtime's bundled Dawn) runs on any Vulkan driver. Mesa's lavapipe is a software one:
# it lets the GPU code path run (and be tested) on machines without a GPU; `--device auto` never picks
# it. Bookworm's Mesa 22.3 lavapipe gives Dawn no adapter, so there it comes from bookworm-backports
# (Mesa 25), added from the same Debian mirror.
if [ ! -e /usr/share/vulkan/icd.d/lvp_icd.json ] && [ ! -e /usr/share/vulkan/icd.d/lvp_icd.x86_64.json ]; then
  if can_apt; then
    codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
    suite=()
    if [ "$codename" = "bookworm" ]; then
      # shellcheck disable=SC2207
      sources=($(ls /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null || true))
      mirror=$( (grep -hoE '^(URIs:|deb) +https?://[^ ]+/debian/?( |$)' "${sources[@]}" 2>/dev/null || true) |
        head -n 1 | awk '{print $2}')
      mirror=${mirror:-http://deb.debian.org/debian}
      if ! grep -qs "bookworm-backports" "${sources[@]}"; then
        printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
          "$mirror" >/etc/apt/sources.list.d/region-vqa-bookworm-backports.sources
      fi
      suite=(-t bookworm-backports)
    fi
    echo "setup: installing Mesa's Vulkan drivers (lavapipe, for the WebGPU code path)"
    # Not fatal: everything else still installs and runs; the GPU tests then report the missing
    # adapter themselves (they fail under CI=true, which must run the GPU code path).
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${suite[@]}" mesa-vulkan-drivers >/dev/null; }; then
      echo "setup: could not install mesa-vulkan-drivers; there is no WebGPU adapter" >&2
    fi
  else
    echo "setup: no Vulkan driver found and cannot apt-get one; the WebGPU tests will be skipped" >&2
  fi
fi

npm ci --no-audit --no-fund
