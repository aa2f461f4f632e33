"""Runs in a child process with 8 (or --devices) CPU devices; prints one JSON line of results.

Modes:
  compare: single vs pmap vs sharded (data / data x fsdp / data x tensor) losses, all
           with dropout on, parameter shard shapes, and a sharded checkpoint save/restore.
  multiproc: one of N processes (gloo collectives) training the sharded model;
             process 0 prints its losses.
  tensor2: the sharded model on mesh {data: -1, tensor: 2}, in 1 process or (with
           --coordinator) one of N; process 0 prints its losses, the global batch's rows
           and whether the rows went straight to their devices.
  single: parallel.mode=single in one of N processes: the config check and the runner's step
          must refuse it (each process would train its own model); prints what each raised.
"""
import argparse
import json
import os
import sys

parser = argparse.ArgumentParser()
parser.add_argument("mode")
parser.add_argument("--devices", type=int, default=8)
parser.add_argument("--coordinator")
parser.add_argument("--num_processes", type=int)
parser.add_argument("--process_id", type=int)
parser.add_argument("--workdir")
args = parser.parse_args()
os.environ["XLA_FLAGS"] = (f"--xla_force_host_platform_device_count={args.devices} "
                           "--xla_backend_optimization_level=1")
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402

if args.coordinator:
    from mmjax.train import distributed
    distributed.initialize(args.coordinator, args.num_processes, args.process_id)

import numpy as np  # noqa: E402

from mmjax.data import synthetic  # noqa: E402
from mmjax.models.classifier import build_classifier  # noqa: E402
from mmjax.train.checkpoint import Checkpointer  # noqa: E402
from mmjax.train.optim import make_optimizer  # noqa: E402
from mmjax.train.parallel import Runner  # noqa: E402
from mmjax.train.tasks import ClassificationLoss  # noqa: E402

STEPS = 2
BATCH = 16
DATA = {"name": "synthetic", "num_classes": 3, "dims": {"a": 6, "b": 4}}
MODEL = {"encoders": {"a": {"name": "mlp", "features": [8]}, "b": {"name": "mlp", "features": [8]}},
         "fusion_config": {"out_dim": 8}, "head_hidden": [8]}
# compare's model: dropout in an encoder ((B, 1, 8) activations) and in the head ((B, 8)), so every
# mode must also draw the same mask for each example.
DROPOUT = dict(MODEL, dropout_rate=0.3,
               encoders={"a": {"name": "mlp", "features": [8, 8], "dropout_rate": 0.3}, "b": MODEL["encoders"]["b"]})
NO_DROPOUT = dict(DROPOUT, dropout_rate=0.0, encoders=dict(DROPOUT["encoders"], a=dict(DROPOUT["encoders"]["a"],
                                                                                        dropout_rate=0.0)))


def runner(mode, mesh=None, model_cfg=MODEL):
    model = build_classifier(model_cfg, 3)
    mk = lambda p: make_optimizer({"learning_rate": 0.05, "weight_decay": 0.01, "clip_norm": 1.0,  # noqa: E731
                                   "warmup_steps": 0}, p, 10)
    return Runner(mode, model, mk, task=ClassificationLoss(num_classes=3), mesh_cfg=mesh)


def train(r):
    it = synthetic.make_iterator(DATA, "train", global_batch_size=BATCH, seed=0, train=True)
    first = next(it)
    state = r.create_state(first, jax.random.PRNGKey(0))
    losses, batch = [], first
    for _ in range(STEPS):
        state, m = r.train_step(state, r.put_batch(batch))
        losses.append(r.train_metrics(m)["loss"])
        batch = next(it)
    return state, losses, first


def compare():
    out = {"devices": jax.device_count()}
    meshes = {"data": {"data": -1}, "data_fsdp": {"data": 2, "fsdp": 4}, "data_tensor": {"data": 2, "tensor": 4}}
    out["single"] = train(runner("single", model_cfg=DROPOUT))[1]
    out["pmap"] = train(runner("pmap", model_cfg=DROPOUT))[1]
    out["single_dropout_0"] = train(runner("single", model_cfg=NO_DROPOUT))[1]
    for name, mesh in meshes.items():
        r = runner("sharded", mesh, DROPOUT)
        state, losses, example = train(r)
        out[name] = losses
        shards = {}
        for path, leaf in jax.tree_util.tree_flatten_with_path(state.params)[0]:
            key = "/".join(str(getattr(k, "key", k)) for k in path)
            shards[key] = {"shape": list(leaf.shape), "spec": str(leaf.sharding.spec),
                           "shard": list(leaf.addressable_shards[0].data.shape)}
        out[name + "_shards"] = shards
        if name == "data_fsdp":
            # Sharded save, then restore into the target shardings.
            ck = Checkpointer(args.workdir, keep=1, best_metric=None)
            ck.save(STEPS, state, force=True)
            ck.wait()
            restored = ck.restore(r.abstract_state(example, jax.random.PRNGKey(0)))
            ck.close()
            same = jax.tree.map(lambda a, b: bool(np.array_equal(np.asarray(a), np.asarray(b))), state, restored)
            kernels = [(str(a.sharding.spec), str(b.sharding.spec)) for a, b in
                       zip(jax.tree.leaves(state.params), jax.tree.leaves(restored.params))]
            out["restore_equal"] = all(jax.tree.leaves(same))
            out["restore_specs_equal"] = all(a == b for a, b in kernels)
            mu = [x for x in jax.tree.leaves(restored.opt_state) if getattr(x, "ndim", 0) == 2]
            out["opt_state_sharded"] = any(x.addressable_shards[0].data.shape != x.shape for x in mu)
    print("RESULT " + json.dumps(out))


def multiproc():
    r = runner("sharded", {"data": -1})
    _, losses, _ = train(r)
    if jax.process_index() == 0:
        print("RESULT " + json.dumps({"losses": losses, "processes": jax.process_count(),
                                      "devices": jax.device_count()}))


def tensor2():
    from mmjax.data import global_batch

    r = runner("sharded", {"data": -1, "tensor": 2})
    _, losses, first = train(r)
    rows = int(r.put_batch(first)["label"].shape[0])
    if jax.process_index() == 0:
        print("RESULT " + json.dumps({"losses": losses, "processes": jax.process_count(), "rows": rows,
                                      "mesh": dict(r.mesh.shape), "direct": global_batch._rows_direct(r.batch_sharding, rows, jax.process_count())}))


def single():
    from experiments.configs import synthetic as synthetic_config
    from mmjax.errors import ConfigError
    from mmjax.train import loop

    config = synthetic_config.get_config()
    config.parallel.mode = "single"
    def attempt(call):
        try:
            return {"returned": call()}
        except ConfigError as e:
            return {"error": str(e), "kind": type(e).__name__}
    out = {"processes": jax.process_count(), "check_config": attempt(lambda: loop.check_config(config)),
           "train_step": attempt(lambda: train(runner("single"))[1])}
    print("RESULT " + json.dumps(out))


if args.mode == "compare":
    compare()
elif args.mode == "single":
    single()
elif args.mode == "tensor2":
    tensor2()
elif args.mode == "single4":
    r = runner("sharded", {"data": -1})
    print("RESULT " + json.dumps({"losses": train(r)[1], "devices": jax.device_count()}))
else:
    multiproc()
sys.stdout.flush()
