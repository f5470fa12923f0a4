"""Errors that reach users: printed as one message, without a traceback."""


class UserError(Exception):
    """A mistake in the user's input (config, files, reward code). Exit code 1."""

    exit_code = 1


class ConfigError(UserError):
    """A wrong config key, type or value. Exit code 2, like argparse."""

    exit_code = 2
