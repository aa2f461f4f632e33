"""Per-example random draws for batch-wise numpy code.

:class:`RowDraws` looks like an ``np.random.Generator`` to the batch functions of
:mod:`mmjax.data.preprocess` (``integers``, ``random``, ``uniform``,
``standard_normal`` with a leading batch dimension), but row ``r``'s numbers
come from a generator of its own, keyed by the example's global index. An
example's draws therefore do not depend on which batch, process or position it
is read in, and a process draws only for the rows it reads.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence

import numpy as np


class RowDraws:
    """A batch of generators, one per row."""

    def __init__(self, rngs: Sequence[np.random.Generator]):
        self._made = list(rngs)
        self._make: Optional[Callable[[], List[np.random.Generator]]] = None

    @classmethod
    def keyed(cls, index: Sequence[int], *key: int) -> "RowDraws":
        """Row r draws from ``default_rng([*key, index[r]])``, made at the first draw (seeding costs
        ~13 µs a row, and a batch without augmentation or dropout never draws)."""
        key = [int(k) for k in key]
        rows = [int(i) for i in np.asarray(index).reshape(-1)]
        draws = cls([])
        draws._make = lambda: [np.random.default_rng(key + [i]) for i in rows]
        return draws

    @property
    def _rngs(self) -> List[np.random.Generator]:
        if self._make is not None:
            self._made, self._make = self._make(), None
        return self._made

    def _each(self, draw: Callable[[np.random.Generator, tuple], np.ndarray], size) -> np.ndarray:
        size = (size,) if np.isscalar(size) else tuple(size)
        if size[0] != len(self._rngs):
            raise ValueError(f"RowDraws: asked for {size[0]} rows, holds {len(self._rngs)} generators")
        return np.stack([np.asarray(draw(r, size[1:])) for r in self._rngs]).reshape(size)

    def integers(self, low, high=None, size=1):
        return self._each(lambda r, s: r.integers(low, high, size=s), size)

    def random(self, size=1, dtype=np.float64):
        return self._each(lambda r, s: r.random(s, dtype=dtype), size)

    def uniform(self, low=0.0, high=1.0, size=1):
        return self._each(lambda r, s: r.uniform(low, high, size=s), size)

    def standard_normal(self, size=1, dtype=np.float64):
        return self._each(lambda r, s: r.standard_normal(s, dtype=dtype), size)

    def standard_normal_rows(self, lengths: Sequence[int], dtype=np.float64) -> List[np.ndarray]:
        """Row r's first ``lengths[r]`` standard normals: the start of what ``standard_normal``
        gives row r for any longer row, as numpy's generators fill arrays in order."""
        if len(lengths) != len(self._rngs):
            raise ValueError(f"RowDraws: asked for {len(lengths)} rows, holds {len(self._rngs)} generators")
        return [r.standard_normal(int(n), dtype=dtype) for r, n in zip(self._rngs, lengths)]


def normal_rows(rng, lengths: Sequence[int], dtype=np.float64) -> List[np.ndarray]:
    """``lengths[r]`` standard normals for each row r, from a RowDraws or a plain Generator."""
    if isinstance(rng, RowDraws):
        return rng.standard_normal_rows(lengths, dtype)
    return [rng.standard_normal(int(n), dtype=dtype) for n in lengths]
