"""What the clients return: the same plain Python values for gRPC and REST.

    from clients import GrpcClient

    with GrpcClient("localhost:8500", model="effnet") as client:
        for p in client.predict(["cat.jpg", "dog.jpg"]):
            print(p.label, p.score, p.top(3))
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Prediction:
    """Top-k classes for one image, best first.

    Attributes:
        labels: class names, best first.
        scores: their scores (probabilities for our models), same order.
        class_ids: class indices when the signature returns them (predict), else ().
    """

    labels: tuple[str, ...]
    scores: tuple[float, ...]
    class_ids: tuple[int, ...] = ()

    @property
    def label(self) -> str:
        """The top-1 label."""
        return self.labels[0]

    @property
    def score(self) -> float:
        """The top-1 score."""
        return self.scores[0]

    def top(self, k: int | None = None) -> list[tuple[str, float]]:
        """[(label, score), ...] for the best k (all when k is None)."""
        return list(zip(self.labels, self.scores))[:k]

    def truncated(self, k: int | None) -> Prediction:
        """The same prediction with at most k classes."""
        if k is None:
            return self
        return Prediction(self.labels[:k], self.scores[:k], self.class_ids[:k])

    def to_dict(self) -> dict:
        """JSON-ready: {"labels": [...], "scores": [...], "class_ids": [...]}."""
        return {"labels": list(self.labels), "scores": list(self.scores),
                "class_ids": list(self.class_ids)}


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """A signature input or output: dtype name ("DT_STRING") and shape.

    shape is None for an unknown rank; unknown dimensions are -1.
    """

    dtype: str
    shape: tuple[int, ...] | None


@dataclasses.dataclass(frozen=True)
class Signature:
    """One SignatureDef: method ("tensorflow/serving/predict" ...), inputs and outputs."""

    method_name: str
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]


@dataclasses.dataclass(frozen=True)
class ModelMetadata:
    """GetModelMetadata's answer: the version that answered and its signatures."""

    name: str
    version: int
    signatures: dict[str, Signature]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class VersionStatus:
    """One version's state ("AVAILABLE", "LOADING", "END", ...) and its error, if any."""

    version: int
    state: str
    error_code: str = "OK"
    error_message: str = ""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
