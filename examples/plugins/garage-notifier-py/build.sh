#!/usr/bin/env bash
# Builds app.py into dist/garage-notifier-py.wasm with componentize-py
# (pip install componentize-py==0.25.1), against the plugin-with-http world.
set -euo pipefail
cd "$(dirname "$0")"
command -v componentize-py >/dev/null || {
  echo "componentize-py is missing: pip install componentize-py==0.25.1" >&2
  exit 1
}
mkdir -p dist
componentize-py -d ../../../wit -w plugboard:plugin/plugin-with-http \
  componentize app -o dist/garage-notifier-py.wasm
