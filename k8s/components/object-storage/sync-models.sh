#!/bin/sh
# Mirrors the complete model versions of an rclone remote into MODEL_DIR, forever.
# A version N is copied only once the remote has the marker N.complete (written after the
# upload), into a hidden staging dir that TF Serving ignores, then renamed to N in one step:
# the server never sees a half-copied version (the same rule `python -m export` follows).
# The staging dir outlives an interrupted pass (a restart of this container, a failed
# transfer): the next pass resumes it with `rclone sync --checksum`, which keeps the files
# already there and complete and removes any the remote does not have.
# Versions gone from the remote are removed here too (rename out of sight, then delete).
# HEARTBEAT_FILE (default /tmp/heartbeat) is touched at start, before each version copied and
# after each pass: the liveness probe allows it to age by the time one version may take to
# copy.
# Environment: MODEL_REMOTE (e.g. ":gcs,env_auth=true:bucket/models/effnet" or
# ":s3,provider=AWS,env_auth=true:bucket/models/effnet"), MODEL_DIR,
# SYNC_INTERVAL_SECONDS (default 30), SYNC_ONCE=1 (one pass, then exit with its status:
# for an initContainer, or a test).
set -eu

: "${MODEL_REMOTE:?set MODEL_REMOTE to the rclone remote holding the version dirs}"
: "${MODEL_DIR:?set MODEL_DIR}"
interval="${SYNC_INTERVAL_SECONDS:-30}"
heartbeat="${HEARTBEAT_FILE:-/tmp/heartbeat}"

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
    touch "${heartbeat}"
    if [ -d "${staging}" ]; then
      echo "resuming version ${version}"
    else
      echo "copying version ${version}"
    fi
    rclone sync --checksum "${MODEL_REMOTE}/${version}" "${staging}" || return 1
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
  # An interrupted copy of a version the remote no longer has.
  for path in "${MODEL_DIR}"/.sync-*; do
    [ -d "${path}" ] || continue
    case " ${wanted} " in *" ${path##*/.sync-} "*) continue ;; esac
    rm -rf "${path}"
  done
}

if [ "${SYNC_ONCE:-0}" = 1 ]; then
  sync_once
  touch "${MODEL_DIR}/.synced"
  exit 0
fi

# As PID 1 the shell would ignore SIGTERM: exit at once when the pod stops (the sleep runs
# in the background so that the trap is not held up by it).
trap 'exit 0' TERM INT
touch "${heartbeat}"
while true; do
  if sync_once; then
    touch "${MODEL_DIR}/.synced"
  else
    echo "sync failed; retrying in ${interval}s" >&2
  fi
  touch "${heartbeat}"
  sleep "${interval}" &
  wait $!
done
