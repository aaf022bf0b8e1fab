"""keras.applications (B0-B7, V2) and `efficientnet` package backbones: shapes, weights, offline.

Everything runs offline and small (64 px). ImageNet files are stood in for by files this
test writes itself under the names Keras expects, with the expected hashes patched to match.
"""

from __future__ import annotations

import hashlib
import re
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest

from train import backbones
from train.backbones import efn

SIZE = 64
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
KERAS_NAMES = [f"b{i}" for i in range(8)] + [f"v2-{v}" for v in ("b0", "b1", "b2", "b3", "s",
                                                                  "m", "l")]
EFN_NAMES = [f"efn-b{i}" for i in range(8)]
QUICK = ["b0", "v2-b0", "v2-s", "efn-b0"]
BLOCK = re.compile(r"^block(\d+)([a-z]+)_")


def _pixels(n: int = 2, size: int = SIZE, seed: int = 0) -> np.ndarray:
    return np.random.RandomState(seed).uniform(0, 255, (n, size, size, 3)).astype("float32")


def _md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _stem_input(model: keras.Model, x: np.ndarray) -> np.ndarray:
    """What the model feeds its first convolution: the normalised pixels."""
    layer = "stem_conv_pad" if "stem_conv_pad" in [la.name for la in model.layers] else "stem_conv"
    return np.asarray(keras.Model(model.input, model.get_layer(layer).input)(x))


@pytest.fixture
def keras_home(tmp_path, monkeypatch):
    """An empty Keras cache, for this module and for Keras itself (which reads it at import)."""
    home = tmp_path / "keras_home"
    (home / "models").mkdir(parents=True)
    monkeypatch.setenv("KERAS_HOME", str(home))
    from keras.src.backend import config as keras_config

    monkeypatch.setattr(keras_config, "_KERAS_DIR", str(home))
    return home


@pytest.fixture
def offline(monkeypatch) -> list[float | None]:
    """No network: every lookup or connect fails at once. Yields the socket default timeout
    in force at each attempt (what a silent network, which never answers, would cost)."""
    attempts: list[float | None] = []

    def refuse(*args, **kwargs):
        attempts.append(socket.getdefaulttimeout())
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    return attempts


def test_registry_lists_every_family_with_native_sizes_and_normalisation():
    names = backbones.list_backbones()
    assert set(KERAS_NAMES + EFN_NAMES) <= set(names)
    sizes = {n: backbones.get_info(n).input_size for n in KERAS_NAMES + EFN_NAMES}
    assert [sizes[f"b{i}"] for i in range(8)] == [224, 240, 260, 300, 380, 456, 528, 600]
    assert [sizes[f"efn-b{i}"] for i in range(8)] == [sizes[f"b{i}"] for i in range(8)]
    assert [sizes[f"v2-{v}"] for v in ("b0", "b1", "b2", "b3", "s", "m", "l")] == [
        224, 240, 260, 300, 384, 480, 480]
    assert {backbones.get_info(n).family for n in KERAS_NAMES} == {"keras"}
    assert {backbones.get_info(n).family for n in EFN_NAMES} == {"efn"}
    assert "0.229" in backbones.get_info("b3").normalization
    assert "x/128 - 1" in backbones.get_info("v2-m").normalization
    assert "0.229" in backbones.get_info("v2-b2").normalization
    assert "0.485" in backbones.get_info("efn-b5").normalization


def _check_feature_backbone(name: str):
    backbone = backbones.build_backbone(name, weights="none", input_size=SIZE)
    assert backbone.input_size == SIZE
    assert backbone.normalization == backbones.get_info(name).normalization
    model = backbone.model
    assert model.input.shape == (None, SIZE, SIZE, 3)
    features = np.asarray(model(_pixels()))
    # Total stride 32; no pooling.
    assert features.shape == (2, SIZE // 32, SIZE // 32, backbone.num_features)
    assert np.isfinite(features).all()
    # Flat model with keras's blockNx_ names: the unit phase 2 unfreezes by.
    assert not any(isinstance(layer, keras.Model) for layer in model.layers)
    blocks = []
    for layer in model.layers:
        match = BLOCK.match(layer.name)
        if match and (not blocks or blocks[-1] != match.groups()):
            blocks.append(match.groups())
    assert blocks[0] == ("1", "a")
    assert len(set(blocks)) == len(blocks), "blocks must be contiguous in graph order"
    assert [int(s) for s, _ in blocks] == sorted(int(s) for s, _ in blocks)
    # The head convolution comes after the last block (it trains with the top blocks).
    assert "top_conv" in [layer.name for layer in model.layers]
    return backbone, blocks


@pytest.mark.parametrize("name", QUICK)
def test_representative_backbones_build_small_feature_models(name):
    backbone, blocks = _check_feature_backbone(name)
    assert backbone.num_features == 1280
    if name in ("b0", "efn-b0"):
        assert blocks[-1] == ("7", "a") and len(blocks) == 16
        assert "block6a_expand_conv" in [la.name for la in backbone.model.layers]


@pytest.mark.parametrize("name", QUICK)
def test_untrained_backbones_already_normalise_as_stated(name):
    # weights="none" too: a model trained from scratch must see the input its docs promise
    # (Keras's B0..B7 alone would leave its Normalization at mean 0, variance 1: x/255).
    model = backbones.build_backbone(name, weights="none", input_size=SIZE).model
    x = _pixels()
    expected = x / 128.0 - 1.0 if name == "v2-s" else (x / 255.0 - MEAN) / STD
    np.testing.assert_allclose(_stem_input(model, x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(KERAS_NAMES + EFN_NAMES) - set(QUICK)))
def test_every_backbone_builds_a_small_feature_model(name):
    _check_feature_backbone(name)


@pytest.mark.parametrize("name", ["b0", "efn-b0"])
def test_include_top_gives_imagenet_probabilities_at_native_size(name):
    """The 1000-way model is the feature backbone plus softmax(dense(average pool)): checked
    against that computation done here, with the weights carried into a separately built
    feature model, so it holds for whatever weights a file brings."""
    keras.utils.set_random_seed(0)
    backbone = backbones.build_backbone(name, weights="none", include_top=True)
    assert backbone.input_size == 224
    model = backbone.model
    head = model.layers[-1]
    assert isinstance(head, keras.layers.Dense) and head.units == 1000
    # Random-init logits are nearly equal: a head of larger weights makes every class matter.
    rng = np.random.default_rng(0)
    kernel = rng.normal(0, 0.3, head.kernel.shape).astype("float32")
    bias = rng.normal(0, 1, head.bias.shape).astype("float32")
    head.set_weights([kernel, bias])
    features = backbones.build_backbone(name, weights="none", input_size=224).model
    # The feature model's layers are the classifier's, minus pool, dropout and dense.
    assert len(model.layers) == len(features.layers) + 3
    for ours, theirs in zip(features.layers, model.layers):
        assert type(ours) is type(theirs)
        ours.set_weights(theirs.get_weights())
    x = _pixels(2, 224)
    probs = np.asarray(model(x))
    pooled = np.asarray(features(x)).mean(axis=(1, 2))
    logits = pooled @ kernel + bias
    expected = np.exp(logits - logits.max(axis=-1, keepdims=True))
    expected /= expected.sum(axis=-1, keepdims=True)
    assert probs.shape == (2, 1000)
    np.testing.assert_allclose(probs, expected, rtol=1e-3, atol=1e-6)
    assert probs.max() > 0.01 and probs[0].argmax() == expected[0].argmax()


@pytest.mark.parametrize("name", ["b0", "v2-s", "efn-b0"])
def test_imagenet_head_refuses_a_non_native_size(name, keras_home, offline):
    with pytest.raises(ValueError, match="native"):
        backbones.build_backbone(name, weights="imagenet", input_size=SIZE, include_top=True)


@pytest.mark.parametrize(
    "name, file_name",
    [("b0", "efficientnetb0_notop.h5"),
     ("v2-s", "efficientnetv2-s_notop.h5"),
     ("efn-b0", "efficientnet-b0_weights_tf_dim_ordering_tf_kernels_autoaugment_notop.h5")],
)
def test_imagenet_offline_fails_fast_with_instructions(name, file_name, keras_home, offline):
    from train.backbones import keras_apps

    before = socket.getdefaulttimeout()
    with pytest.raises(backbones.WeightsUnavailableError) as raised:
        backbones.build_backbone(name, weights="imagenet", input_size=SIZE)
    # "Fast" without a clock: one download was tried, under a finite socket timeout (so a
    # network that never answers costs at most that), and nothing retried it.
    assert offline == [keras_apps.DOWNLOAD_TIMEOUT_SECONDS]
    assert socket.getdefaulttimeout() == before  # The process-wide default is restored.
    message = str(raised.value)
    assert str(keras_home / "models" / file_name) in message
    assert "KERAS_HOME" in message and "weights=" in message
    assert re.search(r"https://\S+/" + re.escape(file_name), message)
    assert not (keras_home / "models" / file_name).exists()


def _fake_keras_imagenet_file(path) -> keras.Model:
    """A B0 notop file laid out like Keras's: the ImageNet *std* in the variance slot."""
    model = keras.applications.EfficientNetB0(include_top=False, weights=None,
                                              input_shape=(SIZE, SIZE, 3))
    norm = next(la for la in model.layers if isinstance(la, keras.layers.Normalization))
    norm.adapt_mean.assign(MEAN.reshape(norm.adapt_mean.shape))
    norm.adapt_variance.assign(STD.reshape(norm.adapt_variance.shape))
    model.save(path)  # Legacy HDF5, the format of Keras's downloads.
    return model


def test_b0_imagenet_file_normalises_correctly_by_name_and_by_path(keras_home, offline,
                                                                   monkeypatch):
    from keras.src.applications import efficientnet as keras_efficientnet

    path = keras_home / "models" / "efficientnetb0_notop.h5"
    _fake_keras_imagenet_file(path)
    monkeypatch.setitem(keras_efficientnet.WEIGHTS_HASHES, "b0", ("unused", _md5(path)))
    x = _pixels()
    expected = (x / 255.0 - MEAN) / STD

    by_name = backbones.build_backbone("b0", weights="imagenet", input_size=SIZE).model
    by_path = backbones.build_backbone("b0", weights=str(path), input_size=SIZE).model
    # Keras's own handling of weights="imagenet", from the same cached file.
    keras_own = keras.applications.EfficientNetB0(include_top=False, weights="imagenet",
                                                  input_shape=(SIZE, SIZE, 3))
    for model in (by_name, by_path, keras_own):
        np.testing.assert_allclose(_stem_input(model, x), expected, rtol=1e-4, atol=1e-4)
    reference = np.asarray(keras_own(x))
    scale = np.abs(reference).max()  # Small (random weights, no training) but not zero.
    assert scale > 0
    np.testing.assert_allclose(np.asarray(by_name(x)), reference, rtol=1e-4, atol=1e-4 * scale)
    np.testing.assert_allclose(np.asarray(by_path(x)), reference, rtol=1e-4, atol=1e-4 * scale)

    # The pitfall this guards against: plain Keras loading the same file from a path.
    naive = keras.applications.EfficientNetB0(include_top=False, weights=str(path),
                                              input_shape=(SIZE, SIZE, 3))
    assert not np.allclose(_stem_input(naive, x), expected, rtol=1e-2, atol=1e-2)


def test_efn_imagenet_file_is_used_offline_from_the_keras_cache(keras_home, offline,
                                                                 monkeypatch):
    import efficientnet.tfkeras as package
    from efficientnet import weights as package_weights

    file_name = efn.weights_file(0, include_top=False)
    path = keras_home / "models" / file_name
    source = package.EfficientNetB0(include_top=False, weights=None, input_shape=(SIZE, SIZE, 3))
    source.save(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    monkeypatch.setitem(package_weights.IMAGENET_WEIGHTS_HASHES, "efficientnet-b0",
                        ("unused", digest))
    x = _pixels()
    model = backbones.build_backbone("efn-b0", weights="imagenet", input_size=SIZE).model
    np.testing.assert_allclose(_stem_input(model, x), (x / 255.0 - MEAN) / STD,
                               rtol=1e-4, atol=1e-4)
    # Same function as the package's own model fed its torch-style preprocessing.
    reference = np.asarray(source((x / 255.0 - MEAN) / STD))
    np.testing.assert_allclose(np.asarray(model(x)), reference,
                               rtol=1e-4, atol=1e-5 * np.abs(reference).max())
    by_path = backbones.build_backbone("efn-b0", weights=str(path), input_size=SIZE).model
    np.testing.assert_allclose(np.asarray(by_path(x)), np.asarray(model(x)), rtol=1e-6,
                               atol=1e-7 * np.abs(reference).max())


@pytest.mark.parametrize("name", ["b0", "v2-b0", "efn-b0"])
def test_local_weights_file_reproduces_the_saved_model(name, tmp_path):
    source = backbones.build_backbone(name, weights="none", input_size=SIZE).model
    path = tmp_path / f"{name}.weights.h5"
    source.save_weights(path)
    loaded = backbones.build_backbone(name, weights=str(path), input_size=SIZE).model
    x = _pixels()
    fresh = np.asarray(backbones.build_backbone(name, weights="none", input_size=SIZE).model(x))
    expected = np.asarray(source(x))
    np.testing.assert_array_equal(np.asarray(loaded(x)), expected)
    assert not np.allclose(fresh, expected)  # Random init alone would not match.


def test_efn_stochastic_depth_is_builtin_dropout_dropping_whole_examples():
    model = backbones.build_backbone("efn-b0", weights="none", input_size=SIZE).model
    drops = [la for la in model.layers if la.name.endswith("_drop")]
    assert len(drops) == 9  # One per residual block of B0.
    assert all(type(la) is keras.layers.Dropout for la in drops)
    assert all(tuple(la.noise_shape) == (None, 1, 1, 1) for la in drops)
    assert all(type(la).__module__.startswith("keras") for la in model.layers)
    layer = keras.layers.Dropout.from_config(dict(drops[-1].get_config(), rate=0.5))
    y = np.asarray(layer(np.ones((64, 4, 4, 8), np.float32), training=True))
    per_example = y.reshape(64, -1)
    assert (per_example == per_example[:, :1]).all()  # One decision per example.
    assert set(np.unique(per_example)) == {0.0, 2.0}
    np.testing.assert_array_equal(layer(np.ones((2, 4, 4, 8)), training=False), 1.0)
    # In a graph the batch size is unknown when the noise shape is resolved.
    import tensorflow as tf

    graph_call = tf.function(lambda t: layer(t, training=True),
                             input_signature=[tf.TensorSpec([None, 4, 4, 8])])
    y = graph_call(tf.ones((64, 4, 4, 8))).numpy().reshape(64, -1)
    assert (y == y[:, :1]).all() and set(np.unique(y)) == {0.0, 2.0}


def test_efn_trains_and_reloads_without_the_package(tmp_path):
    keras.utils.set_random_seed(0)
    backbone = backbones.build_backbone("efn-b0", weights="none", input_size=SIZE).model
    outputs = keras.layers.Dense(3, activation="softmax")(
        keras.layers.GlobalAveragePooling2D()(backbone.output))
    model = keras.Model(backbone.input, outputs)
    # Eager: tracing B0's training graph costs ~20 s on 2 CPU cores, six eager steps ~8 s.
    # (Graph mode is covered by the dropout test's tf.function and the SavedModel test.)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                  run_eagerly=True)
    x, y = _pixels(12, seed=1), np.arange(12) % 3
    stem_before = keras.ops.convert_to_numpy(backbone.get_layer("stem_conv").kernel)
    history = model.fit(x, y, batch_size=6, epochs=3, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < losses[0]
    assert not np.allclose(stem_before,
                           keras.ops.convert_to_numpy(backbone.get_layer("stem_conv").kernel))

    path = tmp_path / "efn.keras"
    model.save(path)
    np.save(tmp_path / "x.npy", x[:2])
    np.save(tmp_path / "expected.npy", np.asarray(model(x[:2])))
    # A fresh interpreter that never imports the efficientnet package.
    script = (
        "import sys, numpy as np, keras\n"
        f"m = keras.models.load_model({str(path)!r})\n"
        "assert 'efficientnet' not in sys.modules\n"
        f"x = np.load({str(tmp_path / 'x.npy')!r})\n"
        f"np.testing.assert_allclose(m(x), np.load({str(tmp_path / 'expected.npy')!r}),"
        " rtol=1e-5, atol=1e-6)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.slow
def test_efn_saves_as_a_tensorflow_savedmodel(tmp_path):
    import tensorflow as tf

    model = backbones.build_backbone("efn-b0", weights="none", input_size=SIZE).model
    tf.saved_model.save(model, str(tmp_path / "sm"))
    signature = tf.saved_model.load(str(tmp_path / "sm")).signatures["serving_default"]
    x = _pixels()
    (out,) = signature(tf.constant(x)).values()
    np.testing.assert_allclose(out.numpy(), np.asarray(model(x)), rtol=1e-5, atol=1e-7)
