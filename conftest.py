"""Fixtures for every test directory come from onefold.testing (real NATS, databases, services)."""

import atexit
import os
import shutil
import tempfile

# `onefold up` keeps key-encryption keys under $XDG_CONFIG_HOME/onefold/keys/: tests (and the
# processes they start) must write those into a temporary directory, never the user's own.
os.environ["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="onefold-test-config-")
atexit.register(shutil.rmtree, os.environ["XDG_CONFIG_HOME"], ignore_errors=True)

pytest_plugins = ["onefold.testing.fixtures"]
