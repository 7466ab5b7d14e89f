"""Adapters of the ingest service: its read model."""
