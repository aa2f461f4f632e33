"""One of two processes (gloo on CPU) restoring the newest good checkpoint of a shared directory.

Args: COORDINATOR PROCESS_ID DIRECTORY. Both save steps 2 and 4, then restore;
the test gives process 0 ``MMJAX_FAULT=restore@4:damaged``. Prints
``restored STEP w=VALUE`` (and process 0 the set-aside message).
"""
import sys

import jax

coordinator, index, directory = sys.argv[1], int(sys.argv[2]), sys.argv[3]
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(coordinator, num_processes=2, process_id=index)

import numpy as np  # noqa: E402

from mmjax.train.checkpoint import Checkpointer  # noqa: E402

ck = Checkpointer(directory, keep=5, best_metric=None)
for step in (2, 4):
    ck.save(step, {"w": np.full(3, step, np.float32)})
ck.wait()
state, step = ck.restore_latest_good({"w": np.zeros(3, np.float32)}, say=print)
print(f"restored {step} w={float(np.asarray(state['w'])[0])}", flush=True)
ck.close()
