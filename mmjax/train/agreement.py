"""How the processes of a multi-host run agree on what to restore.

Every process opens the same checkpoint directory, but each may see it
differently: a listing taken a moment earlier or later, or a damaged file
read by one process and not another. If each process picked its own step,
or set a damaged one aside on its own, they would restore different states
or wait forever in a collective the others never join (Orbax's restore ends
in a barrier across processes). So process 0 decides and the others follow:

* the list of steps (hence the step to resume from) is process 0's,
  broadcast to the others (:meth:`Agreement.share`);
* process 0 alone reads each candidate back whole and broadcasts its
  verdict (:data:`OK`, :data:`DAMAGED`, :data:`MISMATCH`): all processes then
  restore that step together, or all raise the mismatch;
* only process 0 moves a damaged checkpoint aside; the others wait at a
  barrier and then re-read the directory.

With one process nothing is communicated.
"""
from __future__ import annotations

from typing import List, Sequence

import numpy as np

OK, DAMAGED, MISMATCH = 0, 1, 2


class Agreement:
    """The collectives of a run of ``jax.process_count()`` processes (none with one process)."""

    @property
    def count(self) -> int:
        import jax
        return jax.process_count()

    @property
    def is_main(self) -> bool:
        import jax
        return jax.process_index() == 0

    def share(self, values: Sequence[int]) -> List[int]:
        """Process 0's list of ints, on every process."""
        values = [int(v) for v in values]
        if self.count == 1:
            return values
        from jax.experimental import multihost_utils
        n = int(multihost_utils.broadcast_one_to_all(np.asarray(len(values), np.int32)))
        padded = np.zeros((max(n, 1),), np.int32)
        padded[:min(n, len(values))] = values[:n]
        return [int(v) for v in np.asarray(multihost_utils.broadcast_one_to_all(padded))[:n]]

    def decision(self, value: int) -> int:
        """Process 0's ``value`` (its verdict on a step, a flag), on every process."""
        return self.share([value])[0]

    def barrier(self, name: str) -> None:
        """Waits until every process got here."""
        if self.count > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices(name)
