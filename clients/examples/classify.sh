#!/usr/bin/env bash
# Classify API: one tf.Example per image, feature "image/encoded" ->
# {"results": [[["label", score], ...], ...]}
#   SERVER=http://localhost:8501 MODEL=effnet clients/examples/classify.sh cat.jpg
set -euo pipefail
source "$(dirname "$0")/_common.sh"
[ $# -ge 1 ] || { echo "usage: $0 IMAGE.jpg [IMAGE...]" >&2; exit 2; }
examples=""
for image in "$@"; do
  examples+="${examples:+,}{\"image/encoded\": {\"b64\": \"$(base64 -w0 "$image")\"}}"
done
printf '{"signature_name": "classify", "examples": [%s]}' "$examples" |
  "${CURL[@]}" -X POST "$MODEL_URL:classify" -H 'Content-Type: application/json' \
    --data-binary @-
