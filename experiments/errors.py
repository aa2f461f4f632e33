"""Errors the command line turns into one-line messages and exit code 2."""


class UserError(Exception):
    """A mistake the user can fix (bad config key, unknown name, bad workdir...)."""
