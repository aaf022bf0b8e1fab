"""TF Serving configs (config/, docker/) and a local TF-Serving-compatible model server.

`python -m serving` speaks tensorflow_model_server's flags, gRPC services and REST API;
see serving/README.md.
"""
