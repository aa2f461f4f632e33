"""tfds builders of mmjax's own datasets. Importing this package imports nothing heavy;
:func:`register` imports tensorflow_datasets and registers the builders with it."""
from __future__ import annotations

BUILDERS = ("av_digits", "av_digits_video", "features3", "stamps")


def register() -> None:
    """Imports the builder modules so ``tfds.builder("av_digits")`` etc. find them."""
    from mmjax.data.builders import av_digits, av_digits_video, features3, stamps  # noqa: F401
