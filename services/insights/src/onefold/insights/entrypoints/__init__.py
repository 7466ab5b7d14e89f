"""The thin edges of insights: gRPC and its stream consumers."""
