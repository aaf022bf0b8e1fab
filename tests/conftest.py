"""Shared test setup: quiet TensorFlow, CPU only, no network-dependent behaviour."""

import os

# Before TensorFlow is imported anywhere: keep logs readable and never touch a GPU.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
