#!/usr/bin/env bash
# Installs everything the test suite and the load script need on a fresh Debian machine.
# Idempotent: present packages are skipped, so CI and developers can run it every time.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

install_debian_packages \
  cmake pkg-config curl openssl \
  pebble \
  redis-server \
  nginx-light \
  wrk \
  nghttp2-client

# The certified OpenID provider used by the login-flow tests, pinned by its package-lock.json.
if [ -f tests/support/op/package.json ] && [ ! -d tests/support/op/node_modules/oidc-provider ]; then
  (cd tests/support/op && npm ci --no-audit --no-fund --loglevel=error)
fi
