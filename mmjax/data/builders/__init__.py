"""tfds builders of mmjax's own datasets. Importing this package imports nothing heavy;
:func:`register` imports tensorflow_datasets and registers the builders with it."""
from __future__ import annotations

BUILDERS = ("av_digits", "stamps")


def register() -> None:
    """Imports the builder modules so ``tfds.builder("av_digits")`` etc. find them."""
    from mmjax.data.builders import av_digits  # noqa: F401
    try:
        from mmjax.data.builders import stamps  # noqa: F401
    except ImportError:  # stamps not written yet on older checkouts
        pass
