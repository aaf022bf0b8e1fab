"""EfficientNet B0..B7 from the `efficientnet` package (qubvel, 1.1.1), the classic recipe's choice.

The package predates Keras 3. What was checked under TensorFlow 2.21 / Keras 3.15
(`import efficientnet.tfkeras`, whose tf.keras is Keras 3):

* Construction with `input_shape` works (the package's models are plain Keras 3
  functional models and train normally). Its `input_tensor` argument does not: it tests
  the tensor with TF's legacy `tensorflow.python.keras` backend, which rejects Keras 3
  tensors (ValueError "Expected a symbolic tensor instance").
* Its stochastic-depth layer `FixedDropout` subclasses `keras.layers.Dropout` and only
  overrides `_get_noise_shape`, which Keras 3 never calls: the override is dead code. Keras
  3's own Dropout already resolves the None in noise_shape=(None, 1, 1, 1) per batch, so it
  still drops whole residual branches per example in training and is the identity at
  inference.
* Serialisation: `.keras`, `tf.saved_model.save` and `model.export` all write, but
  `FixedDropout` is a class defined inside a function and swish is a closure, both only
  findable through the custom objects that `import efficientnet.tfkeras` registers; a fresh
  process that loads such a `.keras` file without that import fails ("Activation could not
  be deserialized properly").

So this module builds the package's model and then rebuilds the same graph (same layer
names, same weights) with `keras.layers.Dropout` in place of FixedDropout and Keras's
built-in "swish" in place of the package's closure (identical maths: x * sigmoid(x)). The
result contains only built-in Keras layers: it saves and reloads anywhere without
importing the package, and is flat (no nested model), like every other family.

The package's models expect torch-style input, (x/255 - ImageNet mean) / ImageNet std
(its `preprocess_input` uses mode="torch"). That is a `Normalization` layer at the bottom
of the rebuilt graph, so callers feed 0..255 pixels like every other backbone.

ImageNet weights: the package's files (`efficientnet-bN_weights_tf_dim_ordering_tf_kernels_
autoaugment[_notop].h5`, from its GitHub release) are fetched into Keras's cache,
`$KERAS_HOME/models/` (default ~/.keras/models/), exactly where the package itself would put
them; offline without the file, `WeightsUnavailableError` says how to pre-seed it.

Usage:
    from train.backbones import efn
    model = efn.build(weights="none", input_size=224, include_top=False, index=0)
    features = model(pixels_0_to_255)   # [batch, 7, 7, 1280]
"""

from __future__ import annotations

import functools

import keras

from train.backbones import common, keras_apps

NUM_IMAGENET_CLASSES = 1000
SIZES = (224, 240, 260, 300, 380, 456, 528, 600)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

NORMALIZATION = (
    "Normalization layer: (x/255 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225] per RGB "
    "channel (the package's torch-style preprocessing), inside the model"
)


def weights_file(index: int, include_top: bool) -> str:
    """The file name the package (and Keras's cache) uses for B{index}'s ImageNet weights."""
    suffix = "_autoaugment.h5" if include_top else "_autoaugment_notop.h5"
    return f"efficientnet-b{index}_weights_tf_dim_ordering_tf_kernels{suffix}"


def _is_package_object(obj) -> bool:
    module = getattr(obj, "__module__", "") or ""
    return module.split(".")[0] == "efficientnet"


def _builtin_layer(layer: keras.layers.Layer) -> keras.layers.Layer:
    """A fresh built-in Keras layer equivalent to one of the package's layers."""
    config = layer.get_config()
    if isinstance(layer, keras.layers.Dropout):
        # Covers FixedDropout: Keras 3's Dropout handles noise_shape=(None, 1, 1, 1) itself.
        return keras.layers.Dropout(config["rate"], noise_shape=config["noise_shape"],
                                    seed=config["seed"], name=layer.name)
    if _is_package_object(getattr(layer, "activation", None)):
        config["activation"] = "swish"  # The only function the package passes as activation.
    if _is_package_object(type(layer)):
        raise RuntimeError(f"unexpected layer type {type(layer).__name__} in the efficientnet "
                           f"package's model ({layer.name}); this module knows FixedDropout only")
    return layer.__class__.from_config(config)


def _rebuild(package_model: keras.Model, *, input_size: int, name: str) -> keras.Model:
    """The package's graph with built-in layers, input normalisation and the same weights."""
    normalization = keras.layers.Normalization(
        mean=[255.0 * m for m in IMAGENET_MEAN],
        variance=[(255.0 * s) ** 2 for s in IMAGENET_STD],
        name="normalization",
    )

    def call(layer, *args, **kwargs):
        if layer.name == "stem_conv":  # The first layer after the input.
            args = (normalization(args[0]), *args[1:])
        return layer(*args, **kwargs)

    pixels = keras.Input(shape=(input_size, input_size, 3), name="pixels")
    # clone_model replays the graph on `pixels`, so the result is one flat model (the
    # package's own `input_tensor` argument, the alternative, rejects Keras 3 tensors).
    clone = keras.models.clone_model(package_model, input_tensors=pixels,
                                     clone_function=_builtin_layer, call_function=call)
    if "normalization" not in {layer.name for layer in clone.layers}:
        raise RuntimeError("the efficientnet package's model has no stem_conv layer")
    model = keras.Model(clone.input, clone.output, name=name)
    for layer in package_model.layers:
        if layer.weights:
            model.get_layer(layer.name).set_weights(layer.get_weights())
    return model


def build(*, weights: common.WeightsSpec, input_size: int, include_top: bool = False,
          index: int) -> keras.Model:
    """Builds efficientnet.tfkeras.EfficientNetB{index} as a flat model taking 0..255 pixels.

    Args:
      weights: "imagenet" (the package's file, from Keras's cache or downloaded), "none" or
        a local file: the package's own ImageNet .h5 (or another legacy .h5 of this
        architecture), or a .weights.h5 / .keras saved from a model built here.
      input_size: square input size in pixels.
      include_top: keep the 1000-way ImageNet softmax instead of returning the feature map.
      index: 0..7 for B0..B7.

    Returns:
      [B, S, S, 3] float32 0..255 -> [B, h, w, C] feature map, or [B, 1000] probabilities.

    Raises:
      ValueError: include_top with ImageNet weights at a non-native size, or a too small size.
      WeightsUnavailableError: ImageNet weights are not cached and cannot be downloaded.
    """
    if not 0 <= index < len(SIZES):
        raise ValueError(f"index must be 0..{len(SIZES) - 1} (B0..B7), got {index}")
    name = f"efn-b{index}"
    if input_size < 32:
        raise ValueError(f"input_size must be at least 32 pixels, got {input_size}")
    if include_top and weights == common.IMAGENET and input_size != SIZES[index]:
        raise ValueError(
            f"{name} with its ImageNet classifier (include_top=True) needs its native "
            f"{SIZES[index]}px input, got input_size={input_size}; use include_top=False "
            f"for other sizes"
        )
    # Imported only when a model is built: the import registers the package's custom objects.
    import efficientnet.tfkeras as efn_package
    from efficientnet import weights as package_weights

    imagenet_path = None
    if weights == common.IMAGENET:
        file_name = weights_file(index, include_top)
        hashes = package_weights.IMAGENET_WEIGHTS_HASHES.get(f"efficientnet-b{index}")
        imagenet_path = keras_apps.fetch_pretrained(
            name=name, file_name=file_name,
            url=package_weights.IMAGENET_WEIGHTS_PATH + file_name,
            file_hash=hashes[0 if include_top else 1] if hashes else None)
    constructor = getattr(efn_package, f"EfficientNetB{index}")
    package_model = constructor(include_top=include_top, weights=None,
                                input_shape=(input_size, input_size, 3))
    saved_here = weights not in (common.IMAGENET, common.NO_WEIGHTS) and (
        weights.endswith(".weights.h5") or weights.endswith(".keras"))
    if imagenet_path is not None:
        package_model.load_weights(imagenet_path)
    elif weights != common.NO_WEIGHTS and not saved_here:
        package_model.load_weights(weights)  # Legacy h5 named after the package's layers.
    model = _rebuild(package_model, input_size=input_size, name=name)
    if saved_here:
        model.load_weights(weights)
    return model


BACKBONES: tuple[common.BackboneInfo, ...] = tuple(
    common.BackboneInfo(
        name=f"efn-b{i}",
        family="efn",
        input_size=size,
        normalization=NORMALIZATION,
        build=functools.partial(build, index=i),
    )
    for i, size in enumerate(SIZES)
)
