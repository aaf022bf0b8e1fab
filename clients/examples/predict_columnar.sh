#!/usr/bin/env bash
# Predict, columnar format ("inputs", named input -> list of images) -> {"outputs":
# {"classes": [[...], ...], "scores": [[...], ...], ...}}. GZIP_BODY=1 gzips the body
# (not GZIP: gzip itself reads options from that variable).
#   SERVER=http://localhost:8501 MODEL=effnet clients/examples/predict_columnar.sh cat.jpg
set -euo pipefail
source "$(dirname "$0")/_common.sh"
[ $# -ge 1 ] || { echo "usage: $0 IMAGE.jpg [IMAGE...]" >&2; exit 2; }
values=""
for image in "$@"; do
  values+="${values:+,}{\"b64\": \"$(base64 -w0 "$image")\"}"
done
body() { printf '{"signature_name": "serving_default", "inputs": {"image_bytes": [%s]}}' "$values"; }
if [ "${GZIP_BODY:-0}" = 1 ]; then
  body | gzip -c | "${CURL[@]}" -X POST "$MODEL_URL:predict" \
    -H 'Content-Type: application/json' -H 'Content-Encoding: gzip' --data-binary @-
else
  body | "${CURL[@]}" -X POST "$MODEL_URL:predict" -H 'Content-Type: application/json' \
    --data-binary @-
fi
