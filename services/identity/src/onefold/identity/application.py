"""Use cases of the identity service (load -> decide -> append). Filled in by the identity issue."""
