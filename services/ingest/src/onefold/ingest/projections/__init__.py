"""Read models of the ingest service, fed by its events."""
