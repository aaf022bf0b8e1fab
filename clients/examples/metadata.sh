#!/usr/bin/env bash
# Signatures of the model: {"model_spec": {...}, "metadata": {"signature_def": {...}}}
#   SERVER=http://localhost:8501 MODEL=effnet clients/examples/metadata.sh
set -euo pipefail
source "$(dirname "$0")/_common.sh"
"${CURL[@]}" "$MODEL_URL/metadata"
