"""The serving signatures: the contract every client of an exported model relies on.

Three signatures wrap one trained Keras model (0..255 RGB pixels in, class probabilities
out; it normalises inside its own graph):

  serving_default  image_bytes: string [None] encoded images (JPEG, PNG, GIF or BMP),
                   decoded and resized in the graph exactly as in training.
  predict_images   images: float32 [None, S, S, 3] pixels 0..255 already at model size,
                   for callers that preprocess themselves.
  classify         inputs: string [None] serialized tf.Example with the encoded image in
                   feature "image/encoded", for TF Serving's Classify API (gRPC Classify,
                   REST :classify); method name tensorflow/serving/classify is set on the
                   saved file by export.publish (SavedModels are written with predict).

Predict signatures return classes (label strings, [None, k]), class_ids (int64, [None, k]),
scores ([None, k], best first) and probabilities ([None, num_classes]); classify returns
classes and scores. Class names come from a lookup table over assets/labels.txt, filled by
the SavedModel's init op when the version loads.

The SavedModel is written with keras.export.ExportArchive, which saves exactly the
variables the signatures capture. A Keras 3 model tracked inside a tf.Module and saved with
tf.saved_model.save loads with tf.saved_model.load but not in the TF1 session bundle TF
Serving uses: the restore op fills variables the signature graphs never read, and every
request fails with FAILED_PRECONDITION "Could not find variable ..." (DESIGN.md, traps).

Usage:
    module = ServingModule(model, labels=["cat", "dog"], image_size=224,
                           labels_file="runs/cars/labels.txt")
    module.save(path)
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import keras
import tensorflow as tf

from train import preprocessing

SERVING_DEFAULT = "serving_default"
PREDICT_IMAGES = "predict_images"
CLASSIFY = "classify"

IMAGE_BYTES_INPUT = "image_bytes"
IMAGES_INPUT = "images"
CLASSIFY_INPUT = "inputs"  # The key TF Serving's Classify API requires.
EXAMPLE_IMAGE_FEATURE = "image/encoded"

CLASSES = "classes"
CLASS_IDS = "class_ids"
SCORES = "scores"
PROBABILITIES = "probabilities"

# method_name values TF Serving dispatches on (tensorflow/core/saved_model/signature_constants).
PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"


class ServingModule:
    """A trained model plus its labels and preprocessing, as the signatures' tf.functions."""

    def __init__(self, model: keras.Model, *, labels: Sequence[str], image_size: int,
                 top_k: int = 5, max_pixels: int | None = preprocessing.DEFAULT_MAX_PIXELS,
                 jpeg_dct_scaling: bool = True,
                 max_jpeg_scans: int | None = preprocessing.DEFAULT_MAX_JPEG_SCANS,
                 decode_parallelism: int = 16,
                 labels_file: str | None = None):
        """Builds the signatures' functions.

        Args:
          model: Keras model mapping float32 [B, S, S, 3] 0..255 pixels to [B, C] probabilities.
          labels: C class names, index i naming class i.
          image_size: S, the model's input size.
          top_k: classes/class_ids/scores width (clipped to C).
          max_pixels: images whose header declares more pixels are rejected before decoding.
          jpeg_dct_scaling: decode big JPEGs at 1/2, 1/4 or 1/8 scale in the DCT domain.
          max_jpeg_scans: JPEGs with more scans (decoding passes) are rejected before
            decoding.
          decode_parallelism: images decoded concurrently within one request.
          labels_file: the labels as a file, one per line (labels.txt); it becomes the
            SavedModel's assets/labels.txt and the class-name table is read from it at load
            time. Without one, the names are constants in the graph.

        Raises:
          ValueError: labels do not match the model's output width, or bad sizes.
        """
        labels = list(labels)
        outputs = model.outputs[0].shape[-1] if getattr(model, "outputs", None) else None
        if not labels or (outputs is not None and outputs != len(labels)):
            raise ValueError(f"{len(labels)} labels for a model with {outputs} outputs")
        if image_size < 1 or top_k < 1 or decode_parallelism < 1:
            raise ValueError("image_size, top_k and decode_parallelism must be positive")
        self.model = model
        self.image_size = int(image_size)
        self.top_k = min(int(top_k), len(labels))
        self.max_pixels = max_pixels
        self.jpeg_dct_scaling = jpeg_dct_scaling
        self.max_jpeg_scans = max_jpeg_scans
        self.decode_parallelism = int(decode_parallelism)
        if labels_file is not None:
            initializer = tf.lookup.TextFileInitializer(
                labels_file, key_dtype=tf.int64, key_index=tf.lookup.TextFileIndex.LINE_NUMBER,
                value_dtype=tf.string, value_index=tf.lookup.TextFileIndex.WHOLE_LINE,
                vocab_size=len(labels))
        else:
            initializer = tf.lookup.KeyValueTensorInitializer(
                tf.range(len(labels), dtype=tf.int64), tf.constant(labels, dtype=tf.string))
        self.label_table = tf.lookup.StaticHashTable(initializer, default_value="")

        size = self.image_size
        self.serve_image_bytes = tf.function(
            self._serve_image_bytes,
            input_signature=[tf.TensorSpec([None], tf.string, name=IMAGE_BYTES_INPUT)])
        self.predict_images = tf.function(
            self._predict_images,
            input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32, name=IMAGES_INPUT)])
        self.classify = tf.function(
            self._classify,
            input_signature=[tf.TensorSpec([None], tf.string, name=CLASSIFY_INPUT)])

    def signatures(self) -> dict[str, tf.types.experimental.GenericFunction]:
        """Signature name -> traced tf.function."""
        functions = {SERVING_DEFAULT: self.serve_image_bytes,
                     PREDICT_IMAGES: self.predict_images,
                     CLASSIFY: self.classify}
        for function in functions.values():
            function.get_concrete_function()
        return functions

    def save(self, path: str | os.PathLike) -> None:
        """Writes the SavedModel (serve tag, the three signatures, assets/labels.txt)."""
        archive = keras.export.ExportArchive()
        archive.track(self.model)
        archive.track(self.label_table)  # Tables are saved only when tracked explicitly.
        for name, function in self.signatures().items():
            archive.add_endpoint(name, function)
        archive.write_out(os.fspath(path), verbose=False)

    def decode_images(self, image_bytes: tf.Tensor) -> tf.Tensor:
        """Encoded images [B] -> float32 pixels [B, S, S, 3], on the CPU.

        String tensors cannot be copied to a GPU (TF Serving issue 1626), and decoding is
        CPU work anyway; map_fn decodes several images of one request concurrently.
        Errors name the offending image's index in the request.
        """
        with tf.device("/cpu:0"):
            count = tf.shape(image_bytes, out_type=tf.int64)[0]
            return tf.map_fn(
                lambda item: preprocessing.decode_and_resize(
                    item[0], self.image_size, max_pixels=self.max_pixels,
                    jpeg_dct_scaling=self.jpeg_dct_scaling, max_jpeg_scans=self.max_jpeg_scans,
                    name=tf.strings.format("image {}", item[1])),
                (image_bytes, tf.range(count)),
                fn_output_signature=tf.TensorSpec([self.image_size, self.image_size, 3],
                                                  tf.float32),
                parallel_iterations=self.decode_parallelism)

    def _outputs(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        probabilities = tf.cast(self.model(images, training=False), tf.float32)
        scores, class_ids = tf.math.top_k(probabilities, k=self.top_k)
        return {
            CLASSES: self.label_table.lookup(tf.cast(class_ids, tf.int64)),
            CLASS_IDS: tf.cast(class_ids, tf.int64),
            SCORES: scores,
            PROBABILITIES: probabilities,
        }

    def _serve_image_bytes(self, image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        return self._outputs(self.decode_images(image_bytes))

    def _predict_images(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        return self._outputs(images)

    def _classify(self, inputs: tf.Tensor) -> dict[str, tf.Tensor]:
        with tf.device("/cpu:0"):
            features = tf.io.parse_example(
                inputs, {EXAMPLE_IMAGE_FEATURE: tf.io.FixedLenFeature([], tf.string)})
        outputs = self._outputs(self.decode_images(features[EXAMPLE_IMAGE_FEATURE]))
        return {CLASSES: outputs[CLASSES], SCORES: outputs[SCORES]}
