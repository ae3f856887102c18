#!/usr/bin/env bash
# Runs every test: builds the guests and the `fabric` binary, then the
# workspace's unit and end-to-end tests (release: wasmtime compiles guests
# far faster optimized, and the benchmarks share the build).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
scripts/setup.sh --with-etcd
scripts/build-guests.sh
cargo build --release -p fabric --bins
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
status=0
cargo test --release --workspace "$@" 2>&1 | tee "$log" || status=$?
# One closing line with the totals over every test binary.
awk '/^test result:/ { passed += $4; failed += $6 } END { printf "%d passed, %d failed\n", passed, failed }' "$log"
exit "$status"
