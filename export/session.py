"""Runs an exported version the way TF Serving will: a TF1 session bundle.

TF Serving imports the MetaGraph tagged `serve` into a Session, runs the saver's restore
op on variables/ and the init op (with the asset files' paths fed in), then answers each
request with Session::Run, feeding and fetching the tensor names of the SignatureDef.
tf.saved_model.load restores through the TF2 object graph instead and forgives exports
that TF Serving cannot run, so every check of an export goes through this.

Usage:
    with load("models/cars/1") as model:
        outputs = model.run("serving_default", {"image_bytes": np.array([jpeg], object)})
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import numpy as np
import tensorflow as tf
from tensorflow.python.util import deprecation

SERVE_TAGS = ("serve",)


class SessionModel:
    """A SavedModel loaded into its own graph and session."""

    def __init__(self, session: tf.compat.v1.Session, meta_graph):
        self.session = session
        self.meta_graph = meta_graph

    @property
    def signature_defs(self):
        return self.meta_graph.signature_def

    def run(self, signature_name: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Feeds inputs (by alias) and fetches every output of a signature.

        Raises:
          KeyError: no such signature or input alias.
          tf.errors.OpError: the graph rejects the inputs.
        """
        signature = self.signature_defs[signature_name]
        feeds = {signature.inputs[alias].name: value for alias, value in inputs.items()}
        return self.session.run({alias: info.name for alias, info in signature.outputs.items()},
                                feed_dict=feeds)


@contextlib.contextmanager
def load(path: str | os.PathLike, tags=SERVE_TAGS) -> Iterator[SessionModel]:
    """The SavedModel at path, restored and initialised in a new session (closed on exit).

    Raises:
      RuntimeError, OSError or tf.errors.OpError: TF Serving would fail to load it too.
    """
    graph = tf.Graph()
    # Not `with Session()`: that would make its graph the default for the caller's code.
    session = tf.compat.v1.Session(graph=graph)
    try:
        # The v1 loader's deprecation notice points to tf.saved_model.load: wrong here.
        with graph.as_default(), deprecation.silence():
            meta_graph = tf.compat.v1.saved_model.loader.load(session, list(tags),
                                                              os.fspath(path))
        yield SessionModel(session, meta_graph)
    finally:
        session.close()
