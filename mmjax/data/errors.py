"""Errors of the data package."""


class DataConfigError(ValueError):
    """A data config, split or dataset that cannot be used as given (the message says why)."""
