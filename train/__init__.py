"""Two-phase EfficientNet fine-tuning: backbones, class-per-folder data, training, evaluation."""
