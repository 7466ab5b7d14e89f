"""Read models of the segments service, fed by its events."""
