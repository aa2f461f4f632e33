"""fit_full_batch against a hand-written full-batch Adam loop on the same initial parameters."""
import jax
import numpy as np
import optax
import pytest

from mmjax.data.toy_task import ToyTask, without_modality
from mmjax.errors import ConfigError, InputError
from mmjax.fusion import tiny_configs
from mmjax.models.classifier import build_classifier
from mmjax.train.full_batch import fit_full_batch
from mmjax.train.state import create_train_state

TASK = ToyTask()
STEPS = 3
LR = 1e-2


def _hand_run(model_config, train, test):
    """(loss of the last step, train accuracy, test accuracy, parameter count) by plain optax."""
    model = build_classifier(model_config, TASK.num_classes)
    key = jax.random.key(0, impl="rbg")  # the init fit_full_batch uses for seed=0
    params = create_train_state(model, lambda p: optax.adam(LR), train, key)[0].params
    tx = optax.adam(LR)
    opt = tx.init(params)

    def loss_fn(p):
        logits = model.apply({"params": p}, train)
        return optax.softmax_cross_entropy_with_integer_labels(logits, train["label"]).mean()

    grad_fn = jax.jit(jax.value_and_grad(loss_fn))  # one compile, not one per op
    for _ in range(STEPS):
        loss, grads = grad_fn(params)
        updates, opt = tx.update(grads, opt, params)
        params = optax.apply_updates(params, updates)
    acc = [float(np.mean(np.argmax(model.apply({"params": params}, b), -1) == b["label"])) for b in (train, test)]
    return float(loss), acc[0], acc[1], sum(x.size for x in jax.tree.leaves(params))


@pytest.mark.parametrize("block,drop", [("concat", None), ("late", "b")])
def test_fit_matches_a_hand_written_adam_loop(block, drop):
    train, test = TASK.splits(32, 48)
    if drop:
        train, test = without_modality(train, drop), without_modality(test, drop)
    config = tiny_configs.tiny_classifier_config(block, TASK.modalities)
    got = fit_full_batch(config, TASK.num_classes, train, test, steps=STEPS, learning_rate=LR, fast_compile=True)
    loss, train_acc, test_acc, n_params = _hand_run(config, train, test)
    assert got.block == block and got.params == n_params
    assert got.final_loss == pytest.approx(loss, rel=1e-4)
    assert got.train_accuracy == pytest.approx(train_acc) and got.test_accuracy == pytest.approx(test_acc)


def test_every_registered_block_has_a_tiny_config():
    import mmjax.fusion
    assert sorted(tiny_configs.TINY_CONFIGS) == sorted(mmjax.fusion.names())


def test_errors_name_the_block_and_the_modality():
    with pytest.raises(ConfigError, match="'nope' has no entry in TINY_CONFIGS in .*tiny_configs.py"):
        tiny_configs.tiny_config("nope")
    with pytest.raises(InputError, match="no modality 'c'"):
        without_modality(TASK.sample(4, seed=0), "c")
