"""Errors of the data package (kinds of :class:`mmjax.errors.DataError`)."""
from mmjax import errors


class DataConfigError(errors.DataError):
    """A data config, split or dataset that cannot be used as given (the message says why)."""


class DataError(DataConfigError):
    """Bad data in a split under ``bad_examples="fatal"``: names the split, example index and reason."""
