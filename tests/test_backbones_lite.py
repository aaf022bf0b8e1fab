"""EfficientNet-Lite: architecture, offline weight conversion, its cache, restricted unpickling."""

from __future__ import annotations

import os
import pathlib
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest

from train import backbones
from train.backbones import imagenet, lite, lite_weights, torch_pickle

SKIMAGE_DATA = pathlib.Path(pytest.importorskip("skimage").__file__).parent / "data"
CAT_CLASSES = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE_CLASSES = {967, 968, 504}  # espresso, cup, coffee mug


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(lite_weights.CACHE_ENV, str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def lite0_state():
    return torch_pickle.read_legacy_state_dict(lite_weights.source_file("lite0"))


def test_reads_every_tensor_of_the_real_lite0_file(lite0_state):
    assert len(lite0_state) == 296
    assert lite0_state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert lite0_state["_blocks.15._project_conv.weight"].shape == (320, 1152, 1, 1)
    assert lite0_state["_fc.weight"].shape == (1000, 1280)
    assert lite0_state["_bn0.num_batches_tracked"].dtype == np.int64
    assert all(a.dtype == np.float32 for k, a in lite0_state.items() if "num_batches" not in k)


def test_conversion_maps_every_tensor_onto_every_layer(lite0_state):
    converted = lite_weights.convert_state_dict(lite0_state, "lite0")
    model = lite.build_architecture("lite0", include_top=True)
    weighted = {layer.name for layer in model.layers if layer.weights}
    assert set(converted) == weighted
    n_counters = sum("num_batches_tracked" in k for k in lite0_state)
    assert n_counters == 49  # one per BatchNorm layer
    assert sum(len(v) for v in converted.values()) == len(lite0_state) - n_counters
    assert sum(a.size for v in converted.values() for a in v) == model.count_params()
    # Layout transposes: OIHW -> HWIO and (C,1,H,W) -> (H,W,C,1).
    np.testing.assert_array_equal(
        converted["stem_conv"][0], lite0_state["_conv_stem.weight"].transpose(2, 3, 1, 0)
    )
    assert converted["block2a_dwconv"][0].shape == (3, 3, 96, 1)


def test_conversion_rejects_missing_and_leftover_tensors(lite0_state):
    extra = dict(lite0_state, **{"_blocks.16._bn1.weight": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match="no Keras counterpart"):
        lite_weights.convert_state_dict(extra, "lite0")
    missing = {k: v for k, v in lite0_state.items() if k != "_blocks.3._bn1.running_var"}
    with pytest.raises(ValueError, match="_blocks.3._bn1.running_var is missing"):
        lite_weights.convert_state_dict(missing, "lite0")
    # lite0's tensors do not fit lite2's wider layers.
    with pytest.raises(ValueError):
        lite_weights.convert_state_dict(lite0_state, "lite2")


def _legacy_file(path: pathlib.Path, state_pickle: bytes) -> pathlib.Path:
    """A legacy-format .pth whose state-dict pickle is `state_pickle`, with no storages."""
    parts = [0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}]
    with open(path, "wb") as f:
        for part in parts:
            f.write(pickle.dumps(part, protocol=2))
        f.write(state_pickle)
        f.write(pickle.dumps([], protocol=2))
    return path


@pytest.mark.parametrize(
    "module,name", [("os", "remove"), ("builtins", "eval"), ("torch.nn", "Conv2d"),
                    ("numpy", "load"), ("collections", "defaultdict")]
)
def test_restricted_unpickler_rejects_any_other_global(tmp_path, module, name):
    sentinel = tmp_path / "sentinel"
    sentinel.write_text("still here")
    # PROTO 2; GLOBAL module name; the sentinel path as argument; TUPLE1; REDUCE; STOP.
    arg = str(sentinel).encode()
    payload = (b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"X"
               + len(arg).to_bytes(4, "little") + arg + b"\x85R.")
    with pytest.raises(torch_pickle.UnsafePickleError, match=f"{module}.{name}"):
        torch_pickle.read_legacy_state_dict(_legacy_file(tmp_path / "evil.pth", payload))
    assert sentinel.read_text() == "still here"  # Nothing the file named was ever called.


def test_rejects_files_that_are_not_legacy_pytorch(tmp_path):
    zipped = tmp_path / "new.pth"
    zipped.write_bytes(b"PK\x03\x04" + b"\0" * 64)
    with pytest.raises((ValueError, pickle.UnpicklingError)):
        torch_pickle.read_legacy_state_dict(zipped)
    source = lite_weights.source_file("lite0").read_bytes()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(source[: len(source) // 2])
    with pytest.raises(ValueError, match="truncated"):
        torch_pickle.read_legacy_state_dict(truncated)


def test_cache_is_reused_and_a_corrupt_cache_is_rebuilt(monkeypatch):
    first = lite_weights.converted_imagenet_weights("lite0")
    (npz,) = lite_weights.cache_dir().glob("lite0-*.npz")
    assert (npz.parent / (npz.name + ".sha256")).is_file()

    reads = []
    real_reader = torch_pickle.read_legacy_state_dict
    monkeypatch.setattr(torch_pickle, "read_legacy_state_dict",
                        lambda path: reads.append(path) or real_reader(path))
    cached = lite_weights.converted_imagenet_weights("lite0")
    assert reads == []  # Served from the cache, the .pth was not read again.
    np.testing.assert_array_equal(cached["top_bn"][3], first["top_bn"][3])

    data = bytearray(npz.read_bytes())
    data[len(data) // 2] ^= 0xFF  # One flipped byte: the checksum must catch it.
    npz.write_bytes(bytes(data))
    rebuilt = lite_weights.converted_imagenet_weights("lite0")
    assert len(reads) == 1
    for layer, arrays in first.items():
        for a, b in zip(arrays, rebuilt[layer]):
            np.testing.assert_array_equal(a, b)
    assert lite_weights.converted_imagenet_weights("lite0") is not None and len(reads) == 1


@pytest.mark.parametrize(
    "variant,blocks", [("lite0", 16), ("lite1", 21), ("lite2", 21), ("lite3", 24), ("lite4", 30)]
)
def test_every_lite_variant_builds_with_block_named_layers(variant, blocks):
    backbone = backbones.build_backbone(variant, weights="none", input_size=64)
    assert backbone.input_size == 64
    assert backbone.info.input_size == lite.VARIANTS[variant].input_size
    assert backbone.model.output.shape[1:] == (2, 2, 1280)
    assert backbone.num_features == 1280
    prefixes = {m.group(0) for layer in backbone.model.layers
                if (m := re.match(r"block\d+[a-z]_", layer.name))}
    assert len(prefixes) == blocks
    for layer in backbone.model.layers:
        if layer.weights:
            assert re.match(r"(stem_|top_|block\d+[a-z]_)", layer.name), layer.name


def test_normalisation_is_inside_the_model():
    backbone = backbones.build_backbone("lite0", weights="none", input_size=64)
    assert backbone.normalization.startswith("(x - 127) / 128")
    rescale = backbone.model.get_layer("normalization")
    out = np.asarray(rescale(np.array([[0.0, 127.0, 255.0]], np.float32)))
    np.testing.assert_allclose(out, [[-127 / 128, 0.0, 1.0]], atol=1e-6)


def test_lite_without_a_weights_package_fails_with_instructions():
    with pytest.raises(backbones.WeightsUnavailableError, match="efficientnet-lite3-pytorch-model"):
        backbones.build_backbone("lite3", weights="imagenet", input_size=64)


def test_local_weights_file_round_trip(tmp_path):
    original = backbones.build_backbone("lite0", weights="imagenet", input_size=96)
    path = tmp_path / "lite0.weights.h5"
    original.model.save_weights(path)
    reloaded = backbones.build_backbone("lite0", weights=str(path), input_size=96)
    pixels = np.random.default_rng(0).uniform(0, 255, (2, 96, 96, 3)).astype(np.float32)
    np.testing.assert_allclose(reloaded.model(pixels), original.model(pixels), atol=1e-5)
    with pytest.raises(ValueError, match="no such file"):
        backbones.build_backbone("lite0", weights=str(tmp_path / "absent.h5"))


def test_registry_rejects_unknown_names():
    with pytest.raises(ValueError, match="lite0"):
        backbones.get_info("resnet50")


@pytest.mark.parametrize("variant", ["lite0", "lite1", "lite2"])
def test_pretrained_lite_puts_bundled_photos_in_their_imagenet_classes(variant):
    from train.backbones import sanity

    photos = [SKIMAGE_DATA / "chelsea.png", SKIMAGE_DATA / "coffee.png"]
    (cat, coffee) = sanity.classify_files(photos, backbone=variant, k=5)
    assert cat[0][0] in CAT_CLASSES and cat[0][2] > 0.5, cat
    assert coffee[0][0] in COFFEE_CLASSES and coffee[0][2] > 0.5, coffee
    assert cat[0][1] == imagenet.class_names()[cat[0][0]]


def test_classify_command_prints_top5_names(tmp_path):
    not_an_image = tmp_path / "notes.jpg"
    not_an_image.write_text("hello")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    cmd = [sys.executable, "-m", "train.backbones", "classify", "--backbone=lite0",
           str(SKIMAGE_DATA / "chelsea.png")]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0].endswith("chelsea.png") and len(lines) == 6
    assert "cat" in lines[1]
    bad = subprocess.run(cmd[:-1] + [str(not_an_image)], capture_output=True, text=True,
                         env=env, timeout=300)
    assert bad.returncode == 1 and "notes.jpg is not a decodable image" in bad.stderr
