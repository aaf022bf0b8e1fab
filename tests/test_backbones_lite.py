"""EfficientNet-Lite: architecture, offline weight conversion, its cache, restricted unpickling."""

from __future__ import annotations

import os
import pathlib
import pickle
import re
import struct
import subprocess
import sys

import numpy as np
import pytest

from train import backbones
from train.backbones import imagenet, lite, lite_weights, torch_pickle

CAT_CLASSES = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE_CLASSES = {967, 968, 504}  # espresso, cup, coffee mug



@pytest.fixture(scope="module")
def skimage_data(require) -> pathlib.Path:
    """scikit-image's bundled photos (CC0); skipped without it, failed in CI."""
    require("skimage")
    import skimage

    return pathlib.Path(skimage.__file__).parent / "data"


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
    # lite0's tensors do not fit lite2 (one block more, wider layers).
    missing = r"^lite2 weights: tensor _blocks\.16\._expand_conv\.weight is missing"
    with pytest.raises(ValueError, match=missing):
        lite_weights.convert_state_dict(lite0_state, "lite2")


def _legacy_file(path: pathlib.Path, state_pickle: bytes,
                 storages: dict[str, np.ndarray] | None = None) -> pathlib.Path:
    """A legacy-format .pth whose state-dict pickle is `state_pickle`, then `storages`."""
    storages = storages or {}
    parts = [0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}]
    with open(path, "wb") as f:
        for part in parts:
            f.write(pickle.dumps(part, protocol=2))
        f.write(state_pickle)
        f.write(pickle.dumps(list(storages), protocol=2))
        for array in storages.values():
            f.write(struct.pack("<q", array.size) + array.astype("<f4").tobytes())
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
    zipped.write_bytes(b"PK\x03\x04" + b"\0" * 64)  # torch.save's default since PyTorch 1.6.
    with pytest.raises(ValueError, match="zip-format .pth files are not supported") as info:
        torch_pickle.read_legacy_state_dict(zipped)
    assert not isinstance(info.value, torch_pickle.UnsafePickleError)  # Not called hostile.
    other = tmp_path / "other.pth"
    other.write_bytes(pickle.dumps(12345, protocol=2) + pickle.dumps(1001, protocol=2))
    with pytest.raises(ValueError, match=r"not a legacy PyTorch file \(bad magic number\)"):
        torch_pickle.read_legacy_state_dict(other)
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
def test_pretrained_lite_puts_bundled_photos_in_their_imagenet_classes(variant, skimage_data):
    from train.backbones import sanity

    photos = [skimage_data / "chelsea.png", skimage_data / "coffee.png"]
    (cat, coffee) = sanity.classify_files(photos, backbone=variant, k=5)
    assert cat[0][0] in CAT_CLASSES and cat[0][2] > 0.5, cat
    assert coffee[0][0] in COFFEE_CLASSES and coffee[0][2] > 0.5, coffee
    assert cat[0][1] == imagenet.class_names()[cat[0][0]]


def test_classify_command_prints_top5_names(tmp_path, skimage_data):
    not_an_image = tmp_path / "notes.jpg"
    not_an_image.write_text("hello")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    cmd = [sys.executable, "-m", "train.backbones", "classify", "--backbone=lite0",
           str(skimage_data / "chelsea.png")]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0].endswith("chelsea.png") and len(lines) == 6
    assert "cat" in lines[1]
    bad = subprocess.run(cmd[:-1] + [str(not_an_image)], capture_output=True, text=True,
                         env=env, timeout=300)
    assert bad.returncode == 1 and "notes.jpg is not a decodable image" in bad.stderr


# --- Hostile weights files: crafted with pickle opcodes, no torch needed --------------------


def _global(module: str, name: str) -> bytes:
    return b"c" + f"{module}\n{name}\n".encode()


def _str(text: str) -> bytes:
    return b"X" + struct.pack("<I", len(text.encode())) + text.encode()


def _ints(*values: int) -> bytes:
    return b"(" + b"".join(b"J" + struct.pack("<i", v) for v in values) + b"t"


def _tensor(key: str, numel: int, offset: int, size, stride) -> bytes:
    """The opcodes torch.save writes for one float tensor viewing storage `key`."""
    storage = (b"(" + _str("storage") + _global("torch", "FloatStorage") + _str(key)
               + _str("cpu") + b"J" + struct.pack("<i", numel) + b"Nt")
    return (_global("torch._utils", "_rebuild_tensor_v2") + b"(" + storage + b"Q"
            + b"J" + struct.pack("<i", offset) + _ints(*size) + _ints(*stride) + b"\x89"
            + _global("collections", "OrderedDict") + b")Rt" + b"R")


def _state(**entries: bytes) -> bytes:
    """An OrderedDict state dict pickle with the given (already pickled) values."""
    items = b"".join(_str(name) + value for name, value in entries.items())
    return b"\x80\x02" + _global("collections", "OrderedDict") + b")R(" + items + b"u."


def test_crafted_tensors_with_legal_views_load(tmp_path):
    storage = np.arange(6, dtype=np.float32)
    path = _legacy_file(tmp_path / "ok.pth", _state(
        matrix=_tensor("0", 6, 0, (2, 3), (3, 1)),
        transposed=_tensor("1", 6, 0, (3, 2), (1, 3)),
        tail=_tensor("2", 6, 4, (2,), (1,)),
        unit_dims=_tensor("3", 6, 5, (1, 1), (0, 7))),
        {"0": storage, "1": storage, "2": storage, "3": storage})
    arrays = torch_pickle.read_legacy_state_dict(path)
    np.testing.assert_array_equal(arrays["matrix"], storage.reshape(2, 3))
    np.testing.assert_array_equal(arrays["transposed"], storage.reshape(2, 3).T)
    np.testing.assert_array_equal(arrays["tail"], [4, 5])
    np.testing.assert_array_equal(arrays["unit_dims"], [[5]])


@pytest.mark.parametrize("numel,offset,size,stride,error", [
    (1, 0, (1 << 20,), (0,), "more than once"),  # 4 bytes of storage, a 4 MiB tensor.
    (4, 0, (2, 2), (1, 1), "more than once"),  # Overlapping rows.
    (6, 0, (2, 3), (2, 1), "more than once"),
    (4, 3, (2,), (-1,), "negative"),
    (4, -1, (2,), (1,), "negative"),
    (4, 0, (-2,), (1,), "negative"),
    (3, 0, (4,), (1,), "outside its storage"),  # More elements than the storage holds.
    (3, 3, (1,), (1,), "outside its storage"),
    (6, 1, (2, 3), (3, 1), "outside its storage"),
])
def test_tensors_reading_outside_or_twice_from_their_storage_are_refused(
        tmp_path, numel, offset, size, stride, error):
    path = _legacy_file(tmp_path / "evil.pth", _state(w=_tensor("0", numel, offset, size, stride)),
                        {"0": np.ones(numel, np.float32)})
    with pytest.raises(ValueError, match=error):
        torch_pickle.read_legacy_state_dict(path)


def test_many_tensors_viewing_one_storage_cannot_outgrow_the_file(tmp_path):
    views = {f"w{i}": _tensor("0", 1024, 0, (1024,), (1,)) for i in range(64)}
    path = _legacy_file(tmp_path / "evil.pth", _state(**views), {"0": np.ones(1024, np.float32)})
    with pytest.raises(ValueError, match="more bytes than the file"):
        torch_pickle.read_legacy_state_dict(path)


STORAGE_TYPE = _global("torch", "FloatStorage")
REBUILD = _global("torch._utils", "_rebuild_tensor_v2")
MUTATIONS = {
    # BUILD with a dict state writes the instance __dict__: it renamed the process-wide
    # FloatStorage type so every later load read its floats as halves.
    "build on a storage type": STORAGE_TYPE + b"}" + _str("name") + _str("HalfStorage") + b"sb",
    # BUILD with (None, slots) state calls setattr: it rewrote a function's defaults.
    "build on a function": REBUILD + b"N}" + _str("__defaults__") + b")s\x86b",
    "setitem on a storage type": STORAGE_TYPE + _str("name") + _str("HalfStorage") + b"s",
    "setitems on a function": REBUILD + b"(" + _str("a") + _str("b") + b"u",
    "appends on a function": REBUILD + b"(" + _str("a") + b"e",
    "call a storage type": STORAGE_TYPE + b")R",
    "state dict attribute": (_global("collections", "OrderedDict") + b")R}"
                             + _str("__class__") + b"}sb"),
    "new object": STORAGE_TYPE + b")\x81",
}


@pytest.mark.parametrize("mutation", MUTATIONS)
def test_a_file_cannot_change_anything_outside_its_own_load(tmp_path, lite0_state, mutation):
    path = _legacy_file(tmp_path / "evil.pth", _state(x=MUTATIONS[mutation]))
    with pytest.raises(ValueError, match="refusing"):
        torch_pickle.read_legacy_state_dict(path)
    assert [t.name for t in (torch_pickle.RestrictedUnpickler.ALLOWED[("torch", name)]
                             for name in ("FloatStorage", "LongStorage"))] == [
        "FloatStorage", "LongStorage"]
    assert torch_pickle.rebuild_tensor_v2.__defaults__ == (False, None, None)
    # The genuine weights still load, identical to a load before any hostile file.
    again = torch_pickle.read_legacy_state_dict(lite_weights.source_file("lite0"))
    assert list(again) == list(lite0_state)
    for name, array in lite0_state.items():
        assert again[name].dtype == array.dtype
        np.testing.assert_array_equal(again[name], array)
