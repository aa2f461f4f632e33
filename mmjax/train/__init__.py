"""Training: state, pure steps, parallelism wrappers, checkpoints, logging and the loop.

* :mod:`mmjax.train.state`: ``TrainState`` and its (sharded) creation.
* :mod:`mmjax.train.optim`: optax chain from config (schedule, AdamW mask, clipping, freezing).
* :mod:`mmjax.train.step`: pure ``train_step`` / ``eval_step``.
* :mod:`mmjax.train.parallel`: single (jit), pmap and sharded (jit over a Mesh) wrappers.
* :mod:`mmjax.train.checkpoint`: Orbax checkpoints (latest K + best).
* :mod:`mmjax.train.logging`: console, JSONL and TensorBoard writers.
* :mod:`mmjax.train.loop`: ``train_and_evaluate`` and ``evaluate``.
* :mod:`mmjax.train.full_batch`: ``fit_full_batch``, a quick full-batch fit on in-memory batches (one program).
"""
