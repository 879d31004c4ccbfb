#!/bin/sh
# Regenerates the Open Inference Protocol's gRPC modules from the vendored proto:
#   server/api/oip_proto/grpc_predict_v2_pb2.py, _pb2.pyi, _pb2_grpc.py
# They are committed, so installing CheXray needs neither protoc nor grpcio-tools. Run from
# the repository root: scripts/gen-oip-proto.sh
#
# grpcio-tools 1.75.1 is pinned on purpose: its protoc writes protobuf 6.31.1 code, which
# runs on protobuf 6.31.1 up to 7.x (tritonclient needs protobuf < 7, onnx >= 6.31.1), and
# its gRPC stubs need grpcio >= 1.75.1 (pyproject.toml says so).
#
# The messages are registered in a descriptor pool of their own, not protobuf's default
# one: the protocol's package name, `inference`, is also Triton's, and tritonclient's
# modules in the same process (the tests) would otherwise clash on every message name.
set -eu
TOOLS=${TOOLS:-$(mktemp -d)/grpc-tools}
OUT=server/api/oip_proto
python3 -m venv "$TOOLS"
"$TOOLS/bin/pip" install -q 'grpcio-tools==1.75.1'
"$TOOLS/bin/python" -m grpc_tools.protoc -I . --python_out=. --pyi_out=. --grpc_python_out=. \
    "$OUT/grpc_predict_v2.proto"
sed -i 's/^DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile(/POOL = _descriptor_pool.DescriptorPool()  # not the default pool: see scripts\/gen-oip-proto.sh\nDESCRIPTOR = POOL.AddSerializedFile(/' \
    "$OUT/grpc_predict_v2_pb2.py"
grep -q '^POOL = _descriptor_pool.DescriptorPool()' "$OUT/grpc_predict_v2_pb2.py"
echo "generated $OUT/grpc_predict_v2_pb2.py, _pb2.pyi, _pb2_grpc.py"
