"""JAX's persistent compilation cache, on for every command that compiles.

Programs compiled once (a train step, an eval step) are read back from
``$XDG_CACHE_HOME/mmjax/jax`` (default ``~/.cache/mmjax/jax``) by later runs
of the same shapes, which then start in seconds. ``JAX_COMPILATION_CACHE_DIR``
chooses another directory; ``MMJAX_COMPILATION_CACHE=off`` turns it off.
"""
from __future__ import annotations

import os
from typing import Optional

OFF = ("0", "off", "false", "no")
MIN_COMPILE_SECS = 0.5  # programs faster to compile than this are not worth a disk read


def default_dir() -> str:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "mmjax", "jax")


def enable() -> Optional[str]:
    """Turns the cache on (unless set already or switched off) -> its directory, or None when off."""
    if os.environ.get("MMJAX_COMPILATION_CACHE", "").strip().lower() in OFF:
        return None
    import jax

    if jax.config.jax_compilation_cache_dir:
        return jax.config.jax_compilation_cache_dir
    path = default_dir()
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return None  # a read-only home: run without the cache rather than fail
    jax.config.update("jax_compilation_cache_dir", path)
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECS)
    return path
