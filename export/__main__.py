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

import dataclasses
import sys

from absl import app, flags

from export.config import ExportConfig
from serving import tf_noise

# Every ExportConfig field has a flag of its name taking the field's default (model_dir and
# export_base have none: required flags); _config_from_flags() builds the config from them.
_DEFAULTS = ExportConfig(model_dir="", export_base="")  # Only its defaults are read.
_MODEL_DIR = flags.DEFINE_string("model_dir", None, "A finished training run (python -m train).")
_EXPORT_BASE = flags.DEFINE_string("export_base", None, "TF Serving base path: models/NAME.")
_VERSION = flags.DEFINE_integer("version", _DEFAULTS.version, "Version number; default newest + 1.")
_TOP_K = flags.DEFINE_integer("top_k", _DEFAULTS.top_k, "Classes and scores returned per image.")
_KEEP = flags.DEFINE_integer(
    "keep_versions", _DEFAULTS.keep_versions, "Prune to this many newest versions (0 = all).")
_MAX_PIXELS = flags.DEFINE_integer(
    "max_pixels", _DEFAULTS.max_pixels, "Reject images declaring more pixels (0 = no limit).")
_DCT = flags.DEFINE_boolean(
    "jpeg_dct_scaling", _DEFAULTS.jpeg_dct_scaling, "Decode big JPEGs at reduced DCT scale.")
_MAX_JPEG_SCANS = flags.DEFINE_integer(
    "max_jpeg_scans", _DEFAULTS.max_jpeg_scans, "Reject JPEGs with more scans, each a full "
    "decoding pass (progressive JPEGs have about 10; 0 = no limit).")
_WARMUP_IMAGES = flags.DEFINE_list(
    "warmup_images", list(_DEFAULTS.warmup_images),
    "Images for the warmup requests; default: the run's dataset.")
_WARMUP_BATCHES = flags.DEFINE_list(
    "warmup_batch_sizes", [str(size) for size in _DEFAULTS.warmup_batch_sizes],
    "Warmup batch sizes.")

flags.mark_flags_as_required(["model_dir", "export_base"])


def _config_from_flags() -> ExportConfig:
    """The flags as an ExportConfig (not yet validated); where a flag's type is not its
    field's, the conversion is here."""
    values = {field.name: flags.FLAGS[field.name].value
              for field in dataclasses.fields(ExportConfig)}
    return ExportConfig(**values | {
        "max_pixels": values["max_pixels"] or None,  # Flag 0: no limit.
        "max_jpeg_scans": values["max_jpeg_scans"] or None,
        "warmup_images": tuple(values["warmup_images"]),
        "warmup_batch_sizes": tuple(_parse_ints(values["warmup_batch_sizes"],
                                                "warmup_batch_sizes"))})


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from export import exporter

    try:
        config = _config_from_flags().validated()
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
