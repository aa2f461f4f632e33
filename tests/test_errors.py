"""One error hierarchy: every exception class mmjax defines derives from mmjax.errors.MmjaxError."""
import importlib
import inspect
import pkgutil

import mmjax
from mmjax import errors

# Modules that need an optional extra to import are checked when it is installed.
OPTIONAL = ("mmjax.encoders.hf",)


def _modules():
    for info in pkgutil.walk_packages(mmjax.__path__, "mmjax."):
        try:
            yield importlib.import_module(info.name)
        except ImportError:
            if not info.name.startswith(OPTIONAL):
                raise


def test_every_library_exception_is_an_mmjax_error():
    found, outside = [], []
    for module in _modules():
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == module.__name__:
                found.append(f"{module.__name__}.{name}")
                if not issubclass(obj, errors.MmjaxError):
                    outside.append(f"{module.__name__}.{name}")
    assert len(found) > 30 and outside == []


def test_kinds_keep_the_builtin_bases_callers_catch():
    assert issubclass(errors.ConfigError, ValueError) and issubclass(errors.InputError, ValueError)
    assert issubclass(errors.RunError, RuntimeError) and issubclass(errors.DependencyError, ImportError)
    from mmjax.registry import UnknownNameError
    from mmjax.train.loop import TrainingDiverged

    assert issubclass(UnknownNameError, KeyError) and issubclass(TrainingDiverged, errors.RunError)
