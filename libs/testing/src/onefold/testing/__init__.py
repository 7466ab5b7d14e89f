"""onefold.testing: fixtures for tests that talk to real things (nats-server, SQLite, PostgreSQL,
service processes). Loaded for every test directory by the root conftest.py."""
