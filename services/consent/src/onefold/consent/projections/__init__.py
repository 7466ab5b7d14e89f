"""Read models of the consent service, fed by its events."""
