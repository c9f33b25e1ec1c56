"""Generated protobuf and gRPC stubs of protos/microturn/v1 (make protos)."""
