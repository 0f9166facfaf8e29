"""The gRPC service of a department node: .proto sources and the generated code."""
