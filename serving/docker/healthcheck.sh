#!/bin/bash
# Container health check for the TF Serving images: healthy when the model has at least
# one version in state AVAILABLE, which is later than "port open" (the ports open only
# after the first load, but a reload can leave a model with no AVAILABLE version).
#
# The official images ship neither curl (CPU image) nor wget, so this talks HTTP through
# bash's /dev/tcp. Usage (inside the container; exit 0 = healthy):
#   effnet-healthcheck [MODEL_NAME]      # default $MODEL_NAME, then "effnet"
# Environment: REST_API_PORT (default 8501), HEALTHCHECK_TIMEOUT seconds (default 5).
set -euo pipefail

model="${1:-${MODEL_NAME:-effnet}}"
port="${REST_API_PORT:-8501}"
wait_s="${HEALTHCHECK_TIMEOUT:-5}"

if ! exec 3<>"/dev/tcp/127.0.0.1/${port}"; then
  echo "unhealthy: nothing listens on port ${port}" >&2
  exit 1
fi
printf 'GET /v1/models/%s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' \
  "${model}" >&3
response="$(timeout "${wait_s}" cat <&3 || true)"
exec 3<&-

status_line="${response%%$'\r'*}"
if [[ ! "${status_line}" =~ ^HTTP/1\.[01]\ 200 ]]; then
  echo "unhealthy: GET /v1/models/${model} answered '${status_line:-nothing}'" >&2
  exit 1
fi
# "AVAILABLE" with its quotes: "UNAVAILABLE" (an error code) must not match.
if [[ "${response}" != *'"AVAILABLE"'* ]]; then
  echo "unhealthy: no version of ${model} is AVAILABLE" >&2
  exit 1
fi
exit 0
