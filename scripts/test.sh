#!/usr/bin/env bash
# Runs every test: builds the guests and the `fabric` binary, then the
# workspace's unit and end-to-end tests (release: wasmtime compiles guests
# far faster optimized, and the benchmarks share the build).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
scripts/build-guests.sh
cargo build --release -p fabric --bins
cargo test --release --workspace "$@"
