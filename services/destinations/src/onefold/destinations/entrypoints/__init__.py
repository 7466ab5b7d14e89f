"""Entry points: the gRPC servicer and the upstream subscribers."""
