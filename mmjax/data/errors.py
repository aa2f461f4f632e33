"""Errors of the data package."""


class DataConfigError(ValueError):
    """A data config, split or dataset that cannot be used as given (the message says why)."""


class DataError(DataConfigError):
    """Bad data in a split under ``bad_examples="fatal"``: names the split, example index and reason."""
