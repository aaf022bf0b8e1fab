#!/usr/bin/env bash
# Predict, row format ("instances", one entry per image) -> {"predictions": [{"classes":
# [...], "scores": [...], "class_ids": [...], "probabilities": [...]}, ...]}
#   SERVER=http://localhost:8501 MODEL=effnet clients/examples/predict_row.sh cat.jpg dog.jpg
#
# The body is built with printf (a shell builtin) and piped to curl: a photo's base64 on
# curl's command line (-d "...") would exceed the kernel's 128 kB limit per argument.
set -euo pipefail
source "$(dirname "$0")/_common.sh"
[ $# -ge 1 ] || { echo "usage: $0 IMAGE.jpg [IMAGE...]" >&2; exit 2; }
instances=""
for image in "$@"; do
  instances+="${instances:+,}{\"b64\": \"$(base64 -w0 "$image")\"}"
done
printf '{"instances": [%s]}' "$instances" |
  "${CURL[@]}" -X POST "$MODEL_URL:predict" -H 'Content-Type: application/json' --data-binary @-
