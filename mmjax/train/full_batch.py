"""A quick full-batch fit of a classifier config on in-memory batches, as one compiled program.

:func:`fit_full_batch` builds the :class:`~mmjax.models.classifier.Classifier` of a
model config, creates its state with :func:`mmjax.train.state.create_train_state`,
runs ``steps`` of :func:`mmjax.train.step.train_step` (the classifier's
:class:`~mmjax.train.tasks.classification.ClassificationLoss`) on the whole training
batch in one ``lax.scan``, and evaluates both batches through the objective's
``eval_sums``. Init, steps and evaluation compile to one program, so a tiny model
trains in seconds: for comparing fusion blocks on synthetic data
(``python -m experiments toy``) and for tests. Real runs (data pipelines,
checkpoints, logs, devices) go through :mod:`mmjax.train.loop`.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Mapping, Optional

import jax
import numpy as np
import optax

from mmjax import metrics as metrics_lib
from mmjax.models.classifier import build_classifier
from mmjax.models.fusion_choice import resolve
from mmjax.train.state import create_train_state
from mmjax.train.step import eval_step, train_step
from mmjax.train.tasks.classification import ClassificationLoss

Batch = Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class FullBatchResult:
    """What :func:`fit_full_batch` measured.

    Attributes:
      block: the fusion block the model config resolves to (None: no block, e.g. early placement).
      params: number of trained parameters.
      train_accuracy / test_accuracy: accuracy on each batch after the last step.
      steps_per_s: ``steps`` over the compiled program's run time (which also holds
        one init and the two evaluations).
      final_loss: training loss of the last step (computed before its update).
    """

    block: Optional[str]
    params: int
    train_accuracy: float
    test_accuracy: float
    steps_per_s: float
    final_loss: float


def fit_full_batch(
    model_config: Mapping[str, Any],
    num_classes: int,
    train: Batch,
    test: Batch,
    *,
    steps: int = 300,
    learning_rate: float = 1e-2,
    seed: int = 0,
    fast_compile: bool = False,
) -> FullBatchResult:
    """Full-batch Adam on ``train`` for ``steps`` steps, then accuracy on ``train`` and ``test``.

    Args:
      model_config: a classifier ``config.model`` (:func:`mmjax.models.classifier.build_classifier`).
      num_classes: C.
      train / test: batch dicts of host arrays: ``inputs`` {m: (B, ...)}, ``label`` (B,) int,
        optional ``token_mask`` {m: (B, T_m)}, ``modality_mask`` {m: (B,)} (False: the
        modality is missing; the classifier zeroes it and tells the fusion block) and
        ``weight`` (B,). Both are constants of the compiled program.
      steps: Adam steps (``optax.adam(learning_rate)``), each on the whole of ``train``.
      seed: the init key.
      fast_compile: compile with LLVM at -O1 (XLA's backend optimisation level 1): quicker
        to compile, slower to run (for tests). Not level 0: on XLA CPU (jax 0.10.2) it
        compiles a wrong gradient for a small CNN classifier.
    """
    model = build_classifier(model_config, num_classes)
    objective = ClassificationLoss(num_classes=num_classes)
    train, test = (jax.tree.map(np.asarray, dict(b)) for b in (train, test))

    def init(key):
        return create_train_state(model, lambda params: optax.adam(learning_rate), train, key)[0]

    def program(key):
        def step(state, _):
            state, metrics = train_step(state, train, task=objective)
            return state, metrics["loss"]

        state, losses = jax.lax.scan(step, init(key), None, length=steps)
        confusions = [eval_step(state, b, task=objective)["confusion"] for b in (train, test)]
        return losses[-1], confusions

    # The RBG generator compiles far faster than threefry; init quality is the same.
    key = jax.random.key(seed, impl="rbg")
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(jax.eval_shape(init, key).params))
    options = {"xla_backend_optimization_level": 1} if fast_compile else None
    compiled = jax.jit(program).lower(key).compile(compiler_options=options)
    start = time.perf_counter()
    loss, confusions = jax.block_until_ready(compiled(key))
    elapsed = time.perf_counter() - start
    train_acc, test_acc = (metrics_lib.accuracy(np.asarray(c)) for c in confusions)
    return FullBatchResult(
        block=resolve(model_config, num_classes).block,
        params=n_params,
        train_accuracy=float(train_acc),
        test_accuracy=float(test_acc),
        steps_per_s=steps / max(elapsed, 1e-9),
        final_loss=float(loss),
    )
