"""Use cases of the segments service (load -> decide -> append). Filled in by the segments issue."""
