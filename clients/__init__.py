"""gRPC and REST clients for TF Serving, without a TensorFlow dependency (planned)."""
