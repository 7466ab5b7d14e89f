"""The destinations service: what the CDP knows, delivered back to the business's own systems."""
