"""Read models of the journeys service, fed by its events."""
