# Sourced by the examples: the server, the model and the URL of the model (or of one of its
# versions or labels), from the environment.
SERVER="${SERVER:-http://localhost:8501}"
MODEL="${MODEL:-effnet}"
# VERSION=2 or LABEL=stable selects a version; neither means the latest.
MODEL_URL="$SERVER/v1/models/$MODEL${VERSION:+/versions/$VERSION}${LABEL:+/labels/$LABEL}"
# --fail-with-body: exit non-zero on HTTP errors but still print the server's {"error": ...}.
CURL=(curl -sS --fail-with-body --max-time "${TIMEOUT:-30}")
