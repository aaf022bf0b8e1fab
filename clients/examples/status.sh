#!/usr/bin/env bash
# Model status: {"model_version_status": [{"version": "1", "state": "AVAILABLE", ...}]}
#   SERVER=http://localhost:8501 MODEL=effnet clients/examples/status.sh
set -euo pipefail
source "$(dirname "$0")/_common.sh"
"${CURL[@]}" "$MODEL_URL"
