"""Fixtures for every test directory come from onefold.testing (real NATS, databases, services)."""

pytest_plugins = ["onefold.testing.fixtures"]
