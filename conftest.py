"""Fixtures for every test directory come from onefold.testing (real NATS, databases, services)."""

import atexit
import os
import shutil
import tempfile

# `onefold up` keeps key-encryption keys under $XDG_CONFIG_HOME/onefold/keys/: tests (and the
# processes they start) must write those into a temporary directory, never the user's own.
os.environ["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="onefold-test-config-")
atexit.register(shutil.rmtree, os.environ["XDG_CONFIG_HOME"], ignore_errors=True)
# `onefold up` listens on 7460-7467 by default: a test's must take free ports instead, so the suite runs
# beside a developer's own instance and beside other tests (a test wanting fixed ports passes them).
os.environ["ONEFOLD_PORTS__BASE"] = "0"

pytest_plugins = ["onefold.testing.fixtures"]
