"""Use cases of the consent service (load -> decide -> append). Filled in by the consent issue."""
