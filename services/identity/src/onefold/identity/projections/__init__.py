"""Read models of the identity service, fed by its events."""
