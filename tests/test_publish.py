"""Publication under a shared base path: leases, heartbeats and version claims.

Exports on other hosts or in other PID namespaces (training pods sharing one volume) are
simulated by writing their lease records; one test also uses a real `unshare --pid`.
Lease ages are set with os.utime, never waited for.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import threading
import time

import pytest

from export import publish

REPO = pathlib.Path(__file__).resolve().parents[1]
OLD = publish.LEASE_TIMEOUT + 60  # Seconds: a lease this old is abandoned.


def dead_pid() -> int:
    """The PID of a process that has exited."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    return int(done.stdout)


def write_lease(path: pathlib.Path, age: float = 0.0, **changes) -> pathlib.Path:
    """A lease as another export would write it: this process's identity unless changed."""
    record = dict(publish.holder_identity(), token="another-export", **changes)
    path.write_text(json.dumps(record))
    if age:
        os.utime(path, (time.time() - age, time.time() - age))
    return path


def staging_of_another_export(base: pathlib.Path, age: float = 0.0, **changes):
    """A staging dir and its lease, named as an export with PID changes['pid'] names them."""
    path = base / f".export-{changes['pid']}-a1b2c3d4"
    (path / "variables").mkdir(parents=True)
    write_lease(path.with_name(path.name + ".lease"), age, **changes)
    return path


@pytest.mark.parametrize("other", ["host", "pid_ns", "boot_id"])
def test_a_live_lease_from_another_host_or_pid_namespace_keeps_its_staging_dir(tmp_path, other):
    # Its PID is not running here, which means nothing on another host or in another
    # namespace: the old PID test deleted this dir under the other export's feet.
    staging = staging_of_another_export(tmp_path, pid=dead_pid(), **{other: "elsewhere"})
    assert publish.remove_stale_staging(tmp_path) == []
    assert (staging / "variables").is_dir()
    assert staging.with_name(staging.name + ".lease").is_file()


def test_an_abandoned_lease_is_removed_whoever_holds_it(tmp_path):
    staging = staging_of_another_export(tmp_path, age=OLD, pid=4242, host="elsewhere")
    write_lease(tmp_path / ".export-7-deadbeef.lease", age=OLD, host="elsewhere")  # No dir.
    assert publish.remove_stale_staging(tmp_path) == [staging]
    assert list(tmp_path.iterdir()) == []


def test_a_dead_pid_in_this_very_namespace_is_removed_at_once(tmp_path):
    me = publish.holder_identity()
    if not (me["boot_id"] and me["pid_ns"]):
        pytest.skip("no /proc boot id or PID namespace here: only the lease age counts")
    staging = staging_of_another_export(tmp_path, pid=dead_pid())
    alive = staging_of_another_export(tmp_path / "b", pid=os.getppid())
    assert publish.remove_stale_staging(tmp_path) == [staging]
    assert publish.remove_stale_staging(tmp_path / "b") == []
    assert alive.is_dir()


def test_a_staging_dir_without_a_lease_goes_only_when_old_or_its_pid_is_gone_here(tmp_path):
    legacy = tmp_path / f".export-{os.getpid()}-abc"  # As exports before leases named them.
    legacy.mkdir()
    assert publish.remove_stale_staging(tmp_path) == []
    os.utime(legacy, (time.time() - OLD, time.time() - OLD))
    assert publish.remove_stale_staging(tmp_path) == [legacy]
    (tmp_path / ".export-notes").write_text("a file, not a staging dir")
    assert publish.remove_stale_staging(tmp_path) == []


def test_the_heartbeat_keeps_a_long_export_fresh(tmp_path, monkeypatch):
    monkeypatch.setattr(publish, "HEARTBEAT_INTERVAL", 0.02)
    with publish.staging_dir(tmp_path) as staging:
        lease = staging.with_name(staging.name + ".lease")
        record = json.loads(lease.read_text())
        assert {k: record[k] for k in ("host", "boot_id", "pid_ns", "pid")} == \
            publish.holder_identity()
        long_ago = time.time() - OLD
        os.utime(lease, (long_ago, long_ago))  # As if the export had run for 16 minutes...
        deadline = time.monotonic() + 60
        while lease.stat().st_mtime < long_ago + 60:  # ...with its heartbeat still beating.
            assert time.monotonic() < deadline, "the heartbeat never touched the lease"
            time.sleep(0.01)
        assert publish.remove_stale_staging(tmp_path) == []
        assert staging.is_dir()
    assert list(tmp_path.iterdir()) == []  # The lease goes with the dir.


def test_an_export_in_another_pid_namespace_leaves_a_live_staging_dir_alone(tmp_path):
    try:
        unshare = subprocess.run(["unshare", "--pid", "--fork", "true"], capture_output=True,
                                 timeout=30).returncode
    except (OSError, subprocess.TimeoutExpired):
        unshare = None
    if unshare != 0:
        pytest.skip("unshare --pid needs util-linux and root or user namespaces")
    cleaner = ("import sys; from export import publish; "
               "print([p.name for p in publish.remove_stale_staging(sys.argv[1])])")
    with publish.staging_dir(tmp_path) as staging:
        (staging / "saved_model.pb").write_bytes(b"half written")
        done = subprocess.run(["unshare", "--pid", "--fork", sys.executable, "-c", cleaner,
                               str(tmp_path)], capture_output=True, text=True, cwd=REPO,
                              timeout=120)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "[]"
        assert (staging / "saved_model.pb").read_bytes() == b"half written"


# --- Version claims --------------------------------------------------------------------


CONCURRENT_EXPORT = """
import pathlib, sys, time
from export import publish

base, me, other = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3]
flags = base.parent
while not (flags / "go").exists():
    time.sleep(0.005)
with publish.claim_version(base) as version, publish.staging_dir(base) as staging:
    (staging / "built-by").write_text(me)
    (flags / me).write_text(str(version))
    deadline = time.monotonic() + 60
    while not (flags / other).exists():  # Both hold their claim at the same time.
        assert time.monotonic() < deadline, "the other export never claimed a version"
        time.sleep(0.005)
    publish.publish(staging, base, version)
print(version)
"""


def test_two_concurrent_exports_build_and_publish_distinct_versions(tmp_path):
    base = tmp_path / "models" / "cars"
    base.parent.mkdir()
    exports = {name: subprocess.Popen(
        [sys.executable, "-c", CONCURRENT_EXPORT, str(base), name, other],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, other in (("a", "b"), ("b", "a"))}
    (tmp_path / "models" / "go").touch()
    versions = {}
    for name, process in exports.items():
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
        versions[name] = int(out)
    assert sorted(versions.values()) == [1, 2]
    for name, version in versions.items():
        assert (base / str(version) / "built-by").read_text() == name
    assert sorted(os.listdir(base)) == ["1", "2"]  # Claims and leases released.


def test_threads_claiming_at_once_each_get_their_own_version(tmp_path):
    (tmp_path / "1").mkdir()
    barrier, versions, errors = threading.Barrier(6), [], []

    def export():
        try:
            with publish.claim_version(tmp_path) as version:
                versions.append(version)
                barrier.wait(timeout=60)  # All six claims are held together.
        except Exception as e:  # Reported below, in the test's thread.
            errors.append(e)

    threads = [threading.Thread(target=export) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(versions) == [2, 3, 4, 5, 6, 7]
    assert os.listdir(tmp_path) == ["1"]


def test_an_explicit_version_another_export_claims_fails_at_once_naming_it(tmp_path):
    write_lease(tmp_path / ".claim-3", pid=31337, host="trainer-7")
    with pytest.raises(ValueError, match="version 3 .*pid 31337 on host trainer-7"):
        publish.check_new_version(tmp_path, 3)
    with pytest.raises(ValueError, match="version 3 .*pid 31337 on host trainer-7"):
        with publish.claim_version(tmp_path, 3):
            pytest.fail("claimed a version another live export holds")
    (tmp_path / "2").mkdir()
    with publish.claim_version(tmp_path) as version:
        assert version == 4  # An automatic version skips the claimed one.
    assert sorted(os.listdir(tmp_path)) == [".claim-3", "2"]


def test_an_abandoned_claim_expires(tmp_path):
    old = write_lease(tmp_path / ".claim-1", age=OLD, host="trainer-7")
    with publish.claim_version(tmp_path) as version:
        assert version == 1
        assert json.loads(old.read_text())["pid"] == os.getpid()  # Now this export's.
    write_lease(tmp_path / ".claim-5", age=OLD, host="trainer-7")
    assert publish.remove_stale_staging(tmp_path) == [tmp_path / ".claim-5"]
    assert list(tmp_path.iterdir()) == []


def test_a_claim_is_released_whether_the_export_fails_or_publishes(tmp_path):
    with pytest.raises(RuntimeError, match="verification"):
        with publish.claim_version(tmp_path) as version, publish.staging_dir(tmp_path):
            raise RuntimeError("verification failed")
    assert version == 1 and list(tmp_path.iterdir()) == []
    with publish.claim_version(tmp_path, 1) as version, publish.staging_dir(tmp_path) as staging:
        publish.publish(staging, tmp_path, version)
    assert os.listdir(tmp_path) == ["1"]
    with pytest.raises(ValueError, match="never overwritten"):
        with publish.claim_version(tmp_path, 1):
            pytest.fail("claimed a published version")


def test_an_export_whose_claim_was_taken_over_does_not_publish(tmp_path):
    with publish.claim_version(tmp_path) as version, publish.staging_dir(tmp_path) as staging:
        # Judged abandoned (say the process was stopped for 20 minutes), then re-claimed.
        write_lease(tmp_path / f".claim-{version}", host="trainer-7")
        with pytest.raises(ValueError, match="taken over"):
            publish.publish(staging, tmp_path, version)
    assert publish.list_versions(tmp_path) == []


def test_a_lease_timeout_must_exceed_the_heartbeat(tmp_path):
    with pytest.raises(ValueError, match="heartbeat"):
        publish.remove_stale_staging(tmp_path, timeout=publish.HEARTBEAT_INTERVAL)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from support import make_run

    return make_run(tmp_path_factory.mktemp("publish"))


def test_the_exporter_skips_a_claimed_version_and_refuses_to_share_it(run_dir, tmp_path):
    from export import exporter

    base = tmp_path / "colours"
    base.mkdir()
    write_lease(base / ".claim-1", pid=31337, host="trainer-7")
    explicit = exporter.ExportConfig(model_dir=str(run_dir), export_base=str(base), version=1,
                                     warmup_batch_sizes=(1,))
    with pytest.raises(ValueError, match="trainer-7"):
        explicit.validated()
    with pytest.raises(ValueError, match="trainer-7"):  # Claimed after validation, too.
        exporter.export_model(explicit)
    result = exporter.export_model(exporter.ExportConfig(
        model_dir=str(run_dir), export_base=str(base), warmup_batch_sizes=(1,)).validated())
    assert result.version == 2
    assert sorted(os.listdir(base)) == [".claim-1", "2"]
