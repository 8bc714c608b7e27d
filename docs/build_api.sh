#!/usr/bin/env bash
# The API reference from the docstrings (pdoc, offline): build/api/index.html.
# Usage: bash docs/build_api.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
export TF_CPP_MIN_LOG_LEVEL=3
OUT_DIR=${1:-build/api}
python3 -m pdoc --docformat google --no-show-source -o "$OUT_DIR" nopeek_tf edge export serving train 2>&1 \
  | grep -v -E "^(I0000|E0000|W0000|WARNING: All log messages)" || true
test -f "$OUT_DIR/nopeek_tf.html" && test -f "$OUT_DIR/nopeek_tf/core/split.html" \
  || { echo "docs/build_api.sh: the API reference was not written" >&2; exit 1; }
echo "API reference: $OUT_DIR/index.html"
