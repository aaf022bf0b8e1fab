"""keras.applications EfficientNet B0..B7 and EfficientNetV2, under the project's weights contract.

Both families normalise their 0..255 input inside the model:

* B0..B7: `Rescaling(1/255)` then a `Normalization` layer whose mean and variance are
  weights of the model (the ImageNet weight files carry them). Keras leaves them at 0 and 1
  without ImageNet weights; we set the ImageNet values, so weights="none" normalises alike.
* V2-B0..B3: built with include_preprocessing=True, i.e. `Rescaling(1/255)` then
  `Normalization` with the ImageNet mean and std fixed in the layer config.
* V2-S/M/L: include_preprocessing=True, i.e. `Rescaling(1/128, offset=-1)`.

ImageNet weights: Keras downloads `<model name>[_notop].h5` into `$KERAS_HOME/models/`
(default `~/.keras/models/`). This module fetches that file itself (same name, URL and hash
check as Keras) so that a cached file works offline, an offline machine fails in
milliseconds with `WeightsUnavailableError` saying how to pre-seed the cache, and both
"imagenet" and a local file go through one loading path.

Keras 3 quirk handled here: B0..B7's ImageNet weight files store the ImageNet *std* in the
Normalization layer's `variance` slot. Keras compensates with an extra
`Rescaling(1/sqrt(std))` layer that it adds only when called with weights="imagenet";
`weights=<path to the same file>` silently normalises by 1/sqrt(std) instead of 1/std.
We always build without that layer and, after loading a file, turn a stored std into a
true variance (std**2), so every B model computes (x/255 - mean) / std, whichever way its
weights arrived. (A user file whose Normalization variance happens to equal the ImageNet
std to 1e-4 would be "fixed" too; such files do not arise from this project.)

Layer names are Keras's own (`stem_conv`, `block6a_expand_conv`, `top_conv`, ...), so
fine-tuning can unfreeze whole blocks by their `blockNx_` prefix.

Usage:
    from train.backbones import keras_apps
    model = keras_apps.build(weights="none", input_size=224, spec=keras_apps.SPECS["b0"])
    features = model(pixels_0_to_255)   # [batch, 7, 7, 1280]
"""

from __future__ import annotations

import dataclasses
import functools
import os
import socket

import keras
import numpy as np

from train.backbones import common
from train.backbones.common import WeightsUnavailableError

NUM_IMAGENET_CLASSES = 1000
DOWNLOAD_TIMEOUT_SECONDS = 20.0

_B_URL = "https://storage.googleapis.com/keras-applications/"
_V2_URL = "https://storage.googleapis.com/tensorflow/keras-applications/efficientnet_v2/"
_IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
_IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)

B_NORMALIZATION = (
    "Rescaling(1/255) then Normalization: (x/255 - [0.485, 0.456, 0.406]) / "
    "[0.229, 0.224, 0.225] per RGB channel, inside the model (B0..B7: mean/variance are "
    "layer weights; a stored ImageNet std is converted to a variance on load)"
)
V2B_NORMALIZATION = (
    "include_preprocessing=True: Rescaling(1/255) then Normalization: (x/255 - "
    "[0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225] per RGB channel, inside the model"
)
V2_NORMALIZATION = (
    "include_preprocessing=True: Rescaling(1/128, offset=-1): x/128 - 1, inside the model"
)


@dataclasses.dataclass(frozen=True)
class KerasSpec:
    """One keras.applications EfficientNet.

    Attributes:
      name: registry name ("b0", "v2-s", ...).
      constructor: the keras.applications attribute, e.g. "EfficientNetV2S".
      keras_name: the model name Keras gives it, which is also its weight file stem.
      hash_key: the key of Keras's WEIGHTS_HASHES table for this model.
      input_size: native resolution.
      url: the directory Keras downloads the weight files from.
      normalization: what the model does to its 0..255 input.
    """

    name: str
    constructor: str
    keras_name: str
    hash_key: str
    input_size: int
    url: str
    normalization: str

    @property
    def is_v2(self) -> bool:
        return self.name.startswith("v2-")

    def weights_file(self, include_top: bool) -> str:
        """The ImageNet weight file name Keras expects in its cache."""
        return self.keras_name + (".h5" if include_top else "_notop.h5")


_B_SIZES = (224, 240, 260, 300, 380, 456, 528, 600)
# Sizes are keras.applications' defaults (`default_size` of each constructor).
_V2_VARIANTS = (("b0", 224), ("b1", 240), ("b2", 260), ("b3", 300), ("s", 384), ("m", 480),
                ("l", 480))

SPECS: dict[str, KerasSpec] = {
    s.name: s
    for s in (
        *(KerasSpec(f"b{i}", f"EfficientNetB{i}", f"efficientnetb{i}", f"b{i}", size, _B_URL,
                    B_NORMALIZATION)
          for i, size in enumerate(_B_SIZES)),
        *(KerasSpec(f"v2-{v}", f"EfficientNetV2{v.upper()}", f"efficientnetv2-{v}",
                    v if v.startswith("b") else f"-{v}", size, _V2_URL,
                    V2B_NORMALIZATION if v.startswith("b") else V2_NORMALIZATION)
          for v, size in _V2_VARIANTS),
    )
}


def fetch_pretrained(*, name: str, file_name: str, url: str, file_hash: str | None,
                     timeout_seconds: float = DOWNLOAD_TIMEOUT_SECONDS) -> str:
    """Returns the local path of a pretrained weight file, downloading it like Keras does.

    The file lives in `<keras home>/models/<file_name>`, where keras home is $KERAS_HOME
    (read now, not at import) or ~/.keras. A cached file is used without any network
    access (Keras re-downloads it only if its hash is wrong). Otherwise the download runs
    with a socket timeout, so an offline machine fails fast instead of hanging.

    Args:
      name: backbone name, for the error message.
      file_name: the file name Keras expects in its cache.
      url: where to download it from.
      file_hash: its md5 or sha256 as listed by Keras / the package, or None.
      timeout_seconds: socket timeout for the download.

    Raises:
      WeightsUnavailableError: the file is not cached and could not be downloaded.
    """
    cache_root = common.keras_home()
    cached = os.path.join(cache_root, "models", file_name)
    if os.path.isfile(cached) and file_hash is None:
        return cached  # With a hash, get_file below checks it, still without network access.
    previous = socket.getdefaulttimeout()
    # urlretrieve takes no timeout argument; the default timeout is the only handle.
    socket.setdefaulttimeout(timeout_seconds)
    try:
        return keras.utils.get_file(file_name, url, cache_subdir="models", file_hash=file_hash,
                                    cache_dir=cache_root)
    except Exception as e:  # get_file wraps every network failure in a bare Exception.
        reason = (str(e).splitlines() or [""])[0][:300]
        raise WeightsUnavailableError(
            f"ImageNet weights for backbone {name!r} are not in the Keras cache (or fail "
            f"its hash check) and could not be downloaded ({type(e).__name__}: {reason}). "
            f"To use them offline, download {url} on a machine with internet access and "
            f"copy it to {cached} (the cache directory is $KERAS_HOME/models, default "
            f"~/.keras/models; the file name must stay {file_name!r} and its hash must "
            f"match). Or pass weights=/path/to/{file_name}, or weights='none' to start from "
            f"random initialisation."
        ) from e
    finally:
        socket.setdefaulttimeout(previous)


def _keras_file_hash(spec: KerasSpec, include_top: bool) -> str | None:
    # Keras keeps the expected hashes in its (private) application modules; verifying the
    # download is worth the private import, and a missing table only skips the check.
    try:
        if spec.is_v2:
            from keras.src.applications.efficientnet_v2 import WEIGHTS_HASHES
        else:
            from keras.src.applications.efficientnet import WEIGHTS_HASHES
        return WEIGHTS_HASHES[spec.hash_key][0 if include_top else 1]
    except (ImportError, KeyError, IndexError):
        return None


def fix_stored_std(model: keras.Model) -> bool:
    """Turns a Normalization `variance` that holds the ImageNet std into std**2.

    Returns:
      Whether a layer was changed.
    """
    changed = False
    for layer in model.layers:
        # Only B0..B7 keep mean/variance as weights ("adapt" state); V2 passes constants in
        # the layer config, which no file can override.
        variance = getattr(layer, "adapt_variance", None)
        if not isinstance(layer, keras.layers.Normalization) or variance is None:
            continue
        values = np.asarray(variance).reshape(-1)
        if values.shape == (3,) and np.allclose(values, _IMAGENET_STD, atol=1e-4):
            variance.assign(np.reshape(values**2, variance.shape))
            layer.finalize_state()  # The layer computes with tensors cached from the weights.
            changed = True
    return changed


def _set_imagenet_statistics(model: keras.Model) -> None:
    """Gives B0..B7's Normalization layer the ImageNet mean and variance (std**2)."""
    for layer in model.layers:
        mean = getattr(layer, "adapt_mean", None)
        variance = getattr(layer, "adapt_variance", None)
        if isinstance(layer, keras.layers.Normalization) and mean is not None:
            mean.assign(np.reshape(_IMAGENET_MEAN, mean.shape))
            variance.assign(np.reshape(_IMAGENET_STD**2, variance.shape))
            layer.finalize_state()


def build_architecture(spec: KerasSpec, *, input_size: int, include_top: bool) -> keras.Model:
    """Builds an uninitialised keras.applications EfficientNet taking 0..255 pixels.

    Its input normalisation is already the one `spec.normalization` states, before any
    weights file is loaded (a file then brings its own B0..B7 statistics).
    """
    if input_size < 32:
        raise ValueError(f"input_size must be at least 32 pixels, got {input_size}")
    constructor = getattr(keras.applications, spec.constructor)
    kwargs = {"include_preprocessing": True} if spec.is_v2 else {}
    # weights=None always: with "imagenet" Keras would insert its extra std Rescaling layer
    # (B0..B7) and download on its own; we load the same file ourselves instead.
    model = constructor(include_top=include_top, weights=None,
                        input_shape=(input_size, input_size, 3), **kwargs)
    if not spec.is_v2:
        # Keras leaves B0..B7's Normalization at mean 0, variance 1 without ImageNet weights,
        # i.e. x/255 only; a model trained from scratch must still see the stated input.
        _set_imagenet_statistics(model)
    return model


def build(*, weights: common.WeightsSpec, input_size: int, include_top: bool = False,
          spec: KerasSpec) -> keras.Model:
    """Builds a keras.applications EfficientNet taking raw 0..255 RGB pixels.

    Args:
      weights: "imagenet" (Keras's file, from its cache or downloaded), "none" or the path of
        a weights file: Keras's ImageNet .h5 file, or a .weights.h5 / .h5 saved from a model
        built here with the same include_top.
      input_size: square input size in pixels.
      include_top: keep the 1000-way ImageNet softmax instead of returning the feature map.
      spec: which model, see SPECS.

    Returns:
      [B, S, S, 3] float32 0..255 -> [B, h, w, C] feature map, or [B, 1000] probabilities.

    Raises:
      ValueError: include_top with ImageNet weights at a non-native size, or a too small size.
      WeightsUnavailableError: ImageNet weights are not cached and cannot be downloaded.
    """
    if include_top and weights == common.IMAGENET and input_size != spec.input_size:
        # Keras refuses this too: the ImageNet classifier was trained at the native size.
        raise ValueError(
            f"{spec.name} with its ImageNet classifier (include_top=True) needs its native "
            f"{spec.input_size}px input, got input_size={input_size}; use include_top=False "
            f"for other sizes"
        )
    if weights == common.IMAGENET:
        file_name = spec.weights_file(include_top)
        path = fetch_pretrained(name=spec.name, file_name=file_name, url=spec.url + file_name,
                                file_hash=_keras_file_hash(spec, include_top))
    elif weights == common.NO_WEIGHTS:
        path = None
    else:
        path = weights
    model = build_architecture(spec, input_size=input_size, include_top=include_top)
    if path is not None:
        model.load_weights(path)
        fix_stored_std(model)
    return model


BACKBONES: tuple[common.BackboneInfo, ...] = tuple(
    common.BackboneInfo(
        name=spec.name,
        family="keras",
        input_size=spec.input_size,
        normalization=spec.normalization,
        build=functools.partial(build, spec=spec),
    )
    for spec in SPECS.values()
)
