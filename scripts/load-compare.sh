#!/usr/bin/env bash
# Vestibule beside nginx in one run: keep-alive HTTPS/1.1 (wrk), HTTP/2 (h2load) and full TLS 1.3
# handshakes, interleaved over rounds, then memory with 10k idle TLS connections. The program and
# its load generators run on CPU 0, both proxies on CPU 1. See benches/load_compare.rs.
#
#   ./scripts/load-compare.sh [--rounds 5] [--duration 10] [--idle 10000]
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-test-deps.sh
# 10k idle connections need that many descriptors on each side.
ulimit -n "$(ulimit -Hn)"
cargo build --release --locked --bench load_compare --bin vestibule
exec taskset -c 0 cargo bench --locked --bench load_compare -- --bench "$@"
