#!/usr/bin/env bash
# Builds the plugin in this folder into a component: bindings from the WIT
# by wit-bindgen's Go generator, a wasip1 module from `go build`
# (//go:wasmexport), then a component by wasm-tools with the WASI preview1
# reactor adapter (fetched once by cargo). WORLD, WIT, WITPKG and OUT
# override the world, the WIT folder, the run-time package and the output.
set -euo pipefail
name='{{name}}'
world=${WORLD:-plugboard:plugin/plugin}
wit=${WIT:-wit}
witpkg=${WITPKG:-./witpkg}
out=${OUT:-$name.wasm}

wit-bindgen go --quiet -w "$world" "$wit" >/dev/null
# The generator writes a go.mod of its own; this one uses witpkg.
cat > go.mod <<MOD
module wit_component

go 1.25

require go.bytecodealliance.org/pkg v0.4.0

replace go.bytecodealliance.org/pkg => $witpkg
MOD

mkdir -p target/adapter/src
cat > target/adapter/Cargo.toml <<TOML
[package]
name = "wasi-adapter-fetch"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
wasi-preview1-component-adapter-provider = "=48.0.8"

[workspace]
TOML
: > target/adapter/src/lib.rs
(cd target/adapter && cargo fetch --quiet)
adapter=$(find "${CARGO_HOME:-$HOME/.cargo}/registry/src" \
  -path "*/wasi-preview1-component-adapter-provider-48.0.8/artefacts/wasi_snapshot_preview1.reactor.wasm" | head -1)
[ -n "$adapter" ] || { echo "the WASI preview1 adapter was not found after cargo fetch" >&2; exit 1; }

GOFLAGS=-mod=mod GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -o target/core.wasm .
wasm-tools component embed "$wit" --world "$world" target/core.wasm -o target/embedded.wasm
mkdir -p "$(dirname "$out")"
wasm-tools component new target/embedded.wasm \
  --adapt wasi_snapshot_preview1="$adapter" -o "$out"
echo "$out: $(wc -c < "$out") bytes"
