"""Use cases of the ingest service (load -> decide -> append). Filled in by the ingest issue."""
