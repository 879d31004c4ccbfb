"""The Open Inference Protocol's gRPC API: KServe's grpc_predict_v2.proto (Apache-2.0,
vendored) and the modules generated from it by scripts/gen-oip-proto.sh (committed)."""
