"""One loaded SavedModel version: its signature defs (as saved_model.pb has them) and calls.

Any SavedModel works: signatures are read from the file, called by name with tensors of the
dtypes the file declares, and their outputs returned as numpy arrays.
"""

from __future__ import annotations

import os
import threading

import grpc
import numpy as np
from absl import logging
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2

from serving.errors import ServingError

SAVED_MODEL_PB = "saved_model.pb"
SAVED_MODEL_PBTXT = "saved_model.pbtxt"
DEFAULT_TAGS = ("serve",)


def servable_id(name: str, version: int) -> str:
    """ServableId::DebugString, as TF Serving logs it."""
    return f"{{name: {name} version: {version}}}"


def read_meta_graph(path: str, tags=DEFAULT_TAGS) -> meta_graph_pb2.MetaGraphDef:
    """The MetaGraphDef of path's saved_model.pb with exactly these tags.

    Raises:
      ServingError: NOT_FOUND (no saved_model.pb), DATA_LOSS (unparsable) or NOT_FOUND (no
        meta graph with the tags), worded like TensorFlow's SavedModel reader.
    """
    from google.protobuf import text_format

    pb, pbtxt = os.path.join(path, SAVED_MODEL_PB), os.path.join(path, SAVED_MODEL_PBTXT)
    saved = saved_model_pb2.SavedModel()
    try:
        if os.path.isfile(pb):
            with open(pb, "rb") as f:
                saved.ParseFromString(f.read())
        elif os.path.isfile(pbtxt):
            with open(pbtxt) as f:
                text_format.Parse(f.read(), saved)
        else:
            raise ServingError(
                grpc.StatusCode.NOT_FOUND,
                "Could not find SavedModel .pb or .pbtxt at supplied export directory path: "
                f"{path}. Check that the directory exists and that you have the right "
                "permissions for accessing it.")
    except ServingError:
        raise
    except Exception:  # DecodeError and friends: a truncated or foreign file.
        raise ServingError(grpc.StatusCode.DATA_LOSS,
                           f"Can't parse {pb} as binary proto") from None
    wanted = set(tags)
    for meta_graph in saved.meta_graphs:
        if set(meta_graph.meta_info_def.tags) == wanted:
            return meta_graph
    available = [sorted(m.meta_info_def.tags) for m in saved.meta_graphs]
    raise ServingError(
        grpc.StatusCode.NOT_FOUND,
        f"Could not find meta graph def matching supplied tags: {{ {' '.join(sorted(wanted))} }}."
        f" To inspect available tag-sets in the SavedModel, please use the SavedModel CLI: "
        f"`saved_model_cli` (available tag-sets: {available})")


class Servable:
    """A loaded version. Thread-safe: signatures may be called concurrently."""

    def __init__(self, *, name: str, version: int, path: str, loaded,
                 meta_graph: meta_graph_pb2.MetaGraphDef):
        self.name = name
        self.version = version
        self.path = path
        self.meta_graph = meta_graph
        self._loaded = loaded
        self._functions = {}
        self._lock = threading.Lock()
        self.lock = threading.Lock()  # Guards batchers.
        self.batchers: dict = {}  # signature name -> Batcher, filled by the batching layer.

    @classmethod
    def load(cls, *, name: str, version: int, path: str, tags=DEFAULT_TAGS) -> Servable:
        """Reads saved_model.pb, then loads the SavedModel with TensorFlow.

        Raises:
          ServingError: any failure, with TensorFlow's code when it is an op error.
        """
        import tensorflow as tf

        meta_graph = read_meta_graph(path, tags)
        try:
            loaded = tf.saved_model.load(path, tags=list(tags))
        except Exception as error:
            raise ServingError.from_exception(error) from None
        return cls(name=name, version=version, path=path, loaded=loaded, meta_graph=meta_graph)

    @property
    def signature_defs(self):
        return self.meta_graph.signature_def

    def function(self, signature_name: str):
        with self._lock:
            if signature_name not in self._functions:
                signatures = self._loaded.signatures if self._loaded is not None else {}
                if signature_name not in signatures:  # E.g. __saved_model_init_op.
                    raise ServingError(grpc.StatusCode.FAILED_PRECONDITION,
                                       f'Serving signature key "{signature_name}" cannot be '
                                       "called.")
                self._functions[signature_name] = signatures[signature_name]
            return self._functions[signature_name]

    def run(self, signature_name: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Calls a signature; returns every output as numpy.

        Raises:
          ServingError: TensorFlow op errors keep their code (InvalidArgumentError ->
            INVALID_ARGUMENT) and message; argument errors are INVALID_ARGUMENT.
        """
        import tensorflow as tf

        signature = self.signature_defs[signature_name]
        try:
            tensors = {name: tf.constant(value, dtype=tf.dtypes.as_dtype(
                signature.inputs[name].dtype)) for name, value in inputs.items()}
            outputs = self.function(signature_name)(**tensors)
            return {name: tensor.numpy() for name, tensor in outputs.items()}
        except tf.errors.OpError as error:
            raise ServingError.from_exception(error) from None
        except (TypeError, ValueError) as error:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, str(error)) from None

    def close(self) -> None:
        with self.lock:
            batchers = list(self.batchers.values())
            self.batchers.clear()
        for batcher in batchers:
            batcher.stop()
        self._functions.clear()
        self._loaded = None
        logging.debug("Released %s", servable_id(self.name, self.version))
