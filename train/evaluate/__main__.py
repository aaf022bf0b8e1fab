"""Top-1/top-5, per-class accuracy and a confusion matrix for a trained model.

Usage:
    python -m train.evaluate --model_dir=runs/cars --data_dir=car_data [--split=test]
"""

from __future__ import annotations

import sys

from absl import app, flags

from serving import tf_noise

_MODEL_DIR = flags.DEFINE_string("model_dir", None, "Training output directory.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Class-per-folder dataset.")
_SPLIT = flags.DEFINE_enum("split", None, ["train", "val", "test"], "Default: test, else val.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Inference batch size.", lower_bound=1)

flags.mark_flags_as_required(["model_dir", "data_dir"])


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from train.evaluate import evaluate_model
    from train.rundir import CONFUSION_FILE

    try:
        results = evaluate_model(_MODEL_DIR.value, _DATA_DIR.value, split=_SPLIT.value,
                                 batch_size=_BATCH_SIZE.value)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    split = results["split"]
    worst = sorted(results["per_class_accuracy"].items(), key=lambda kv: kv[1])[:5]
    print(f"{split}: {results['examples']} images, top-1 {results['top1']:.4f}, "
          f"top-5 {results['top5']:.4f}")
    print("lowest per-class accuracy: " + ", ".join(f"{n} {a:.2f}" for n, a in worst))
    print(f"confusion matrix: {_MODEL_DIR.value}/{CONFUSION_FILE.format(split=split)}")
    return 0


def run() -> None:
    """Console-script entry point."""
    tf_noise.install()  # Before anything imports TensorFlow.
    app.run(main)


if __name__ == "__main__":
    run()
