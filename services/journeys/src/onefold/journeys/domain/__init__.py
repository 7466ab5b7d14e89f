"""The journeys domain: events folded into state, and the invariants that guard them. No I/O."""
