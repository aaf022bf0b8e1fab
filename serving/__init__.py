"""TF Serving configs and a local TF-Serving-compatible gRPC/REST server (planned)."""
