#!/usr/bin/env bash
# Installs what the tests need, then runs the whole suite: formatting, lints, unit tests,
# integration tests (real Vestibule processes against real Pebble, oidc-provider, Redis, curl and
# rustls clients) and one pass of every benchmark as a smoke test.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-test-deps.sh
cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --all-targets --locked
