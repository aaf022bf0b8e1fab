"""Serving-signature cost per image: small vs phone-size JPEGs, with and without DCT scaling.

    python -m bench.export                   # lite0 with its ImageNet head at 224 px
    python -m bench.export --batch=4 --repeats=5

Side by side in one run, on the same model: serving_default (decode + resize + model)
per image for a 640x480 and a 4000x3000 photo-like JPEG, with DCT-domain downscaling on
and off; the decode/resize alone; the model alone (predict_images on ready pixels), hence
the share of preprocessing in the total. Results are recorded in BENCHMARKS.md.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import statistics
import time

from absl import app, flags

_IMAGE_SIZE = flags.DEFINE_integer("image_size", 224, "Model input size.")
_BATCH = flags.DEFINE_integer("batch", 8, "Images per request.")
_REPEATS = flags.DEFINE_integer("repeats", 7, "Timed calls per measurement (median kept).")
_JSON = flags.DEFINE_string("json", None, "Also write the results to this JSON file.")

SIZES = {"640x480": (640, 480), "4000x3000": (4000, 3000)}


def _median_seconds(function, repeats: int) -> float:
    function()  # Tracing and first-call allocation are not what is measured.
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_benchmark(image_size: int, batch: int, repeats: int) -> dict:
    import tensorflow as tf

    from export import signatures, warmup
    from train import backbones
    from train.backbones import imagenet

    model = backbones.build_backbone("lite0", weights="imagenet", input_size=image_size,
                                     include_top=True).model
    photos = {name: warmup.synthetic_photo(w, h) for name, (w, h) in SIZES.items()}
    results = {"machine": f"{platform.machine()}, {os.cpu_count()} cores",
               "tensorflow": tf.__version__, "image_size": image_size, "batch": batch,
               "jpeg_bytes": {name: len(blob) for name, blob in photos.items()}, "ms": {}}
    pixels = tf.zeros([batch, image_size, image_size, 3])
    for dct in (True, False):
        module = signatures.ServingModule(model, labels=imagenet.class_names(),
                                          image_size=image_size, jpeg_dct_scaling=dct)
        decode = tf.function(module.decode_images)
        if dct:
            model_ms = _median_seconds(functools.partial(module.predict_images, pixels),
                                       repeats)
            results["ms"]["model_only"] = 1000 * model_ms / batch
        for name, blob in photos.items():
            request = tf.constant([blob] * batch)
            mode = "dct" if dct else "full"
            total = _median_seconds(functools.partial(module.serve_image_bytes, request),
                                    repeats)
            decoded = _median_seconds(functools.partial(decode, request), repeats)
            results["ms"][f"{name}_{mode}_total"] = 1000 * total / batch
            results["ms"][f"{name}_{mode}_decode"] = 1000 * decoded / batch
    ms = results["ms"]
    results["ratios"] = {
        "12mp_vs_small_with_dct": ms["4000x3000_dct_total"] / ms["640x480_dct_total"],
        "12mp_vs_small_without_dct": ms["4000x3000_full_total"] / ms["640x480_full_total"],
        "12mp_dct_speedup": ms["4000x3000_full_total"] / ms["4000x3000_dct_total"],
        "small_dct_speedup": ms["640x480_full_total"] / ms["640x480_dct_total"],
        "preprocessing_share_small_dct": ms["640x480_dct_decode"] / ms["640x480_dct_total"],
        "preprocessing_share_12mp_dct": ms["4000x3000_dct_decode"] / ms["4000x3000_dct_total"],
        "preprocessing_share_12mp_full": ms["4000x3000_full_decode"] / ms["4000x3000_full_total"],
    }
    return results


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    results = run_benchmark(_IMAGE_SIZE.value, _BATCH.value, _REPEATS.value)
    print(f"lite0 at {results['image_size']} px, batch {results['batch']}, "
          f"{results['machine']}, TF {results['tensorflow']}")
    print(f"JPEG sizes: {results['jpeg_bytes']}")
    print(f"{'ms per image':<28}{'total':>10}{'decode':>10}")
    for name in SIZES:
        for mode in ("dct", "full"):
            print(f"{name + ' ' + mode:<28}{results['ms'][f'{name}_{mode}_total']:>10.2f}"
                  f"{results['ms'][f'{name}_{mode}_decode']:>10.2f}")
    print(f"{'model only (predict_images)':<28}{results['ms']['model_only']:>10.2f}")
    for name, value in results["ratios"].items():
        print(f"{name:<34}{value:>8.2f}")
    if _JSON.value:
        with open(_JSON.value, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    app.run(main)
