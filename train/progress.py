"""Progress of long loops as Keras shows training: a bar with counts, time per step and ETA.

Drawn only when stdout is a terminal. In a log (CI, a Kubernetes pod, `| tee`) a redrawn bar
is noise, so nothing is printed and the callers' own summary lines stand alone.

Usage:
    for images, labels in progress.track(data.test, title="Scoring 3000 test images"):
        ...
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def on_terminal() -> bool:
    """Whether progress is drawn: stdout is a terminal."""
    return sys.stdout.isatty()


def track(items: Iterable[T], *, title: str, total: int | None = None,
          unit: str = "batch") -> Iterator[T]:
    """Yields items; on a terminal, prints title, then a keras.utils.Progbar that advances
    as each item is finished with (when the next one is asked for).

    Args:
      items: what to iterate, e.g. a tf.data.Dataset of batches.
      title: one line naming the work, printed above the bar.
      total: how many items are expected; default len(items), which a tf.data.Dataset
        has when its cardinality is known (else no ETA is shown). If fewer come, the bar
        ends where they stop.
      unit: what an item is, for the time per item ("batch" -> "120ms/batch").
    """
    if not on_terminal():
        yield from items
        return
    import keras

    if total is None:
        try:
            total = len(items)
        except TypeError:  # A generator, or a dataset of unknown or infinite size.
            pass
    print(title, flush=True)
    bar = keras.utils.Progbar(total, unit_name=unit)
    done = 0
    for item in items:
        yield item
        done += 1
        bar.update(done)
    if total is None or done < total:
        bar.update(done, finalize=True)
