"""GetModelMetadata and GetModelStatus, as TF Serving answers them
(servables/tensorflow/get_model_metadata_impl.cc, model_servers/get_model_status_impl.cc).

    response = metadata.get_model_metadata(manager, request)
"""

from __future__ import annotations

from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2

from serving.errors import invalid_argument
from serving.manager import ModelManager
from serving.signatures import require_model_spec

SIGNATURE_DEF_FIELD = "signature_def"  # GetModelMetadataImpl::kSignatureDef


def get_model_metadata(manager: ModelManager,
                       request: get_model_metadata_pb2.GetModelMetadataRequest,
                       ) -> get_model_metadata_pb2.GetModelMetadataResponse:
    """The signature defs of the version the request's ModelSpec resolves to.

    Raises:
      ServingError: INVALID_ARGUMENT for a request without ModelSpec or with a metadata
        field other than signature_def; what the manager raises for the version.
    """
    require_model_spec(request)
    if not request.metadata_field:
        raise invalid_argument(
            "GetModelMetadataRequest must specify at least one metadata_field")
    for field in request.metadata_field:
        if field != SIGNATURE_DEF_FIELD:
            raise invalid_argument(f"Metadata field {field} is not supported")
    with manager.servable(request.model_spec) as servable:
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for name, signature in servable.signature_defs.items():
            signature_map.signature_def[name].CopyFrom(signature)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = servable.name
        response.model_spec.version.value = servable.version
        response.metadata[SIGNATURE_DEF_FIELD].Pack(signature_map)
        return response


def get_model_status(manager: ModelManager,
                     request: get_model_status_pb2.GetModelStatusRequest,
                     ) -> get_model_status_pb2.GetModelStatusResponse:
    """The states of the model's versions (or of the one the ModelSpec names).

    Raises:
      ServingError: INVALID_ARGUMENT without ModelSpec; NOT_FOUND for unknown versions.
    """
    require_model_spec(request)
    return manager.model_status(request.model_spec)
