"""Scale-out training, run for real: `python -m train` under MultiWorkerMirroredStrategy as
worker processes on loopback ports, and under MirroredStrategy over two logical CPUs.

The worker processes run the command of the Kubernetes manifests (k8s/training/multiworker's
TFJob; tests/test_k8s.py checks every multi-worker manifest runs that same command), with
TF_CONFIG set as the training operator sets it. Fashion-MNIST, 20 images per class, 64 px.
"""

from __future__ import annotations

import json
import os
import pathlib
import shlex
import signal
import string
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml
from PIL import Image

from train import checkpoint, data, datasets, distribute, rundir
from train.rundir import load_trained_model

REPO = pathlib.Path(__file__).resolve().parents[1]
TFJOB = REPO / "k8s" / "training" / "multiworker" / "tfjob.yaml"
FLAGS = ("--image_size=64 --phase1_epochs=3 --phase2_epochs=1 --phase2_warmup_epochs=0 "
         "--batch_size=16 --noaugment --seed=7")
# A 2-worker and a 1-worker run see the same global batches in number and size but not in
# composition (each worker shuffles its own half), so they agree statistically, not exactly:
# 200 test images, accuracy near 0.7, a binomial standard error of 0.03 per run.
TOLERANCE = 0.1
PROCESS_TIMEOUT = 600  # Seconds; a hung collective must fail the test, not hang it.

pytestmark = pytest.mark.requires("fashion-mnist")


@pytest.fixture(scope="module")
def fashion(tmp_path_factory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("fashion")
    datasets.materialise("fashion_mnist", out, per_class=20)
    return out


def manifest_command(data_dir: pathlib.Path, run: pathlib.Path, flags: str) -> list[str]:
    """The TFJob worker's `python3 -m train` command, its variables filled in as bash would."""
    (tfjob,) = yaml.safe_load_all(TFJOB.read_text())
    script = tfjob["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0][
        "args"][0]
    line = script[script.index("python3 -m train"):].split("\n")
    command = " ".join(part.rstrip("\\") for part in line[:2])  # One line continuation.
    assert command.rstrip().endswith("${TRAIN_FLAGS}"), command
    filled = string.Template(command).substitute(run=run, BACKBONE="lite0", TRAIN_FLAGS=flags)
    argv = shlex.split(filled)
    assert argv[:3] == ["python3", "-m", "train"] and "--data_dir=/data" in argv, argv
    return [sys.executable if a == "python3" else
            f"--data_dir={data_dir}" if a == "--data_dir=/data" else a for a in argv]


class Cluster:
    """Training processes of one cluster, started on free loopback ports."""

    def __init__(self, command: list[str], workers: int, logs: pathlib.Path, *, name: str):
        tf_configs = distribute.loopback_tf_configs(distribute.free_loopback_ports(workers))
        self.logs = [logs / f"{name}-{i}.log" for i in range(workers)]
        self.processes = []
        for log, tf_config in zip(self.logs, tf_configs):
            env = dict(os.environ)
            if workers > 1:
                env["TF_CONFIG"] = tf_config
            with open(log, "wb") as out:
                self.processes.append(subprocess.Popen(
                    command, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT))

    def log(self, index: int) -> str:
        return self.logs[index].read_text(errors="replace")

    def wait(self) -> list[int]:
        deadline = time.monotonic() + PROCESS_TIMEOUT
        try:
            return [p.wait(timeout=max(1.0, deadline - time.monotonic()))
                    for p in self.processes]
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail("training processes still running after "
                        f"{PROCESS_TIMEOUT}s:\n{self.tails()}")

    def kill(self) -> None:
        for p in self.processes:
            if p.poll() is None:
                p.kill()
                p.wait()

    def tails(self) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}"
                         for log in self.logs)

    def assert_succeeded(self) -> None:
        codes = self.wait()
        assert codes == [0] * len(codes), f"exit codes {codes}\n{self.tails()}"


def run(fashion, tmp_path_factory, flags: str, workers: int, name: str):
    out = tmp_path_factory.mktemp(name) / "run"
    cluster = Cluster(manifest_command(fashion, out, flags), workers, out.parent, name=name)
    cluster.assert_succeeded()
    return out, cluster


@pytest.fixture(scope="module")
def two_workers(fashion, tmp_path_factory):
    return run(fashion, tmp_path_factory, FLAGS, 2, "two-workers")


@pytest.fixture(scope="module")
def one_worker(fashion, tmp_path_factory):
    return run(fashion, tmp_path_factory, FLAGS, 1, "one-worker")


def metrics(out: pathlib.Path) -> dict:
    return json.loads((out / rundir.METRICS_FILE).read_text())


def test_two_workers_train_both_phases_and_only_the_chief_writes(two_workers, one_worker):
    out, cluster = two_workers
    result = metrics(out)
    assert (result["workers"], result["replicas"]) == (2, 2)
    assert result["epochs"] == {"phase1": 3, "phase2": 1}
    assert result["evaluation"]["examples"] == 200  # Each test image counted once.
    model = load_trained_model(out)
    image = Image.open(_first_test_image(out)).convert("RGB").resize((64, 64))
    scores = model.predict(np.asarray([np.asarray(image)], np.float32), verbose=0)
    assert scores.shape == (1, 10) and abs(float(scores.sum()) - 1) < 1e-4
    # The worker wrote nothing: the run holds what a one-process run holds, no more.
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    one_files = {p.relative_to(one_worker[0]).as_posix()
                 for p in one_worker[0].rglob("*") if p.is_file()}
    assert {f for f in files if not f.startswith("logs/")} == {
        f for f in one_files if not f.startswith("logs/")}
    assert "done: test top-1" in cluster.log(0) and "done:" not in cluster.log(1)
    assert "phase 1: 3 epochs" in cluster.log(0) and "phase 1:" not in cluster.log(1)


def _first_test_image(out: pathlib.Path) -> pathlib.Path:
    config = json.loads((out / rundir.CONFIG_FILE).read_text())["config"]
    return sorted(pathlib.Path(config["data_dir"]).glob("test/*/*"))[0]


def test_each_worker_extracts_the_features_of_its_own_half(two_workers, one_worker):
    _, cluster = two_workers
    for index in (0, 1):
        assert "features computed once" in cluster.log(index)
        assert "(100 train images)" in cluster.log(index), cluster.log(index)[-2000:]
    assert "(200 train images)" in one_worker[1].log(0)


def test_two_workers_end_where_one_worker_ends(two_workers, one_worker):
    two, one = metrics(two_workers[0]), metrics(one_worker[0])
    assert (one["workers"], one["replicas"]) == (1, 1)
    for result in (one, two):
        assert result["evaluation"]["top1"] > 0.5  # Chance is 0.1: both really learned.
    assert abs(two["evaluation"]["top1"] - one["evaluation"]["top1"]) <= TOLERANCE
    assert abs(two["phase2"]["best_val_accuracy"]
               - one["phase2"]["best_val_accuracy"]) <= TOLERANCE


def test_mirrored_strategy_over_two_logical_cpus(fashion, tmp_path_factory, one_worker):
    out, cluster = run(fashion, tmp_path_factory, FLAGS + " --cpu_replicas=2", 1, "mirrored")
    result, one = metrics(out), metrics(one_worker[0])
    assert (result["workers"], result["replicas"]) == (1, 2)
    assert "MirroredStrategy with devices" in cluster.log(0)
    assert abs(result["evaluation"]["top1"] - one["evaluation"]["top1"]) <= TOLERANCE
    load_trained_model(out)


def test_two_workers_in_mixed_precision(fashion, tmp_path_factory):
    """mixed_float16 with dynamic loss scaling: a step whose gradients overflow on one
    replica is skipped on all of them (else that replica skips the all-reduce the others
    wait in, and the run hangs)."""
    flags = ("--image_size=32 --phase1_epochs=1 --phase2_epochs=1 --phase2_warmup_epochs=0 "
             "--batch_size=16 --noaugment --mixed_precision")
    out, _ = run(fashion, tmp_path_factory, flags, 2, "mixed")
    history = checkpoint.read_state(out / rundir.CHECKPOINT_DIR).history
    assert len(history) == 2 and all(np.isfinite(h["loss"]) for h in history)
    model = load_trained_model(out)
    assert model.get_layer("backbone").get_layer("top_conv").compute_dtype == "float16"
    assert metrics(out)["evaluation"]["top1"] > 0.2  # Chance is 0.1.


def test_resume_after_a_worker_is_killed_in_phase_2(fashion, tmp_path):
    """Kill worker 1 after the first phase-2 epoch; the chief fails rather than hangs; both
    restarted, they resume at the chief's checkpoint and finish the run. Augmentation,
    phase 1 on pixels, the top blocks unfrozen and BatchNorm trained, all on."""
    out = tmp_path / "run"
    flags = ("--image_size=64 --phase1_epochs=1 --phase2_epochs=3 --phase2_warmup_epochs=1 "
             "--patience=0 --batch_size=16 --unfreeze=2 --bn_trainable --nocache_features")
    command = manifest_command(fashion, out, flags)
    first = Cluster(command, 2, tmp_path, name="first")
    deadline = time.monotonic() + PROCESS_TIMEOUT
    state = None
    while not (state and state.phase == 2 and state.epochs_done >= 1):
        if any(p.poll() is not None for p in first.processes) or time.monotonic() > deadline:
            first.kill()
            pytest.fail(f"the run ended before phase 2 got going:\n{first.tails()}")
        time.sleep(0.2)
        state = checkpoint.read_state(out / rundir.CHECKPOINT_DIR)
    first.processes[1].send_signal(signal.SIGKILL)
    chief = first.wait()[0]
    assert chief != 0, "the chief finished without its peer"
    assert checkpoint.read_state(out / rundir.CHECKPOINT_DIR).phase == 2

    second = Cluster(command, 2, tmp_path, name="second")
    second.assert_succeeded()
    history = checkpoint.read_state(out / rundir.CHECKPOINT_DIR).history
    assert [h["epoch"] for h in history if h["phase"] == 1] == [1]
    assert [h["epoch"] for h in history if h["phase"] == 2] == [1, 2, 3]
    resumed = second.log(0)
    assert "Epoch 1/3" not in resumed and "phase 1:" not in resumed  # Not started over.
    assert "phase 2: 3 epochs" in resumed
    assert metrics(out)["epochs"] == {"phase1": 1, "phase2": 3}
    load_trained_model(out)


def test_tf_config_tasks():
    two = {"worker": ["a:1", "b:1"]}
    assert distribute.task_from_tf_config(None) == distribute.Task(1, 0)
    assert distribute.task_from_tf_config(json.dumps(
        {"cluster": two, "task": {"type": "worker", "index": 1}})) == distribute.Task(2, 1)
    with_chief = {"chief": ["c:1"], "worker": ["a:1", "b:1"]}
    tasks = [distribute.task_from_tf_config(json.dumps({"cluster": with_chief, "task": task}))
             for task in ({"type": "chief", "index": 0}, {"type": "worker", "index": 0},
                          {"type": "worker", "index": 1})]
    assert tasks == [distribute.Task(3, 0), distribute.Task(3, 1), distribute.Task(3, 2)]
    assert [t.is_chief for t in tasks] == [True, False, False]
    for task in ({"type": "worker", "index": 2}, {"type": "ps", "index": 0}):
        with pytest.raises(ValueError, match="not a chief or worker"):
            distribute.task_from_tf_config(json.dumps({"cluster": two, "task": task}))


def test_shards_split_the_files_between_workers(tmp_path):
    """Each worker's share of an epoch: disjoint, together every file once, every pass."""
    paths = []
    for value in range(11):
        path = tmp_path / f"{value}.png"
        Image.fromarray(np.full((8, 8, 3), value * 20, np.uint8)).save(path)
        paths.append(str(path))
    split = data.Split(tuple(paths), tuple([0] * len(paths)))
    config = data.DataConfig(augment=None, seed=3)
    shares = []
    for index in range(2):
        ds = data.make_dataset(split, image_size=8, batch_size=1, training=True, config=config,
                               shard=(2, index), repeat=True)
        size = len(paths[index::2])
        values = [int(images[0, 0, 0, 0]) // 20 for images, _ in ds.take(3 * size)]
        passes = [sorted(values[i * size:(i + 1) * size]) for i in range(3)]
        assert passes[0] == passes[1] == passes[2]  # Reshuffled, never re-split.
        assert values[:size] != values[size:2 * size] or size < 3
        shares.append(set(passes[0]))
    assert shares[0].isdisjoint(shares[1]) and shares[0] | shares[1] == set(range(11))
    with pytest.raises(ValueError, match="shard 2 of 2"):
        data.make_dataset(split, image_size=8, batch_size=1, shard=(2, 2))
