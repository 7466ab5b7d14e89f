"""onefold.eventlog."""
