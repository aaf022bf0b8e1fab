"""ImageNet-1k class names (shipped with the package) and top-k decoding of predictions.

`imagenet_classes.txt` is the standard ILSVRC2012 class list in index order, one class per
line with its synonyms comma-separated (the copy Debian's opencv-doc ships).
"""

from __future__ import annotations

import functools
import importlib.resources

import numpy as np


@functools.lru_cache(maxsize=1)
def class_names() -> tuple[str, ...]:
    """The 1000 ImageNet class names, index-aligned with the classifier's outputs."""
    text = importlib.resources.files(__package__).joinpath("imagenet_classes.txt").read_text(
        encoding="utf-8"
    )
    names = tuple(line.strip() for line in text.splitlines() if line.strip())
    if len(names) != 1000:
        raise ValueError(f"imagenet_classes.txt holds {len(names)} names, expected 1000")
    return names


def top_k(probabilities: np.ndarray, k: int = 5) -> list[list[tuple[int, str, float]]]:
    """Decodes [batch, 1000] probabilities to per-image lists of (index, name, score)."""
    probabilities = np.asarray(probabilities)
    if probabilities.ndim != 2 or probabilities.shape[1] != 1000:
        raise ValueError(f"expected [batch, 1000] probabilities, got {probabilities.shape}")
    names = class_names()
    order = np.argsort(-probabilities, axis=1)[:, :k]
    return [
        [(int(i), names[i], float(row[i])) for i in idx]
        for row, idx in zip(probabilities, order)
    ]
