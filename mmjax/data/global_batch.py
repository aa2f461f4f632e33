"""Per-process numpy batches -> global jax.Arrays (no tensorflow here)."""
from __future__ import annotations

from typing import Any

import jax


def to_global(batch: Any, sharding: jax.sharding.Sharding) -> Any:
    """Turns this process's batch (a pytree of numpy arrays, leading dim B / process_count)
    into global jax.Arrays with leading dim B laid out by ``sharding`` (e.g.
    ``NamedSharding(mesh, P(("data", "fsdp")))``). Every process must call it with its own part."""
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)
