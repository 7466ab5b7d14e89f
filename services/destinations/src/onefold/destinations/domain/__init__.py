"""Pure rules of the destinations service: definitions, routing, retries."""
