#!/usr/bin/env bash
# Builds the guest components: the examples and the tests' guests.
#   scripts/build-guests.sh            both
#   scripts/build-guests.sh examples   only the examples
# Components land in <workspace>/target/wasm32-wasip2/release/*.wasm.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
"$root/scripts/setup.sh"
what="${1:-all}"
build() {
  # An explicit --target-dir: a CARGO_TARGET_DIR meant for the host build
  # must not move the components away from where the docs and tests look.
  (cd "$root/$1" && cargo build --quiet --target wasm32-wasip2 --release --target-dir "$root/$1/target")
}
build examples
if [ "$what" = all ]; then
  build tests/guests
fi
