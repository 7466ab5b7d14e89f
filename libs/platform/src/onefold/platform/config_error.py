"""ConfigError on its own, so a command that only reports one (the CLI) need not import the settings
models and their validation library."""


class ConfigError(Exception):
    """Configuration that cannot work; the message is one sentence for a person."""
