"""Atomic, versioned publication of SavedModels under a TF Serving base path.

TF Serving polls BASE/ and loads numeric subdirectories; one that appears before its
files are complete fails to load (serving issues 631, 1086). So a version is written to a
hidden staging directory on the same filesystem and renamed into place in one step: a
poller sees either no version N or the whole of it, and a crash leaves no numbered
directory. Pruning renames a version out of sight before deleting it, for the same reason.

Several exports may share a base path (training pods on one Kubernetes volume), each on
its own host or in its own PID namespace, where another's PID means nothing. So each
hidden entry an export makes is covered by a lease: a small JSON file naming its holder
(hostname, boot id, PID namespace, PID) whose mtime a daemon thread touches every
HEARTBEAT_INTERVAL seconds while the export runs. Another export deems the entry abandoned
only once the lease is LEASE_TIMEOUT old (15 minutes), or sooner when the lease proves its
holder ran on this host, in this boot and PID namespace, and that PID is gone. Names in
BASE (none numeric, so TF Serving ignores them all):

    .export-PID-XXXXXXXX        a staging dir, or a version being pruned
    .export-PID-XXXXXXXX.lease  its lease: created before the dir, deleted after it
    .claim-N                    a claim on version N: a lease made with O_EXCL before the
                                expensive work, so two exports never build the same version

A staging dir without a lease (made before leases existed) is deemed abandoned once it is
LEASE_TIMEOUT old, or when the PID in its name is not running here, as it always was.

Usage:
    with claim_version(base) as version, staging_dir(base) as staging:
        ...write the SavedModel into staging...
        publish(staging, base, version)
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import re
import secrets
import shutil
import socket
import threading
import time
from collections.abc import Iterator

from absl import logging

# A lease untouched this long belongs to an export that died, hung or lost the volume.
# Far above the heartbeat, so slow disks, GC pauses and modest clock skew between hosts
# never make a live export look abandoned.
LEASE_TIMEOUT = 15 * 60.0
HEARTBEAT_INTERVAL = 30.0

_STAGING_PREFIX = ".export-"  # Not numeric: TF Serving ignores it.
_CLAIM_PREFIX = ".claim-"
_LEASE_SUFFIX = ".lease"

# The leases this process holds, by absolute path: a claim of its own is no rival's.
_held: dict[str, _Lease] = {}


def list_versions(base: str | os.PathLike) -> list[int]:
    """The published version numbers under base, ascending (what TF Serving would see)."""
    base = pathlib.Path(base)
    if not base.is_dir():
        return []
    return sorted(int(p.name) for p in base.iterdir()
                  if p.is_dir() and p.name.isdigit() and int(p.name) > 0)


def next_version(base: str | os.PathLike) -> int:
    """One more than the newest published version (claims aside: see claim_version)."""
    versions = list_versions(base)
    return versions[-1] + 1 if versions else 1


def check_new_version(base: str | os.PathLike, version: int, *,
                      timeout: float = LEASE_TIMEOUT) -> None:
    """Raises ValueError unless version is a positive int, unpublished, and not claimed.

    A claim held by this process, or abandoned (see LEASE_TIMEOUT), does not count.
    """
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"version must be a positive integer, got {version!r}")
    if (pathlib.Path(base) / str(version)).exists():
        raise ValueError(f"{pathlib.Path(base) / str(version)} exists; versions are never "
                         "overwritten (export a new version number)")
    claim = _claim_path(base, version)
    if _own(claim) is None:
        stale, holder = _lease_status(claim, timeout)
        if stale is False:
            raise ValueError(f"version {version} is being exported right now by {holder} "
                             f"(claim {claim}); wait for it, or export another version number")


def holder_identity() -> dict:
    """This process as a lease names it: host, boot_id, pid_ns, pid (None if unknown).

    Two leases prove the same PID namespace only if all of host, boot_id and pid_ns match:
    namespace inode numbers repeat across hosts and boots, and boot_id is shared by every
    container on a node.
    """
    def read(reader, path):
        try:
            return reader(path).strip() or None
        except OSError:  # Not Linux, or /proc hidden: then PIDs are never compared.
            return None

    boot_id = read(lambda p: pathlib.Path(p).read_text(), "/proc/sys/kernel/random/boot_id")
    return {"host": socket.gethostname(), "boot_id": boot_id,
            "pid_ns": read(os.readlink, "/proc/self/ns/pid"), "pid": os.getpid()}


class _Lease:
    """A lease file this process holds, kept fresh by a daemon thread until released."""

    def __init__(self, path: pathlib.Path):
        """Creates the lease file.

        Raises:
          FileExistsError: someone already holds a lease at path.
        """
        self.path = path
        self.token = secrets.token_hex(8)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(dict(holder_identity(), token=self.token), f)
        except BaseException:
            path.unlink(missing_ok=True)  # A half-written lease would only age.
            raise
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"lease {path}", daemon=True)
        self._thread.start()
        _held[os.path.abspath(path)] = self

    def _beat(self) -> None:
        warned = False
        while not self._stop.wait(HEARTBEAT_INTERVAL):
            if self.is_current():  # Never keep alive a lease someone else now holds.
                with contextlib.suppress(FileNotFoundError):
                    os.utime(self.path)
            elif not warned:
                warned = True
                logging.warning("Lease %s was taken over: another export judged this one "
                                "abandoned, so it will not publish", self.path)

    def is_current(self) -> bool:
        """Whether the lease file is still this one (not removed or replaced by another)."""
        return _read_lease(self.path).get("token") == self.token

    def release(self) -> None:
        self._stop.set()
        self._thread.join()
        _held.pop(os.path.abspath(self.path), None)
        if self.is_current():
            self.path.unlink(missing_ok=True)


def _own(path: pathlib.Path) -> _Lease | None:
    """This process's lease at path, if it holds one."""
    return _held.get(os.path.abspath(path))


def _read_lease(path: pathlib.Path) -> dict:
    """The lease's record; {} if absent, half-written or not a lease."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _lease_status(path: pathlib.Path, timeout: float) -> tuple[bool | None, str]:
    """(whether the lease is abandoned, its holder), or (None, "") if there is no lease.

    Abandoned = untouched for `timeout`, or proven to be from this host, boot and PID
    namespace with its PID gone. An unreadable record only ages.
    """
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return None, ""
    record = _read_lease(path)
    holder = (f"pid {record.get('pid', '?')} on host {record.get('host', '?')} "
              f"(heartbeat {age:.0f}s ago)")
    if age > timeout:
        return True, holder
    me = holder_identity()
    same_namespace = all(me[k] and record.get(k) == me[k] for k in ("host", "boot_id", "pid_ns"))
    pid = record.get("pid")
    return same_namespace and type(pid) is int and not _pid_alive(pid), holder


def _pid_alive(pid: int) -> bool:
    if pid < 1:  # kill(0 or -1, 0) would ask about whole process groups.
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _check_timeout(timeout: float) -> None:
    if not timeout > HEARTBEAT_INTERVAL:
        raise ValueError(f"the lease timeout must be well above the {HEARTBEAT_INTERVAL}s "
                         f"heartbeat (default {LEASE_TIMEOUT}s), got {timeout}")


def _lease_path(path: pathlib.Path) -> pathlib.Path:
    return path.with_name(path.name + _LEASE_SUFFIX)


def _claim_path(base: str | os.PathLike, version: int) -> pathlib.Path:
    return pathlib.Path(base) / f"{_CLAIM_PREFIX}{version}"


def _staging_is_stale(path: pathlib.Path, timeout: float) -> bool:
    stale, _ = _lease_status(_lease_path(path), timeout)
    if stale is not None:
        return stale
    # No lease: made by an export from before leases, which named it .export-PID-...
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return False
    pid = path.name[len(_STAGING_PREFIX):].split("-")[0]
    return age > timeout or (pid.isdigit() and not _pid_alive(int(pid)))


def _free_claim(path: pathlib.Path, timeout: float) -> bool:
    """Deletes the claim at path if abandoned; whether the version is now unclaimed."""
    stale, _ = _lease_status(path, timeout)
    if stale is None:
        return True
    if not stale:
        return False
    # Rename first: another export may have replaced the abandoned claim with a live one
    # since we looked, and an unlink would delete that one. What the rename moved is
    # judged again, and put back if it turns out to be live.
    moved = path.with_name(f"{path.name}.stale-{secrets.token_hex(4)}")
    try:
        os.rename(path, moved)
    except FileNotFoundError:
        return True
    try:
        if _lease_status(moved, timeout)[0] is False:
            with contextlib.suppress(FileExistsError):
                os.link(moved, path)
            return False
        return True
    finally:
        moved.unlink(missing_ok=True)


def remove_stale_staging(base: str | os.PathLike, *,
                         timeout: float = LEASE_TIMEOUT) -> list[pathlib.Path]:
    """Deletes the staging dirs and claims of exports that died; returns what it deleted.

    Args:
      base: the TF Serving base path.
      timeout: seconds without a heartbeat after which a lease is abandoned, whoever
        holds it; sooner only for holders proven to be gone (see the module docstring).
    """
    _check_timeout(timeout)
    removed = []
    base = pathlib.Path(base)
    if not base.is_dir():
        return removed
    for path in sorted(base.glob(_STAGING_PREFIX + "*")):
        if path.name.endswith(_LEASE_SUFFIX):
            # Orphaned by a crash between creating the lease and its dir, or removing them.
            owner = path.with_name(path.name[:-len(_LEASE_SUFFIX)])
            if not owner.exists() and _lease_status(path, timeout)[0]:
                path.unlink(missing_ok=True)
        elif path.is_dir() and not path.is_symlink() and _staging_is_stale(path, timeout):
            shutil.rmtree(path, ignore_errors=True)
            _lease_path(path).unlink(missing_ok=True)  # Last: the dir is leased until gone.
            removed.append(path)
    for path in sorted(base.glob(_CLAIM_PREFIX + "*")):
        if not re.fullmatch(re.escape(_CLAIM_PREFIX) + r"\d+", path.name):
            # A claim moved aside by _free_claim in a process that died before deleting it.
            if _lease_status(path, timeout)[0]:
                path.unlink(missing_ok=True)
        elif _lease_status(path, timeout)[0] and _free_claim(path, timeout):
            removed.append(path)
    return removed


@contextlib.contextmanager
def claim_version(base: str | os.PathLike, version: int | None = None, *,
                  timeout: float = LEASE_TIMEOUT) -> Iterator[int]:
    """Reserves a version number under base for one export, until the block exits.

    The claim is a `.claim-N` lease created atomically (O_EXCL), so of two exports only
    one gets N, even on different hosts sharing the volume; publish N inside the block.

    Args:
      base: the TF Serving base path (created if missing).
      version: the version wanted; None = the lowest free one from next_version(base).
      timeout: seconds without a heartbeat after which another export's claim is abandoned.

    Yields:
      The claimed version number.

    Raises:
      ValueError: an explicit version is not a positive int, is published, or is claimed by
        another live export (named in the message).
    """
    _check_timeout(timeout)
    base = pathlib.Path(base)
    if version is not None:
        check_new_version(base, version, timeout=timeout)
    base.mkdir(parents=True, exist_ok=True)
    candidate = version if version is not None else next_version(base)
    while True:
        lease = None
        path = _claim_path(base, candidate)
        while lease is None:
            try:
                lease = _Lease(path)
            except FileExistsError:
                if not _free_claim(path, timeout):
                    break
        # Checked after claiming: an export publishes before it releases its claim.
        if lease is not None and not (base / str(candidate)).exists():
            break
        if lease is not None:
            lease.release()
        if version is None:
            candidate += 1
            continue
        check_new_version(base, version, timeout=timeout)  # Published, or names the holder.
        if _own(path) is not None:  # Which check_new_version lets pass, for publish().
            raise ValueError(f"version {version} is already being exported by this process")
    try:
        yield candidate
    finally:
        lease.release()


@contextlib.contextmanager
def _leased_name(base: pathlib.Path, tag: str = "") -> Iterator[pathlib.Path]:
    """A fresh hidden path in base, leased while in use; whatever is at it is deleted on exit."""
    while True:
        path = base / f"{_STAGING_PREFIX}{os.getpid()}-{tag}{secrets.token_hex(4)}"
        try:
            lease = _Lease(_lease_path(path))
        except FileExistsError:
            continue
        if not os.path.lexists(path):
            break
        lease.release()  # A lease-less leftover has this name.
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)  # Gone already when published.
        lease.release()


@contextlib.contextmanager
def staging_dir(base: str | os.PathLike) -> Iterator[pathlib.Path]:
    """A fresh hidden directory in base, leased while in use, deleted on exit unless published."""
    base = pathlib.Path(base)
    base.mkdir(parents=True, exist_ok=True)
    with _leased_name(base) as path:
        path.mkdir(mode=0o700)  # Owner-only until published, as tempfile.mkdtemp makes it.
        yield path


def publish(staging: str | os.PathLike, base: str | os.PathLike, version: int) -> pathlib.Path:
    """Renames a complete staging dir to base/version in one atomic step.

    Raises:
      ValueError: base/version exists or another export claims it (checked again here:
        another export may have won), or this export's lease on the staging dir or its
        claim was taken over (it was judged abandoned: see LEASE_TIMEOUT).
    """
    check_new_version(base, version)
    target = pathlib.Path(base) / str(version)
    staging = pathlib.Path(staging)
    for lease in (_own(_lease_path(staging)), _own(_claim_path(base, version))):
        if lease is not None and not lease.is_current():
            raise ValueError(f"this export's lease {lease.path} was taken over (another export "
                             "judged this one abandoned); nothing was published")
    os.chmod(staging, 0o755)  # Owner-only so far; servers may run as another user.
    _fsync_tree(staging)
    os.rename(staging, target)
    _fsync_dir(pathlib.Path(base))
    return target


def prune_versions(base: str | os.PathLike, keep: int) -> list[int]:
    """Deletes all but the newest `keep` versions; returns the version numbers it deleted."""
    if keep < 1:
        raise ValueError(f"keep_versions must be >= 1, got {keep}")
    base = pathlib.Path(base)
    pruned = []
    for version in list_versions(base)[:-keep]:
        with _leased_name(base, f"pruned-{version}-") as hidden:
            try:
                os.rename(base / str(version), hidden)
            except FileNotFoundError:
                continue  # Another export pruned it first.
            shutil.rmtree(hidden)
        pruned.append(version)
    return pruned


def set_method_names(saved_model_dir: str | os.PathLike, method_names: dict[str, str]) -> None:
    """Rewrites signature method names in saved_model.pb (tf.saved_model.save writes predict).

    TF Serving's Classify and Regress APIs accept only signatures whose method_name says so.
    """
    from tensorflow.core.protobuf import saved_model_pb2  # Here: the rest needs no TensorFlow.

    path = pathlib.Path(saved_model_dir) / "saved_model.pb"
    saved_model = saved_model_pb2.SavedModel.FromString(path.read_bytes())
    for meta_graph in saved_model.meta_graphs:
        for name, method in method_names.items():
            if name not in meta_graph.signature_def:
                raise ValueError(f"no signature {name!r} in {path}")
            meta_graph.signature_def[name].method_name = method
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(saved_model.SerializeToString(deterministic=True))
    os.replace(tmp, path)
    _refresh_fingerprint(pathlib.Path(saved_model_dir))


def _refresh_fingerprint(saved_model_dir: pathlib.Path) -> None:
    """Recomputes fingerprint.pb, whose checksums cover the saved_model.pb just rewritten.

    The fingerprint is optional (older SavedModels have none), so if TensorFlow's
    fingerprinting module moves, a stale one is removed rather than left wrong.
    """
    path = saved_model_dir / "fingerprint.pb"
    try:
        from tensorflow.python.saved_model.pywrap_saved_model import fingerprinting
        path.write_bytes(fingerprinting.CreateFingerprintDef(str(saved_model_dir)))
    except (ImportError, AttributeError):
        path.unlink(missing_ok=True)


def _fsync_tree(root: pathlib.Path) -> None:
    """Flushes every file so a power cut after the rename cannot expose empty files."""
    for directory, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(directory, name), "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(pathlib.Path(directory))


def _fsync_dir(path: pathlib.Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
