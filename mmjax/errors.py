"""The one error hierarchy of mmjax: every exception the library raises on purpose is a :class:`MmjaxError`.

The kinds say whose move it is:

* :class:`ConfigError`: a config value the library cannot use (fix the config);
* :class:`InputError`: arrays, batches or files that do not fit the model (fix the inputs);
* :class:`DataError`: a dataset that cannot be found, built or read;
* :class:`CheckpointError`: a checkpoint or run directory that cannot be read or does not fit;
* :class:`RunError`: a run that cannot go on (diverged, its workdir taken by another run);
* :class:`DependencyError`: an optional package is missing (the message names the extra to install).

Each module's own errors (``FusionInputError``, ``OptimConfigError``, ...) derive
from one kind, and keep the built-in base they always had (``ValueError``,
``RuntimeError``, ``ImportError``), so ``except ValueError`` code goes on working.
The command line catches :class:`MmjaxError` once and prints its message as one
line; anything else is a bug and surfaces with its traceback.
"""
from __future__ import annotations


class MmjaxError(Exception):
    """Base of every error mmjax raises on purpose; its message is one line that names the problem."""


class ConfigError(MmjaxError, ValueError):
    """A config value (or argument) the library cannot use."""


class InputError(MmjaxError, ValueError):
    """Inputs (arrays, batches, files) that do not fit what the model or function takes."""


class DataError(MmjaxError, ValueError):
    """A dataset that cannot be found, prepared or read."""


class CheckpointError(MmjaxError, ValueError):
    """A checkpoint or run directory that cannot be read, or that does not fit this config."""


class RunError(MmjaxError, RuntimeError):
    """A run that cannot go on (diverged, or its workdir taken by another run)."""


class DependencyError(MmjaxError, ImportError):
    """An optional dependency is missing; the message names the extra to install."""
