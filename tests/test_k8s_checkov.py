"""checkov, the field's Kubernetes scanner, over everything users apply from k8s/.

Every kustomization rendered as `kubectl apply -k` renders it, the stand-alone manifests, and
the TFJob's pod templates as core PodTemplates (checkov knows no TFJob) are scanned with no
check skipped; the findings must be exactly those accepted, with reasons, in
k8s/checkov/skips.yaml. checkov runs from a virtualenv of its own (its pins clash with
TensorFlow's), which .ci/run installs from k8s/checkov/requirements.txt; without it the tests
skip locally, saying how to install it, and fail under CI. No network: --skip-download keeps
checkov from fetching guidelines from its vendor's platform.

    python -m pytest tests/test_k8s_checkov.py -q
"""

from __future__ import annotations

import fnmatch
import functools
import json
import pathlib
import subprocess

import pytest
import yaml
from support.k8s import (
    ALL_BUILDS,
    K8S,
    STANDALONE_MANIFESTS,
    checkov,
    needs_kubectl,
    pod_template_objects,
    render,
    standalone,
)

SKIPS = K8S / "checkov" / "skips.yaml"
REQUIREMENTS = K8S / "checkov" / "requirements.txt"


def accepted() -> dict[str, dict]:
    return yaml.safe_load(SKIPS.read_text())


@functools.cache
def scan(directory: pathlib.Path) -> dict:
    """checkov's JSON report over the rendered manifests written to directory."""
    directory.mkdir(parents=True, exist_ok=True)
    for build in ALL_BUILDS:
        documents = list(render(build)) + pod_template_objects(build)
        (directory / f"{build.replace('/', '--')}.yaml").write_text(
            yaml.safe_dump_all(documents, sort_keys=False))
    for path in STANDALONE_MANIFESTS:
        (directory / path.name).write_text(yaml.safe_dump_all(standalone(path)))
    result = subprocess.run(
        [checkov(), "--directory", str(directory), "--framework", "kubernetes",
         "--skip-download", "--output", "json"],
        capture_output=True, text=True, timeout=600, check=False, cwd=directory)
    # Exit 1 means findings, which the tests judge; anything else is checkov failing.
    assert result.returncode in (0, 1), result.stderr[-3000:]
    report = json.loads(result.stdout)
    if isinstance(report, list):  # One entry per framework.
        (report,) = [r for r in report if r["check_type"] == "kubernetes"]
    return report


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    return scan(tmp_path_factory.mktemp("checkov"))


def test_every_acceptance_says_why():
    entries = accepted()
    assert entries
    for check, entry in entries.items():
        assert check.startswith("CKV"), check
        assert set(entry) == {"check", "resources", "reason"}, check
        assert entry["resources"] and len(entry["reason"].split()) >= 15, check


def test_checkov_is_pinned():
    (line,) = [x for x in REQUIREMENTS.read_text().splitlines() if x and not x.startswith("#")]
    assert line.startswith("checkov=="), line


@needs_kubectl
def test_checkov_scanned_every_build(report):
    summary = report["summary"]
    assert summary["parsing_errors"] == 0
    assert summary["checkov_version"] == REQUIREMENTS.read_text().split("==")[1].strip()
    results = report["results"]
    scanned = {pathlib.PurePath(r["file_path"]).stem
               for r in results["passed_checks"] + results["failed_checks"]}
    workloads = {b.replace("/", "--") for b in ALL_BUILDS
                 if any(o["kind"] in ("Deployment", "Job", "TFJob") for o in render(b))}
    assert workloads | {p.stem for p in STANDALONE_MANIFESTS} <= scanned
    assert summary["passed"] > 500  # The ~100 checks over ~20 workloads and their parts.


@needs_kubectl
def test_findings_are_exactly_the_accepted_ones(report):
    entries = accepted()
    failures = sorted({(f["check_id"], f["resource"], f["check_name"])
                       for f in report["results"]["failed_checks"]})
    unexpected = [f"{check} {resource}: {name}" for check, resource, name in failures
                  if not any(fnmatch.fnmatchcase(resource, pattern)
                             for pattern in entries.get(check, {}).get("resources", []))]
    assert not unexpected, "checkov findings to fix, or accept in k8s/checkov/skips.yaml " \
        "with a reason:\n" + "\n".join(unexpected)
    stale = [f"{check} {pattern}" for check, entry in entries.items()
             for pattern in entry["resources"]
             if not any(c == check and fnmatch.fnmatchcase(r, pattern) for c, r, _ in failures)]
    assert not stale, "accepted in k8s/checkov/skips.yaml but found nowhere any more " \
        "(remove):\n" + "\n".join(stale)
    names = {check: name for check, _, name in failures}
    for check, entry in entries.items():
        assert entry["check"] == names[check], check  # The title as checkov reports it.
