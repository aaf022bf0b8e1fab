"""Backbone sanity checks from the command line.

`classify` runs a backbone WITH its 1000-way ImageNet head on image files and prints the
top-5 ImageNet classes of each, which shows at a glance whether pretrained weights loaded
correctly (a cat photo should come out as a kind of cat). `list` shows every backbone.

Usage:
    python -m train.backbones classify --backbone=lite0 cat.jpg coffee.png
    python -m train.backbones list
"""

from __future__ import annotations

import sys

from absl import app, flags

from serving import tf_noise

_BACKBONE = flags.DEFINE_string("backbone", "lite0", "Backbone name (see `list`).")
_WEIGHTS = flags.DEFINE_string(
    "weights", "imagenet", '"imagenet", "none", or a Keras weights file with the ImageNet head.'
)
_TOP_K = flags.DEFINE_integer("top_k", 5, "How many classes to print per image.", lower_bound=1)

_USAGE = "usage: python -m train.backbones {classify IMAGE... | list} [--backbone=NAME]"


def main(argv: list[str]) -> int:
    # Heavy imports after flag parsing, so `--help` is instant.
    from train import backbones
    from train.backbones import sanity

    if len(argv) < 2 or argv[1] not in ("classify", "list"):
        raise app.UsageError(_USAGE)
    if argv[1] == "list":
        for name in backbones.list_backbones():
            info = backbones.get_info(name)
            print(f"{name:8s} {info.family:6s} {info.input_size:4d}px  {info.normalization}")
        return 0
    images = argv[2:]
    if not images:
        raise app.UsageError("classify needs at least one image file\n" + _USAGE)
    try:
        results = sanity.classify_files(
            images, backbone=_BACKBONE.value, weights=_WEIGHTS.value, k=_TOP_K.value
        )
    except (ValueError, OSError, backbones.WeightsUnavailableError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for path, top in zip(images, results):
        print(path)
        for index, name, score in top:
            print(f"  {score:6.1%}  {index:4d}  {name}")
    return 0


def run() -> None:
    """Console-script entry point."""
    tf_noise.install()  # Before anything imports TensorFlow.
    app.run(main)


if __name__ == "__main__":
    run()
