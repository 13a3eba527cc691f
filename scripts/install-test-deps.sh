#!/usr/bin/env bash
# Installs everything the build, the test suite and the load script need on a fresh Debian machine.
# Idempotent: packages already present are skipped, so CI and developers can run it every time.
set -euo pipefail
cd "$(dirname "$0")/.."

debian_packages=(
  cmake            # every pingora build needs it
  pkg-config
  pebble           # RFC 8555 ACME server for the on-demand certificate tests
  redis-server     # shared certificate storage and locks
  nginx-light      # side-by-side load comparison
  wrk              # keep-alive HTTP/1.1 load
  nghttp2-client   # h2load
  curl
  openssl
)

missing=()
for package in "${debian_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if ((${#missing[@]})); then
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  export DEBIAN_FRONTEND=noninteractive
  "${sudo_cmd[@]}" apt-get update -qq
  # Debian starts packaged daemons on install; the tests start their own on loopback, so keep them down.
  printf '#!/bin/sh\nexit 101\n' | "${sudo_cmd[@]}" tee /usr/sbin/policy-rc.d >/dev/null
  "${sudo_cmd[@]}" chmod +x /usr/sbin/policy-rc.d
  "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
  "${sudo_cmd[@]}" rm -f /usr/sbin/policy-rc.d
fi

# The certified OpenID provider used by the login-flow tests (pinned in tests/support/op/package-lock.json).
if [ ! -d tests/support/op/node_modules/oidc-provider ] && [ -f tests/support/op/package.json ]; then
  (cd tests/support/op && npm ci --no-audit --no-fund --loglevel=error)
fi

command -v cargo-nextest >/dev/null || cargo install --locked cargo-nextest
