"""Atomic, versioned publication of SavedModels under a TF Serving base path.

TF Serving polls BASE/ and loads numeric subdirectories; one that appears before its
files are complete fails to load (serving issues 631, 1086). So a version is written to a
hidden staging directory on the same filesystem and renamed into place in one step: a
poller sees either no version N or the whole of it, and a crash leaves no numbered
directory. Pruning renames a version out of sight before deleting it, for the same reason.

Usage:
    with staging_dir(base) as staging:
        ...write the SavedModel into staging...
        publish(staging, base, version)
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import tempfile
from collections.abc import Iterator

from tensorflow.core.protobuf import saved_model_pb2

_STAGING_PREFIX = ".export-"  # Not numeric: TF Serving ignores it.


def list_versions(base: str | os.PathLike) -> list[int]:
    """The published version numbers under base, ascending (what TF Serving would see)."""
    base = pathlib.Path(base)
    if not base.is_dir():
        return []
    return sorted(int(p.name) for p in base.iterdir()
                  if p.is_dir() and p.name.isdigit() and int(p.name) > 0)


def next_version(base: str | os.PathLike) -> int:
    versions = list_versions(base)
    return versions[-1] + 1 if versions else 1


def check_new_version(base: str | os.PathLike, version: int) -> None:
    """Raises ValueError unless version is a positive int not yet published under base."""
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"version must be a positive integer, got {version!r}")
    if (pathlib.Path(base) / str(version)).exists():
        raise ValueError(f"{pathlib.Path(base) / str(version)} exists; versions are never "
                         "overwritten (export a new version number)")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_staging(base: str | os.PathLike) -> list[pathlib.Path]:
    """Deletes staging dirs left by exports that crashed (their process is gone)."""
    removed = []
    base = pathlib.Path(base)
    if not base.is_dir():
        return removed
    for path in base.glob(_STAGING_PREFIX + "*"):
        pid = path.name[len(_STAGING_PREFIX):].split("-")[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


@contextlib.contextmanager
def staging_dir(base: str | os.PathLike) -> Iterator[pathlib.Path]:
    """A fresh hidden directory in base, deleted on exit unless it was published."""
    base = pathlib.Path(base)
    base.mkdir(parents=True, exist_ok=True)
    path = pathlib.Path(tempfile.mkdtemp(prefix=f"{_STAGING_PREFIX}{os.getpid()}-", dir=base))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)  # Gone already when published.


def publish(staging: str | os.PathLike, base: str | os.PathLike, version: int) -> pathlib.Path:
    """Renames a complete staging dir to base/version in one atomic step.

    Raises:
      ValueError: base/version exists (checked again here: another export may have won).
    """
    check_new_version(base, version)
    target = pathlib.Path(base) / str(version)
    staging = pathlib.Path(staging)
    os.chmod(staging, 0o755)  # mkdtemp makes it owner-only; servers may run as another user.
    _fsync_tree(staging)
    os.rename(staging, target)
    _fsync_dir(pathlib.Path(base))
    return target


def prune_versions(base: str | os.PathLike, keep: int) -> list[int]:
    """Deletes all but the newest `keep` versions; returns the deleted version numbers."""
    if keep < 1:
        raise ValueError(f"keep_versions must be >= 1, got {keep}")
    base = pathlib.Path(base)
    doomed = list_versions(base)[:-keep]
    for version in doomed:
        hidden = base / f"{_STAGING_PREFIX}{os.getpid()}-pruned-{version}"
        os.rename(base / str(version), hidden)
        shutil.rmtree(hidden)
    return doomed


def set_method_names(saved_model_dir: str | os.PathLike, method_names: dict[str, str]) -> None:
    """Rewrites signature method names in saved_model.pb (tf.saved_model.save writes predict).

    TF Serving's Classify and Regress APIs accept only signatures whose method_name says so.
    """
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
