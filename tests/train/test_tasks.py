"""Task losses against plain-numpy formulas, and the task hook of train_step."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mmjax.data import synthetic
from mmjax.train import step as step_lib
from mmjax.train import tasks
from mmjax.train.state import create_train_state
import optax

DATA = {"name": "synthetic_multimodal", "num_classes": 3, "num_attributes": 4, "image_dim": 6, "max_len": 8}


def _config(task, model):
    return ml_collections.ConfigDict({"task": task, "model": model, "batch_size": 4})


@pytest.fixture(scope="module")
def batch():
    b = next(synthetic.make_iterator(DATA, "train", global_batch_size=4, seed=0, train=True))
    b["weight"] = np.array([1, 1, 1, 0], np.float32)
    return b


@pytest.fixture(scope="module")
def captioning(batch):
    info = synthetic.info(DATA)
    cfg = _config("captioning", {"encoder": {"encoder": "mlp", "features": (8,)}, "width": 8, "num_layers": 1,
                                 "num_heads": 2, "mlp_dim": 16, "bos_id": 2, "eos_id": 3})
    task = tasks.get_task(cfg, info)
    model = task.build_model()
    state, _ = create_train_state(model, lambda p: optax.sgd(0.0), batch, jax.random.PRNGKey(0))
    return task, model, state


def test_unknown_task_and_bad_model_keys_raise():
    with pytest.raises(tasks.TaskConfigError, match="config.task"):
        tasks.get_task(_config("segmentation", {}), {})
    with pytest.raises(tasks.TaskConfigError, match="towers"):
        tasks.get_task(_config("contrastive", {"towers": {"image": {"encoder": "mlp"}}}), {}).build_model()
    with pytest.raises(tasks.TaskConfigError, match="widht"):
        tasks.get_task(_config("captioning", {"encoder": {"encoder": "mlp"}, "widht": 3}),
                       synthetic.info(DATA)).build_model()


def test_captioning_loss_is_token_weighted_mean(batch, captioning):
    task, model, state = captioning
    b = jax.tree.map(jnp.asarray, batch)
    total, (weight, aux, _) = task.loss_terms(state.apply_fn, state.params, {}, b, jax.random.PRNGKey(1), train=False)
    logits = np.asarray(model.apply({"params": state.params}, b), np.float64)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    y = batch["inputs"]["text"]
    nll = -np.take_along_axis(logp, y[..., None], -1)[..., 0]
    mask = (y != 0) * batch["weight"][:, None]  # the weight-0 row contributes nothing
    assert float(weight) == mask.sum() == 21
    np.testing.assert_allclose(float(total) / float(weight), (nll * mask).sum() / mask.sum(), rtol=1e-5)
    np.testing.assert_allclose(float(aux["token_accuracy"][0]), ((logp.argmax(-1) == y) * mask).sum())


def test_train_step_with_task_accumulation_matches_full_batch(batch, captioning):
    task, _, state = captioning
    b = jax.tree.map(jnp.asarray, batch)
    run = jax.jit(lambda s, b, k: step_lib.train_step(s, b, task=task, grad_accum_steps=k), static_argnums=2)
    _, full = run(state, b, 1)
    _, accum = run(state, b, 2)
    for key in ("loss", "token_accuracy", "grad_norm"):
        np.testing.assert_allclose(float(accum[key]), float(full[key]), rtol=1e-5, atol=1e-7)


def test_contrastive_loss_terms_equal_numpy_clip(batch):
    info = synthetic.info(DATA)
    cfg = _config("contrastive", {"towers": {"image": {"encoder": "mlp", "features": (8,)},
                                             "text": {"encoder": "gru", "vocab_size": info["vocab_size"],
                                                      "embed_dim": 4, "hidden_dim": 8}}, "embed_dim": 4})
    task = tasks.get_task(cfg, info)
    model = task.build_model()
    state, _ = create_train_state(model, lambda p: optax.sgd(0.0), batch, jax.random.PRNGKey(0))
    b = jax.tree.map(jnp.asarray, batch)
    total, (weight, aux, _) = task.loss_terms(state.apply_fn, state.params, {}, b, jax.random.PRNGKey(1), train=False)
    emb = model.apply({"params": state.params}, b)
    s = (1 / 0.07) * np.asarray(emb["image"], np.float64) @ np.asarray(emb["text"], np.float64).T

    def xent(z):
        return np.mean(np.log(np.exp(z).sum(1)) - np.diag(z))
    assert float(weight) == 4
    np.testing.assert_allclose(float(total) / 4, 0.5 * (xent(s) + xent(s.T)), rtol=1e-4)
    np.testing.assert_allclose(float(aux["scale/image_text"][0]) / float(aux["scale/image_text"][1]), 1 / 0.07,
                               rtol=1e-5)


def test_write_samples(tmp_path):
    path = str(tmp_path / "eval" / "samples.md")
    tasks.write_samples(path, ["a red cat", ""], [["a red cat", "red cat"], ["a | b"]], [1.5, 0.0], 5,
                        {"decoding": "greedy", "bleu4": 12.0, "cider_d": 0.75, "num_examples": 2})
    text = open(path).read()
    assert "| 0 | a red cat | a red cat / red cat | 1.500 |" in text
    assert "| 1 | (empty) | a \\| b | 0.000 |" in text and "BLEU-4 12.00, CIDEr-D 0.750 over 2" in text


def test_captioning_ids_default_to_the_tokenizers_in_model_and_loss(batch):
    from mmjax import tokenizer
    from mmjax.models.captioner import strip_bos

    cfg = _config("captioning", {"encoder": {"encoder": "mlp", "features": (8,)}, "width": 8, "num_layers": 1,
                                 "num_heads": 2, "mlp_dim": 16})
    task = tasks.get_task(cfg, synthetic.info(DATA))
    model = task.build_model()
    assert (model.bos_id, model.eos_id, model.pad_id) == (tokenizer.BOS_ID, tokenizer.EOS_ID, tokenizer.PAD_ID)
    ids, _ = tokenizer.ByteTokenizer().encode_batch(["ab", "c"], 6)
    assert (ids[:, 0] == tokenizer.BOS_ID).all()
    text = batch["inputs"][cfg.model.get("target", "text")]
    np.testing.assert_array_equal(task._target(batch), strip_bos(text, tokenizer.BOS_ID, tokenizer.PAD_ID))
    assert not (np.asarray(task._target(batch)) == tokenizer.BOS_ID).any()
