"""Train-step behaviour on one device: accumulation, freezing, NaN policies, bf16, resume, init_from."""
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.data import synthetic
from experiments.configs import synthetic as synthetic_config
from mmjax.train import builder, init_from, loop
from mmjax.train.optim import OptimConfigError, decay_mask, freeze_labels, make_optimizer
from mmjax.validation import BatchValidationError

DATA = {"name": "synthetic", "num_classes": 3, "dims": {"a": 6, "b": 4}}


def _config(**over):
    c = synthetic_config.get_config()
    c.model.encoders = {"a": {"name": "mlp", "features": (8,)}, "b": {"name": "mlp", "features": (8,)}}
    c.model.fusion_config = {"out_dim": 8}
    c.model.head_hidden = ()
    c.total_steps = 4
    c.batch_size = 8
    c.log_every = 1
    c.eval_every = 0
    c.checkpoint_every = 2
    c.data.eval_examples = 8
    c.optim.warmup_steps = 0
    c.parallel.mode = "single"
    c.tensorboard = False
    for k, v in over.items():
        node = c
        *parents, leaf = k.split(".")
        for p in parents:
            node = node[p]
        with node.ignore_type():
            node[leaf] = v
    return c


def _batches(n, b=8, start=0):
    it = synthetic.make_iterator(DATA, "train", global_batch_size=b, seed=0, train=True, start_step=start)
    return [next(it) for _ in range(n)]


def _state(config, batch):
    runner = builder.build(config, 3)
    return runner, runner.create_state(batch, jax.random.PRNGKey(0))


def _np(tree):
    return jax.tree.map(lambda x: np.asarray(x), tree)


def test_grad_accumulation_equals_the_large_batch():
    batch = _batches(1)[0]
    results = []
    for k in (1, 4):
        runner, state = _state(_config(**{"train.grad_accum_steps": k}), batch)
        state, m = runner.train_step(state, runner.put_batch(batch))
        results.append((_np(state.params), runner.train_metrics(m)))
    (p1, m1), (p4, m4) = results
    assert m1["loss"] == pytest.approx(m4["loss"], rel=1e-5)
    assert m1["grad_norm"] == pytest.approx(m4["grad_norm"], rel=1e-5)
    assert m1["accuracy"] == m4["accuracy"]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), p1, p4)


def test_freezing_leaves_frozen_params_bit_identical():
    batches = _batches(2)
    runner, state = _state(_config(**{"optim.freeze": ("encoder_a",), "optim.weight_decay": 0.1}), batches[0])
    before = _np(state.params)
    for b in batches:
        state, _ = runner.train_step(state, runner.put_batch(b))
    after = _np(state.params)
    for name in after:
        same = jax.tree.leaves(jax.tree.map(np.array_equal, before[name], after[name]))
        assert all(same) == (name == "encoder_a_0"), name


def test_decay_mask_and_freeze_labels():
    params = {"enc_x_0": {"dense_0": {"kernel": jnp.zeros((2, 3)), "bias": jnp.zeros(3)}},
              "head": {"ln": {"scale": jnp.zeros(3)}, "out": {"kernel": jnp.zeros((3, 2))}}}
    mask = decay_mask(params)
    assert mask["enc_x_0"]["dense_0"] == {"kernel": True, "bias": False}
    assert mask["head"]["ln"]["scale"] is False and mask["head"]["out"]["kernel"] is True
    labels = freeze_labels(params, ["enc_x", "head/out"])
    assert labels["enc_x_0"]["dense_0"]["kernel"] == "frozen" and labels["head"]["ln"]["scale"] == "trainable"
    assert labels["head"]["out"]["kernel"] == "frozen"
    with pytest.raises(ValueError, match="matches no parameter"):
        freeze_labels(params, ["encoders/text"])


def test_optimizer_options_out_of_range_name_their_key():
    params = {"w": jnp.zeros((2, 2))}
    for key, value, want in [("learning_rate", 0.0, "> 0"), ("b2", 1.0, "in [0, 1)"), ("weight_decay", -1e-4, ">= 0"),
                             ("warmup_steps", -1, ">= 0"), ("momentum", 1.5, "in [0, 1)"), ("clip_norm", -1.0, "> 0 (or 0 / None: no clipping)")]:
        with pytest.raises(OptimConfigError, match=rf"^optim\.{key} must be {re.escape(want)}, got"):
            make_optimizer({"learning_rate": 1e-3, key: value}, params, 10)
    # In range (and clip_norm 0 = off): builds, and one update moves against the gradient
    # (warmup 0: the default warmup would start at learning rate 0).
    tx = make_optimizer({"learning_rate": 0.1, "clip_norm": 0, "b1": 0.0, "weight_decay": 0.0,
                         "schedule": "constant", "warmup_steps": 0}, params, 10)
    updates, _ = tx.update({"w": jnp.ones((2, 2))}, tx.init(params), params)
    assert float(updates["w"][0, 0]) < 0


def test_nonfinite_update_is_skipped_and_reported():
    good, bad = _batches(2)
    bad["inputs"]["a"][3, 0] = np.nan
    runner, state = _state(_config(), good)
    state, m = runner.train_step(state, runner.put_batch(good))
    assert runner.train_metrics(m)["finite"] == 1.0
    before = _np((state.params, state.opt_state))
    state, m = runner.train_step(state, runner.put_batch(bad))
    m = runner.train_metrics(m)
    assert m["finite"] == 0.0 and not np.isfinite(m["loss"])
    after = _np((state.params, state.opt_state))
    assert all(jax.tree.leaves(jax.tree.map(np.array_equal, before, after)))
    assert int(state.step) == 2


def test_bf16_compute_trains_with_f32_params():
    batches = _batches(6)
    runner, state = _state(_config(**{"model.dtype": "bfloat16", "optim.learning_rate": 0.03}), batches[0])
    losses = []
    for b in batches * 3:
        state, m = runner.train_step(state, runner.put_batch(b))
        losses.append(runner.train_metrics(m)["loss"])
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.params))
    assert np.isfinite(losses).all() and np.mean(losses[-6:]) < np.mean(losses[:6]) - 0.05


def _losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f) if "loss" in r}


@pytest.mark.slow
def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    cfg = _config(**{"model.dropout_rate": 0.2})  # dropout: checks the per-step RNG too
    full = loop.train_and_evaluate(cfg, str(tmp_path / "full"), console=None)
    part = loop.train_and_evaluate(cfg, str(tmp_path / "split"), console=None, stop_at=2)
    assert part == {"step": 2, "stopped_at": 2}
    assert not (tmp_path / "split" / "results.json").exists()
    resumed = loop.train_and_evaluate(cfg, str(tmp_path / "split"), console=None)
    assert _losses(tmp_path / "full") == _losses(tmp_path / "split")
    assert sorted(_losses(tmp_path / "full")) == [1, 2, 3, 4]
    assert resumed["loss"] == full["loss"] and resumed["step"] == 4
    # init_from: a fresh run whose encoder_a starts from the finished run's weights.
    from mmjax.train.checkpoint import load_params
    cfg2 = _config(**{"init_from.path": str(tmp_path / "full"), "init_from.source": "encoder_a_0",
                      "total_steps": 1})
    runner = builder.build(cfg2, 3)
    state = runner.create_state(_batches(1)[0], jax.random.PRNGKey(5))
    state = init_from.apply_init_from(runner, state, dict(cfg2.init_from))
    want = load_params(str(tmp_path / "full"))
    jax.tree.map(np.testing.assert_array_equal, _np(state.params["encoder_a_0"]), _np(want["encoder_a_0"]))
    assert not np.array_equal(np.asarray(state.params["head"]["out"]["kernel"]), want["head"]["out"]["kernel"])


def test_nan_stop_names_the_step(tmp_path):
    def data_fn(config, split, *, global_batch_size, seed, train, start_step=0):
        it = synthetic.make_iterator(config.data, split, global_batch_size=global_batch_size, seed=seed,
                                     train=train, start_step=start_step)
        for i, b in enumerate(it, start=start_step):
            if train and i == 2:  # the batch of step 3
                b["inputs"]["b"][:] = np.inf
            yield b
    cfg = _config(**{"train.nan_policy": "stop", "train.check_finite": "every"})
    # With the per-batch host scan on (off the hot path by default), host validation sees the Inf inputs first and names the step and modality...
    with pytest.raises(BatchValidationError, match=r"step 3\['inputs'\]\['b'\]: 32 NaN/Inf"):
        loop.train_and_evaluate(cfg, str(tmp_path / "checked"), data_fn=data_fn, info_fn=synthetic_config_info,
                                console=None)
    # ...and with that check off, the loss guard stops the run.
    cfg.train.check_finite = "off"
    with pytest.raises(loop.TrainingDiverged, match="at step 3.*last good checkpoint is step 2"):
        loop.train_and_evaluate(cfg, str(tmp_path), data_fn=data_fn, info_fn=synthetic_config_info, console=None)


def synthetic_config_info(config):
    return synthetic.info(config.data)


def test_train_split_reaches_the_data_function(tmp_path):
    """config.train_split (e.g. a labelled subset "train[:10%]") is the split the loop trains on."""
    seen = []

    def data_fn(config, split, *, global_batch_size, seed, train, start_step=0):
        seen.append((split, train))
        name = "train" if train else split
        return synthetic.make_iterator(config.data, name, global_batch_size=global_batch_size, seed=seed,
                                       train=train, start_step=start_step)
    cfg = _config(**{"train_split": "train[:10%]", "total_steps": 1, "checkpoint_every": 0})
    loop.train_and_evaluate(cfg, str(tmp_path), data_fn=data_fn, info_fn=synthetic_config_info, console=None)
    assert ("train[:10%]", True) in seen and all(s != "train" for s, t in seen if t)


def test_pmap_replicas_apply_their_rows_of_the_global_dropout_masks():
    """Under pmap a replica holds B/n rows; the runner's interceptor gives each row the dropout mask
    the one-device step draws for it, so the replicas' loss and gradient norm are the one-device
    step's (also with strided grad-accumulation microbatches). vmap with the pmap axis name stands
    in for the devices. Local masks from the shared key (the old pmap: every replica reused the
    mask of the first rows) do not agree."""
    import functools

    import flax.linen as nn

    from mmjax.train import step as step_lib
    from mmjax.train.parallel import PMAP_AXIS
    from mmjax.train.pmap_dropout import global_batch_masks

    replicas = 2  # and 2 accumulation microbatches per replica (8 devices: test_multidevice.py)
    cfg = _config(**{"model.dropout_rate": 0.5, "train.grad_accum_steps": 2})
    cfg.model.encoders.a = {"name": "mlp", "features": (8, 8), "dropout_rate": 0.5}  # a (B, 1, 8) dropout too
    batch = _batches(1)[0]
    runner, state = _state(cfg, batch)
    kwargs = dict(runner.step_kwargs)
    _, ref = jax.jit(functools.partial(step_lib.train_step, **kwargs))(state, batch)
    _, off = jax.jit(functools.partial(step_lib.train_step, **kwargs))(state.replace(rng=state.rng + 1), batch)
    assert abs(float(off["loss"]) - float(ref["loss"])) > 1e-3  # dropout really changes the loss
    copies = lambda x: jnp.broadcast_to(jnp.asarray(x), (replicas,) + jnp.shape(x))  # noqa: E731
    split = lambda x: jnp.reshape(x, (replicas, x.shape[0] // replicas) + x.shape[1:])  # noqa: E731
    reduce = functools.partial(jax.lax.pmean, axis_name=PMAP_AXIS)

    def on_replicas(interceptor):
        def step(s, b):
            with nn.intercept_methods(interceptor):
                return step_lib.train_step(s, b, grad_reduce=reduce, **kwargs)
        _, m = jax.jit(jax.vmap(step, axis_name=PMAP_AXIS))(jax.tree.map(copies, state), jax.tree.map(split, batch))
        return np.asarray(m["loss"]), np.asarray(m["grad_norm"])

    loss, grad_norm = on_replicas(global_batch_masks(replicas, PMAP_AXIS))
    np.testing.assert_allclose(loss, np.full(replicas, float(ref["loss"])), rtol=1e-6)
    np.testing.assert_allclose(grad_norm, np.full(replicas, float(ref["grad_norm"])), rtol=1e-5)
    local = lambda f, args, kw, ctx: f(*args, **kw)  # noqa: E731  nn.Dropout on the replica's rows alone
    old_loss, _ = on_replicas(local)
    assert abs(old_loss[0] - float(ref["loss"])) > 1e-3, (old_loss, ref["loss"])
