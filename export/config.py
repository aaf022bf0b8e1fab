"""What an export does (ExportConfig): typed, validated once; its effective settings are
recorded in every exported version (export_config.json).

The one declaration of the export options: python -m export takes its flags' defaults from
ExportConfig's fields. This module loads no TensorFlow, so the entry point can define its
flags before TensorFlow is loaded; export.exporter does the work.

Usage:
    config = ExportConfig(model_dir="runs/cars", export_base="models/cars").validated()
"""

from __future__ import annotations

import dataclasses

from export import publish
from train.config import DEFAULT_MAX_JPEG_SCANS, DEFAULT_MAX_PIXELS


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """What to export, where, and how the serving graph behaves.

    Attributes:
      model_dir: a finished training run (model.keras, labels.txt, config.json).
      export_base: the TF Serving base path, e.g. models/cars; versions go in it.
      version: the version number; None = one more than the newest published.
      top_k: classes/scores per image in the predict and classify outputs.
      keep_versions: after publishing, delete all but this many newest versions (0 = keep all).
      max_pixels: reject images whose header declares more pixels, before decoding.
      jpeg_dct_scaling: decode large JPEGs at 1/2..1/8 scale in the DCT domain.
      max_jpeg_scans: reject JPEGs with more scans (decoding passes), before decoding.
      warmup_images: encoded images for the warmup file; default: a few from the training
        run's dataset if it is still there, else a synthetic photo.
      warmup_batch_sizes: batch sizes of the warmup requests.
    """

    model_dir: str
    export_base: str
    version: int | None = None
    top_k: int = 5
    keep_versions: int = 0
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    jpeg_dct_scaling: bool = True
    max_jpeg_scans: int | None = DEFAULT_MAX_JPEG_SCANS
    warmup_images: tuple[str, ...] = ()
    warmup_batch_sizes: tuple[int, ...] = (1, 8)

    def validated(self) -> ExportConfig:
        if not self.model_dir or not self.export_base:
            raise ValueError("model_dir and export_base are required")
        if self.version is not None:
            publish.check_new_version(self.export_base, self.version)
        if self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if self.keep_versions < 0:
            raise ValueError(f"keep_versions must be >= 0, got {self.keep_versions}")
        for name in ("max_pixels", "max_jpeg_scans"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not self.warmup_batch_sizes or min(self.warmup_batch_sizes) < 1:
            raise ValueError(f"warmup batch sizes must be positive: {self.warmup_batch_sizes}")
        return self
