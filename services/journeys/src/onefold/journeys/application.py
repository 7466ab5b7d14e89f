"""Use cases of the journeys service (load -> decide -> append). Filled in by the journeys issue."""
