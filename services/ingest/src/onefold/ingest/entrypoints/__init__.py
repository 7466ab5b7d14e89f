"""Thin adapters from the outside world (gRPC, NATS) to the ingest application."""
