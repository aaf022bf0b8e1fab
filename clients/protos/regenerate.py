"""Regenerates wire_descriptor.py from effnet_serving_wire.proto (needs grpcio-tools).

    pip install grpcio-tools
    python -m clients.protos.regenerate           # rewrites clients/protos/wire_descriptor.py
    python -m clients.protos.regenerate --check   # exit 1 if the committed file is stale

Why a serialized descriptor rather than protoc's *_pb2.py: the message classes are built
from it at import (clients/protos/__init__.py) with APIs that exist in every protobuf
runtime from 3.20 to 7.x. protoc's Python output from a recent protoc starts with a runtime
version check (`ValidateProtobufRuntimeVersion`) that refuses older protobuf runtimes,
which would force apps onto the protobuf the generator happened to ship with. The .proto
file stays the source of truth; tests/test_clients_wire.py checks that regenerating
yields the committed file byte for byte.
"""

from __future__ import annotations

import hashlib
import pathlib
import subprocess
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
PROTO = "effnet_serving_wire.proto"
OUTPUT = HERE / "wire_descriptor.py"

_HEADER = '''"""Generated from {proto}. DO NOT EDIT: python -m clients.protos.regenerate

The serialized google.protobuf.FileDescriptorProto of {proto};
clients/protos/__init__.py builds the message classes from it.
"""

PROTO_SHA256 = "{sha}"

FILE_DESCRIPTOR = (
'''


def _compile(proto_dir: pathlib.Path) -> bytes:
    """Runs grpcio-tools' protoc; returns the serialized FileDescriptorProto."""
    try:
        import grpc_tools
        from google.protobuf import descriptor_pb2
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise RuntimeError("regenerating needs grpcio-tools: pip install grpcio-tools") from error
    # The well-known types (any.proto, wrappers.proto) ship inside grpc_tools.
    include = pathlib.Path(grpc_tools.__file__).resolve().parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp) / "wire.pb"
        command = [sys.executable, "-m", "grpc_tools.protoc", f"--proto_path={proto_dir}",
                   f"--proto_path={include}", f"--descriptor_set_out={out}", PROTO]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"protoc failed:\n{result.stderr}")
        descriptor_set = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    (file_proto,) = descriptor_set.file
    return file_proto.SerializeToString(deterministic=True)


def _chunks(data: bytes, width: int = 88):
    """Splits data into pieces whose Python literals fit in `width` columns."""
    start = 0
    while start < len(data):
        end = start + 1
        while end < len(data) and len(repr(data[start:end + 1])) <= width:
            end += 1
        yield data[start:end]
        start = end


def render(proto_dir: pathlib.Path = HERE) -> str:
    """The text of wire_descriptor.py for the .proto file in proto_dir."""
    serialized = _compile(proto_dir)
    sha = hashlib.sha256((proto_dir / PROTO).read_bytes()).hexdigest()
    lines = [_HEADER.format(proto=PROTO, sha=sha)]
    lines.extend(f"    {chunk!r}\n" for chunk in _chunks(serialized))
    lines.append(")\n")
    return "".join(lines)


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if OUTPUT.read_text() != text:
            print(f"{OUTPUT} is stale: run python -m clients.protos.regenerate", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
