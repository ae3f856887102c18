#!/usr/bin/env bash
# Builds fabric and the examples, starts a one-host fabric (`fabric up`, with
# the embedded registry) in a temporary data directory, submits the examples
# to it, prints their results, and stops it.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
scripts/build-guests.sh examples
cargo build --quiet --release -p fabric
fabric="${CARGO_TARGET_DIR:-$root/target}/release/fabric"
guests="$root/examples/target/wasm32-wasip2/release"

data="$(mktemp -d)"
"$fabric" --data-dir "$data" up --listen 127.0.0.1:0 --http 127.0.0.1:0 &
up=$!
trap 'kill $up 2>/dev/null; wait $up 2>/dev/null; rm -rf "$data"' EXIT
for _ in $(seq 200); do [ -f "$data/host.addr" ] && break; sleep 0.05; done

echo "\$ fabric submit hello.wasm --args '{\"name\": \"fabric\"}'"
"$fabric" --data-dir "$data" submit "$guests/hello.wasm" --args '{"name": "fabric"}'
echo "\$ fabric submit fanout.wasm --args '{\"tasks\": 1000, \"samples\": 10000}'"
"$fabric" --data-dir "$data" submit "$guests/fanout.wasm" --args '{"tasks": 1000, "samples": 10000}'
echo "\$ fabric submit objects.wasm --args '{\"mib\": 64, \"slices\": 64}'"
"$fabric" --data-dir "$data" submit "$guests/objects.wasm" --args '{"mib": 64, "slices": 64}'
echo "\$ fabric jobs"
"$fabric" --data-dir "$data" jobs
echo "\$ fabric deploy http_hello.wasm --name hello --route /hello"
"$fabric" --data-dir "$data" deploy "$guests/http_hello.wasm" --name hello --route /hello
echo "\$ fabric call /hello/world"
"$fabric" --data-dir "$data" call /hello/world
echo "\$ fabric deploy http_json.wasm --name stats"
"$fabric" --data-dir "$data" deploy "$guests/http_json.wasm" --name stats
echo "\$ fabric call stats --fn summarize --data '{\"values\": [3, 1, 4, 1, 5]}'"
"$fabric" --data-dir "$data" call stats --fn summarize --data '{"values": [3, 1, 4, 1, 5]}'
for stage in preprocess classify router; do
  echo "\$ fabric deploy pipeline_$stage.wasm --name $stage"
  "$fabric" --data-dir "$data" deploy "$guests/pipeline_$stage.wasm" --name "$stage"
done
echo "\$ fabric call router --fn classify --data '{\"text\": \"I love this fast, wonderful fabric!\"}'"
"$fabric" --data-dir "$data" call router --fn classify --data '{"text": "I love this fast, wonderful fabric!"}'
