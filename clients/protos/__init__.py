"""TF Serving's API messages for clients/, without TensorFlow or tensorflow-serving-api.

The classes are built from the descriptor of effnet_serving_wire.proto (package
`effnet_serving.wire`), which is wire-compatible with the official messages: same field
numbers and types. See regenerate.py for why a descriptor rather than protoc's *_pb2.py.

    from clients import protos

    request = protos.PredictRequest()
    request.model_spec.name = "effnet"
    tensor = request.inputs["image_bytes"]
    tensor.dtype = protos.DataType.Value("DT_STRING")
    tensor.tensor_shape.dim.add(size=1)
    tensor.string_val.append(open("cat.jpg", "rb").read())
    wire = request.SerializeToString()  # What a tensorflow.serving.PredictRequest parses.
"""

from __future__ import annotations

# any_pb2 and wrappers_pb2 register the well-known types our file imports in the default pool.
from google.protobuf import any_pb2, descriptor_pool, message_factory, wrappers_pb2  # noqa: F401
from google.protobuf.internal import enum_type_wrapper

from clients.protos.wire_descriptor import FILE_DESCRIPTOR

PACKAGE = "effnet_serving.wire"
FILE_NAME = "effnet_serving_wire.proto"
# gRPC method paths are the official services': the server routes on them, not on our package.
PREDICTION_SERVICE = "/tensorflow.serving.PredictionService/"
MODEL_SERVICE = "/tensorflow.serving.ModelService/"
SIGNATURE_DEF_MAP_TYPE = "tensorflow.serving.SignatureDefMap"


def _file_descriptor():
    pool = descriptor_pool.Default()
    try:
        return pool.FindFileByName(FILE_NAME)
    except KeyError:
        pool.AddSerializedFile(FILE_DESCRIPTOR)
        return pool.FindFileByName(FILE_NAME)


def _message_class(descriptor):
    # GetMessageClass exists from protobuf 4.21 on; MessageFactory.GetPrototype before that.
    get_class = getattr(message_factory, "GetMessageClass", None)
    if get_class is not None:
        return get_class(descriptor)
    return message_factory.MessageFactory(descriptor.file.pool).GetPrototype(descriptor)


_FILE = _file_descriptor()
_MESSAGES = {name: _message_class(d) for name, d in _FILE.message_types_by_name.items()}

DataType = enum_type_wrapper.EnumTypeWrapper(_FILE.enum_types_by_name["DataType"])

TensorShapeProto = _MESSAGES["TensorShapeProto"]
TensorProto = _MESSAGES["TensorProto"]
BytesList = _MESSAGES["BytesList"]
FloatList = _MESSAGES["FloatList"]
Int64List = _MESSAGES["Int64List"]
Feature = _MESSAGES["Feature"]
Features = _MESSAGES["Features"]
Example = _MESSAGES["Example"]
TensorInfo = _MESSAGES["TensorInfo"]
SignatureDef = _MESSAGES["SignatureDef"]
ModelSpec = _MESSAGES["ModelSpec"]
PredictRequest = _MESSAGES["PredictRequest"]
PredictResponse = _MESSAGES["PredictResponse"]
ExampleList = _MESSAGES["ExampleList"]
ExampleListWithContext = _MESSAGES["ExampleListWithContext"]
Input = _MESSAGES["Input"]
Class = _MESSAGES["Class"]
Classifications = _MESSAGES["Classifications"]
ClassificationResult = _MESSAGES["ClassificationResult"]
ClassificationRequest = _MESSAGES["ClassificationRequest"]
ClassificationResponse = _MESSAGES["ClassificationResponse"]
SignatureDefMap = _MESSAGES["SignatureDefMap"]
GetModelMetadataRequest = _MESSAGES["GetModelMetadataRequest"]
GetModelMetadataResponse = _MESSAGES["GetModelMetadataResponse"]
StatusProto = _MESSAGES["StatusProto"]
GetModelStatusRequest = _MESSAGES["GetModelStatusRequest"]
ModelVersionStatus = _MESSAGES["ModelVersionStatus"]
GetModelStatusResponse = _MESSAGES["GetModelStatusResponse"]
ModelVersionState = enum_type_wrapper.EnumTypeWrapper(
    ModelVersionStatus.DESCRIPTOR.enum_types_by_name["State"])
