"""onefold.cli."""
