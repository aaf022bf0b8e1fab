"""Exports a training run as a new version of a TF Serving model.

Usage:
    python -m export --model_dir=runs/cars --export_base=models/cars
    # -> models/cars/1 (then 2, 3, ...); TF Serving: --model_base_path=$PWD/models/cars
    python -m export --model_dir=runs/cars --export_base=models/cars --version=7 \\
        --top_k=3 --keep_versions=2 --warmup_images=a.jpg,b.jpg

A version appears atomically (fully written, verified and warmed up) or not at all, and
an existing version is never overwritten.
"""

from __future__ import annotations

import sys

from absl import app, flags

from serving import tf_noise

_MODEL_DIR = flags.DEFINE_string("model_dir", None, "A finished training run (python -m train).")
_EXPORT_BASE = flags.DEFINE_string("export_base", None, "TF Serving base path: models/NAME.")
_VERSION = flags.DEFINE_integer("version", None, "Version number; default newest + 1.")
_TOP_K = flags.DEFINE_integer("top_k", 5, "Classes and scores returned per image.")
_KEEP = flags.DEFINE_integer("keep_versions", 0, "Prune to this many newest versions (0 = all).")
_MAX_PIXELS = flags.DEFINE_integer(
    "max_pixels", 50_000_000, "Reject images declaring more pixels (0 = no limit).")
_DCT = flags.DEFINE_boolean("jpeg_dct_scaling", True, "Decode big JPEGs at reduced DCT scale.")
_MAX_JPEG_SCANS = flags.DEFINE_integer(
    "max_jpeg_scans", 64, "Reject JPEGs with more scans, each a full decoding pass "
    "(progressive JPEGs have about 10; 0 = no limit).")
_WARMUP_IMAGES = flags.DEFINE_list(
    "warmup_images", [], "Images for the warmup requests; default: the run's dataset.")
_WARMUP_BATCHES = flags.DEFINE_list("warmup_batch_sizes", ["1", "8"], "Warmup batch sizes.")

flags.mark_flags_as_required(["model_dir", "export_base"])


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from export import exporter

    try:
        config = exporter.ExportConfig(
            model_dir=_MODEL_DIR.value, export_base=_EXPORT_BASE.value, version=_VERSION.value,
            top_k=_TOP_K.value, keep_versions=_KEEP.value,
            max_pixels=_MAX_PIXELS.value or None, jpeg_dct_scaling=_DCT.value,
            max_jpeg_scans=_MAX_JPEG_SCANS.value or None,
            warmup_images=tuple(_WARMUP_IMAGES.value),
            warmup_batch_sizes=tuple(_parse_ints(_WARMUP_BATCHES.value, "warmup_batch_sizes")),
        ).validated()
        result = exporter.export_model(config)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"Exported version {result.version}: {result.path}")
    if result.pruned:
        print(f"Pruned versions: {', '.join(map(str, result.pruned))}")
    return 0


def _parse_ints(values: list[str], name: str) -> list[int]:
    try:
        return [int(v) for v in values]
    except ValueError:
        raise ValueError(f"{name} must be integers, got {values}") from None


def run() -> None:
    """Console-script entry point."""
    tf_noise.install()  # Before anything imports TensorFlow.
    app.run(main)


if __name__ == "__main__":
    run()
