#!/usr/bin/env bash
# Builds every plugin component into target/plugins/: the Rust plugins and
# test fixtures (wasm32-wasip2), and the JavaScript example plugin. Copies the
# three demo plugins beside their manifests in examples/demo/plugins/.
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
for crate in crm_sync metrics data_lake garage_notifier faulty noop; do
  cp "$out/$crate.wasm" "target/plugins/${crate//_/-}.wasm"
done
cp target/plugins/{crm-sync,metrics,data-lake}.wasm examples/demo/plugins/

if [ "${PLUGBOARD_SKIP_JS:-0}" != 1 ]; then
  echo "==> building the JavaScript plugin (examples/plugins/audit-log-js)"
  (cd examples/plugins/audit-log-js && npm ci --no-audit --no-fund --loglevel=error && npm run --silent build)
  cp examples/plugins/audit-log-js/dist/audit-log-js.wasm target/plugins/
fi
ls -l target/plugins
