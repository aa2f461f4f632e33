"""Child of test_hf_sharded.py: runs on 8 fake CPU devices (XLA_FLAGS set by the parent).

argv: a ViT directory and a BERT directory. Prints one ``RESULT {json}`` line."""
import json
import sys

import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np

from mmjax.encoders import create
from mmjax.encoders.hf import build_module, pretrained_variables, read_config
from mmjax.encoders.hf.sharded import sharded_variables
from mmjax.train.parallel import make_mesh

# Converted path <- native path of the same weight (ViT encoder "vit", text encoder "transformer").
VIT_PAIRS = {"layer_0/attention/" + r + "/" + p: "transformer/layer_0/self_attn/" + r + "/" + p
             for r in ("query", "key", "value", "out") for p in ("kernel", "bias")}
VIT_PAIRS.update({f"layer_0/{f}/{p}": f"transformer/layer_0/mlp/{f}/{p}" for f in ("fc1", "fc2")
                  for p in ("kernel", "bias")})
VIT_PAIRS.update({f"layer_0/ln_{i}/{p}": f"transformer/layer_0/ln_{n}/{p}" for i, n in ((1, "attn"), (2, "mlp"))
                  for p in ("scale", "bias")})
BERT_PAIRS = {**VIT_PAIRS, "position_embeddings/embedding": "pos_embedding"}


def flat(tree):
    return {"/".join(str(getattr(k, "key", k)) for k in path): v
            for path, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def native_specs(name, example, **kw):
    enc = create(name, **kw)
    boxed = jax.eval_shape(enc.init, jax.random.key(0), example)["params"]
    from mmjax.sharding import LOGICAL_RULES
    return flat(nn.logical_to_mesh(nn.get_partition_spec(boxed), LOGICAL_RULES))


def check(model_dir, mesh, pairs, native, example):
    got = sharded_variables(model_dir, mesh=mesh)["params"]
    want = flat(pretrained_variables(model_dir)["params"])
    shards_ok, sharded, biggest, total, full_on_device = True, 0, 0, 0, 0
    for path, arr in flat(got).items():
        ref = want[path]
        for s in arr.addressable_shards:
            shards_ok &= bool(np.array_equal(np.asarray(s.data), ref[s.index]))
            # a weight whose spec names a mesh axis must not sit whole on any device
            full_on_device += int(any(arr.sharding.spec) and s.data.shape == ref.shape)
        n_shards = len({tuple((i.start, i.stop) for i in s.index) for s in arr.addressable_shards})
        sharded += n_shards > 1
        biggest = max(biggest, max(s.data.nbytes for s in arr.addressable_shards))
        total += ref.nbytes
    specs = {p: a.sharding.spec for p, a in flat(got).items()}
    same_axes = {p: [str(specs[p]), str(native[n])] for p, n in pairs.items()}
    module = build_module(read_config(model_dir))
    ref_params = pretrained_variables(model_dir)
    a = jax.jit(module.apply)({"params": got}, *example)
    b = module.apply(ref_params, *example)
    err = float(jnp.max(jnp.abs(a.pooled - b.pooled)) / jnp.max(jnp.abs(b.pooled)))
    per_device = {}
    for arr in jax.tree.leaves(got):
        for s in arr.addressable_shards:
            per_device[s.device.id] = per_device.get(s.device.id, 0) + s.data.nbytes
    return {"shards_equal": shards_ok, "full_copies": full_on_device,
            "spec_leaves": sum(bool(any(a.sharding.spec)) for a in flat(got).values()), "sharded_leaves": sharded, "leaves": len(specs), "same_axes": same_axes,
            "pooled_rel_err": err, "device_bytes_max": max(per_device.values()), "total_bytes": total,
            "devices": len(per_device), "specs": {p: str(v) for p, v in specs.items()}}


def init_from_check(vit_dir, mesh_cfg, converted):
    """init_from.pretrained into a sharded classifier: each device's shard is its slice of the
    conversion and the shardings are those sharded_variables gives (the train state's)."""
    from mmjax.models.classifier import build_classifier
    from mmjax.train.init_from import apply_init_from
    from mmjax.train.optim import make_optimizer
    from mmjax.train.parallel import Runner
    from mmjax.train.tasks import ClassificationLoss

    model = build_classifier({"encoders": {"image": {"name": "pretrained", "path": vit_dir},
                                           "a": {"name": "mlp", "features": [8]}},
                              "fusion_config": {"out_dim": 8}, "head_hidden": []}, 3)
    runner = Runner("sharded", model, lambda p: make_optimizer({"learning_rate": 0.01, "warmup_steps": 0}, p, 10),
                    task=ClassificationLoss(num_classes=3), mesh_cfg=mesh_cfg)
    batch = {"inputs": {"image": np.zeros((8, 32, 32, 3), np.float32), "a": np.zeros((8, 6), np.float32)},
             "modality_mask": {"image": np.ones(8, bool), "a": np.ones(8, bool)}, "label": np.zeros(8, np.int32)}
    state = runner.create_state(batch, jax.random.PRNGKey(0))
    state = apply_init_from(runner, state, {"pretrained": vit_dir, "target": "encoder_image_0"})
    got = flat(runner.host_state(state).params["encoder_image_0"])
    want = flat(pretrained_variables(vit_dir)["params"])
    equal = all(np.array_equal(np.asarray(s.data), want[p][s.index]) for p, a in got.items()
                for s in a.addressable_shards)
    same = all(a.sharding.spec == converted[p].sharding.spec for p, a in got.items())
    return {"shards_equal": equal, "same_shardings": same,
            "sharded_leaves": sum(len({str(s.index) for s in a.addressable_shards}) > 1 for a in got.values())}


def main():
    vit_dir, bert_dir = sys.argv[1:3]
    assert jax.device_count() == 8, jax.device_count()
    mesh_cfg = {"data": 2, "fsdp": 2, "tensor": 2}
    mesh = make_mesh(mesh_cfg)
    pixels = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 32, 3)), jnp.float32)
    ids = jnp.asarray(np.random.default_rng(1).integers(3, 90, (2, 8)), jnp.int32)
    vit = check(vit_dir, mesh, VIT_PAIRS, native_specs("vit", pixels, patch_size=8, hidden_dim=32, num_layers=1,
                                                       num_heads=4, mlp_dim=64), (pixels,))
    bert = check(bert_dir, mesh, BERT_PAIRS, native_specs("transformer", ids, vocab_size=99, hidden_dim=32,
                                                          num_layers=1, num_heads=4, mlp_dim=64, max_len=16),
                 (ids, jnp.ones(ids.shape, bool)))
    converted = flat(sharded_variables(vit_dir, mesh=mesh)["params"])
    init = init_from_check(vit_dir, mesh_cfg, converted)
    print("RESULT " + json.dumps({"vit": vit, "bert": bert, "init_from": init}))


if __name__ == "__main__":
    main()
