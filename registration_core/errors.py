"""Exceptions raised on bad input; the CLI turns them into one-line errors."""


class InputError(ValueError):
    """Bad user input: a file, a config key or a parameter. The message names it."""
