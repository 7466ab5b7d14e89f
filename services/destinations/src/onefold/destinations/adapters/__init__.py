"""Outbound: the read model, the kinds of destination (targets), the consent client."""
