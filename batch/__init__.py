"""Batch scoring with Apache Beam RunInference: a folder (or bucket) of images -> predictions.

    python -m batch --model=models/cars --input='photos/*.jpg' --output=out/cars

The same pipeline runs locally (Beam's FnApiRunner) and on Dataflow, Flink or Spark
(batch/README.md). Images are scored in-process by the exported version, loaded as TF
Serving loads it, or remotely by a running TF Serving (`--server=grpc://host:8500`).
"""
