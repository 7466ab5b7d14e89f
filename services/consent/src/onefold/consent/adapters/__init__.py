"""Consent's clients of other services' declared contracts."""
