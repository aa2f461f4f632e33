"""One of two processes (gloo on CPU) restoring the newest good checkpoint of a shared directory.

Args: COORDINATOR PROCESS_ID DIRECTORY. Both save steps 2 and 4, then restore;
the test gives process 0 ``MMJAX_FAULT=restore@4:damaged``. The state holds a
host array ``w`` and ``v`` (4,), sharded over the two processes (each hashes its own
half for the checksums). Prints ``restored STEP w=VALUE v=LOCAL_HALF`` (and process 0
the set-aside message).
"""
import sys

import jax

coordinator, index, directory = sys.argv[1], int(sys.argv[2]), sys.argv[3]
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(coordinator, num_processes=2, process_id=index)

import numpy as np  # noqa: E402

from mmjax.train.checkpoint import Checkpointer  # noqa: E402

sharding = jax.sharding.NamedSharding(jax.sharding.Mesh(np.array(jax.devices()), ("p",)),
                                     jax.sharding.PartitionSpec("p"))


def v(step):
    return jax.make_array_from_callback((4,), sharding, lambda index: np.arange(4, dtype=np.float32)[index] + step)


ck = Checkpointer(directory, keep=5, best_metric=None)
for step in (2, 4):
    ck.save(step, {"w": np.full(3, step, np.float32), "v": v(step)})
ck.wait()
target = {"w": np.zeros(3, np.float32), "v": jax.ShapeDtypeStruct((4,), np.float32, sharding=sharding)}
state, step = ck.restore_latest_good(target, say=print)
half = np.asarray(state["v"].addressable_shards[0].data).tolist()
print(f"restored {step} w={float(np.asarray(state['w'])[0])} v={half}", flush=True)
ck.close()
