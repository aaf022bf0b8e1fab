#!/bin/sh
# Mirrors the complete model versions of an rclone remote into MODEL_DIR, forever.
# A version N is copied only once the remote has the marker N.complete (written after the
# upload), into a hidden staging dir that TF Serving ignores, then renamed to N in one step:
# the server never sees a half-copied version (the same rule `python -m export` follows).
# Versions gone from the remote are removed here too (rename out of sight, then delete).
# Environment: MODEL_REMOTE (e.g. ":gcs,env_auth=true:bucket/models/effnet" or
# ":s3,provider=AWS,env_auth=true:bucket/models/effnet"), MODEL_DIR,
# SYNC_INTERVAL_SECONDS (default 30), SYNC_ONCE=1 (one pass, then exit with its status:
# for an initContainer, or a test).
set -eu

: "${MODEL_REMOTE:?set MODEL_REMOTE to the rclone remote holding the version dirs}"
: "${MODEL_DIR:?set MODEL_DIR}"
interval="${SYNC_INTERVAL_SECONDS:-30}"

sync_once() {
  listing="$(rclone lsf --max-depth 1 "${MODEL_REMOTE}")" || return 1
  wanted=""
  for entry in ${listing}; do
    case "${entry}" in
      *[!0-9]*.complete | .complete) ;;
      *.complete) wanted="${wanted} ${entry%.complete}" ;;
    esac
  done
  for version in ${wanted}; do
    [ -d "${MODEL_DIR}/${version}" ] && continue
    staging="${MODEL_DIR}/.sync-${version}"
    rm -rf "${staging}"
    echo "copying version ${version}"
    rclone copy --checksum "${MODEL_REMOTE}/${version}" "${staging}" || return 1
    mv "${staging}" "${MODEL_DIR}/${version}"
    echo "version ${version} ready"
  done
  for path in "${MODEL_DIR}"/*; do
    version="${path##*/}"
    case "${version}" in *[!0-9]* | "") continue ;; esac
    case " ${wanted} " in *" ${version} "*) continue ;; esac
    echo "removing version ${version} (gone from the remote)"
    mv "${path}" "${MODEL_DIR}/.remove-${version}" && rm -rf "${MODEL_DIR}/.remove-${version}"
  done
}

if [ "${SYNC_ONCE:-0}" = 1 ]; then
  sync_once
  touch "${MODEL_DIR}/.synced"
  exit 0
fi

while true; do
  if sync_once; then
    touch "${MODEL_DIR}/.synced"
  else
    echo "sync failed; retrying in ${interval}s" >&2
  fi
  touch /tmp/heartbeat
  sleep "${interval}"
done
