"""`python -m onefold.cli` is the `onefold` command."""

from onefold.cli.main import app

app()
