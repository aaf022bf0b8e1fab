"""One loaded SavedModel version, loaded and run the way TF Serving does: a session bundle.

Any SavedModel that TF Serving loads works: signatures are read from the MetaGraph, run by
the tensor names they declare, and their outputs returned as numpy arrays.
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
    """A loaded version: a TF1 session over its MetaGraph, as TF Serving's SavedModelBundle.

    TF Serving never loads through the TF2 object graph (tf.saved_model.load): it imports
    the MetaGraph tagged --saved_model_tags into a Session, runs the saver's restore op on
    variables/, runs the init op (__saved_model_init_op / main_op / legacy_init_op) with
    the asset files fed in, and answers every request with Session::Run, feeding and
    fetching the tensor names in the SignatureDef (servables/tensorflow/
    saved_model_bundle_factory.cc, predict_util.cc RunPredict). tf.compat.v1's loader is the
    same C++-equivalent path, so a SavedModel whose signatures read variables the restore op
    never fills fails here exactly as there (FAILED_PRECONDITION "Could not find
    variable ..."), where tf.saved_model.load would have worked.

    Thread-safe: Session.run may be called concurrently.
    """

    def __init__(self, *, name: str, version: int, path: str, session,
                 meta_graph: meta_graph_pb2.MetaGraphDef):
        self.name = name
        self.version = version
        self.path = path
        self.meta_graph = meta_graph
        self._session = session
        self._callables = {}
        self._lock = threading.Lock()

    @classmethod
    def load(cls, *, name: str, version: int, path: str, tags=DEFAULT_TAGS) -> Servable:
        """Loads path's MetaGraph with these tags into a new session: restore, then init op.

        Raises:
          ServingError: any failure, with TensorFlow's code when it is an op error.
        """
        import tensorflow as tf
        from tensorflow.python.util import deprecation

        read_meta_graph(path, tags)  # TensorFlow's reader's exact NOT_FOUND/DATA_LOSS errors.
        graph = tf.Graph()
        session = tf.compat.v1.Session(graph=graph)
        try:
            # The v1 loader's deprecation notice points to tf.saved_model.load: wrong here.
            with graph.as_default(), deprecation.silence():
                meta_graph = tf.compat.v1.saved_model.loader.load(session, list(tags), path)
        except Exception as error:
            session.close()
            raise ServingError.from_exception(error) from None
        graph.finalize()  # Serving never adds ops: a request cannot grow the graph.
        return cls(name=name, version=version, path=path, session=session,
                   meta_graph=meta_graph)

    @property
    def signature_defs(self):
        return self.meta_graph.signature_def

    def _callable(self, signature_name: str, input_aliases: tuple[str, ...]):
        """A Session callable feeding input_aliases and fetching every output, cached."""
        key = (signature_name, input_aliases)
        with self._lock:
            if self._session is None:
                raise ServingError(grpc.StatusCode.UNAVAILABLE,
                                   f"{servable_id(self.name, self.version)} was unloaded")
            if key not in self._callables:
                signature = self.signature_defs[signature_name]
                outputs = sorted(signature.outputs)
                run = self._session.make_callable(
                    [signature.outputs[alias].name for alias in outputs],
                    feed_list=[signature.inputs[alias].name for alias in input_aliases],
                    accept_options=True)
                self._callables[key] = (run, outputs)
            return self._callables[key]

    def run(self, signature_name: str, inputs: dict[str, np.ndarray], *,
            timeout: float | None = None) -> dict[str, np.ndarray]:
        """Session::Run of a signature: feeds inputs by tensor name, fetches every output.

        Args:
          signature_name: a key of signature_defs.
          inputs: alias -> array; converted to the dtype the SignatureDef declares.
          timeout: seconds; passed as RunOptions.timeout_in_ms, as TF Serving passes the
            request's deadline, so the session stops the work when it runs out.

        Raises:
          ServingError: TensorFlow op errors keep their code (InvalidArgumentError ->
            INVALID_ARGUMENT) and message; argument errors are INVALID_ARGUMENT.
        """
        import tensorflow as tf

        signature = self.signature_defs[signature_name]
        aliases = tuple(sorted(inputs))
        try:
            feeds = [np.asarray(inputs[alias], dtype=tf.dtypes.as_dtype(
                signature.inputs[alias].dtype).as_numpy_dtype) for alias in aliases]
            run, outputs = self._callable(signature_name, aliases)
            options = tf.compat.v1.RunOptions()
            if timeout is not None:
                options.timeout_in_ms = max(1, int(timeout * 1000))
            values = run(*feeds, options=options)
        except tf.errors.OpError as error:
            raise ServingError.from_exception(error) from None
        except (TypeError, ValueError) as error:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, str(error)) from None
        return dict(zip(outputs, values))

    def close(self) -> None:
        """Closes the session; runs after close fail with UNAVAILABLE. Idempotent."""
        with self._lock:
            session, self._session = self._session, None
            self._callables.clear()
        if session is not None:
            session.close()  # Frees the variables and the graph's kernels.
        logging.debug("Released %s", servable_id(self.name, self.version))
