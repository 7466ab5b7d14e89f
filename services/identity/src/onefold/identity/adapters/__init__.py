"""Adapters of the identity service: its read model (the projection of its log)."""
