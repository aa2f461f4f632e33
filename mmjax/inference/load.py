"""A trained classifier back from its workdir: ``mmjax.load(workdir) -> LoadedModel``.

Everything comes from the run itself: the config and the dataset facts from
``WORKDIR/config.json`` (:mod:`mmjax.train.run_record`), the weights from its
best (or latest) checkpoint, restored with the same builder training used.
The dataset is not needed::

    model = mmjax.load("runs/av_digits")
    probs = model.predict({"image": "digit.png", "audio": "digit.wav"})   # (1, C)
    model.class_names[probs[0].argmax()]
"""
from __future__ import annotations

import functools
from typing import Any, Dict, List, Mapping, Tuple

import numpy as np

from mmjax.inference.inputs import ModalitySpec, specs_from_record, to_batch
from mmjax.train.checkpoint import CheckpointError
from mmjax.train.config_access import setting


class LoadError(CheckpointError):
    """A workdir that holds no usable trained classifier (the message says why)."""


def probabilities(logits, loss: str):
    """(B, C) logits -> (B, C) probabilities: sigmoid per class for ``sigmoid_bce``, else softmax."""
    import jax

    return jax.nn.sigmoid(logits) if loss == "sigmoid_bce" else jax.nn.softmax(logits, axis=-1)


class LoadedModel:
    """A restored classifier with the preprocessing it was trained with.

    Attributes:
      config: the run's ConfigDict; data_info: its dataset facts (dict).
      class_names: C names ("0".."C-1" when the dataset has none); step: the checkpoint's step.
      model: the flax classifier module; variables: {"params": ..., ["batch_stats": ...]} (numpy).
      modalities: the input modalities (sorted names); specs: modality -> :class:`ModalitySpec`.
      loss: the training loss name (it decides softmax or sigmoid probabilities).
      last_notes: what the latest :meth:`preprocess` changed to fit the model (resampling, cropping).
    """

    def __init__(self, config: Any, data_info: Mapping[str, Any], step: int, model: Any,
                 variables: Dict[str, Any], specs: Mapping[str, ModalitySpec]):
        self.config = config
        self.data_info = dict(data_info)
        num_classes = int(self.data_info["num_classes"])
        self.class_names: List[str] = [str(n) for n in (self.data_info.get("class_names") or [])] or [
            str(i) for i in range(num_classes)]
        self.step = int(step)
        self.model = model
        self.variables = variables
        self.specs = dict(specs)
        self.modalities: Tuple[str, ...] = tuple(sorted(self.specs))
        self.loss = str(setting(config, "loss.name"))
        self.last_notes: List[str] = []
        self._jitted: Dict[str, Any] = {}

    @property
    def image_norms(self) -> Dict[str, Tuple[Tuple[float, ...], Tuple[float, ...]]]:
        """image modality -> (mean, std) per channel, in [0, 1] units."""
        return {m: s.norm for m, s in self.specs.items() if s.norm is not None}

    def preprocess(self, inputs: Mapping[str, Any], *, normalize: bool = True) -> Dict[str, Any]:
        """Raw values per modality -> a model-ready batch (see :mod:`mmjax.inference.inputs`).

        Returns ``{"inputs": {m: (B, ...)}, "modality_mask": {m: (B,) bool}, "token_mask": {m: (B, L) bool}}``
        with every model modality (left-out ones masked off, zeros); images float32
        ``(x / 255 - mean) / std`` (``normalize=False``: uint8, as an exported model takes them).
        """
        from mmjax.data.normalize import normalize_images

        batch, self.last_notes = to_batch(self.specs, inputs)
        return normalize_images(batch, self.image_norms) if normalize else batch

    def forward(self, variables: Dict[str, Any], batch: Mapping[str, Any], *, probs: bool = False):
        """The traceable inference path: images normalised (uint8 only), eval-mode apply -> (B, C)
        logits, or probabilities with ``probs``. Used by :meth:`logits`, :meth:`predict` and export."""
        import jax.numpy as jnp

        from mmjax.data.normalize import normalize_images

        b = {k: batch[k] for k in ("inputs", "token_mask", "modality_mask") if k in batch}
        b = normalize_images(b, self.image_norms, xp=jnp)
        logits = self.model.apply(variables, b, train=False).astype(jnp.float32)
        return probabilities(logits, self.loss) if probs else logits

    def _run(self, batch: Mapping[str, Any], probs: bool) -> np.ndarray:
        import jax

        key = "probs" if probs else "logits"
        if key not in self._jitted:
            self._jitted[key] = jax.jit(functools.partial(self.forward, probs=probs))
        b = {k: batch[k] for k in ("inputs", "token_mask", "modality_mask") if k in batch}
        return np.asarray(self._jitted[key](self.variables, b), np.float32)

    def logits(self, batch: Mapping[str, Any]) -> np.ndarray:
        """(B, C) float32 eval-mode logits of a :meth:`preprocess`-ed batch (normalised or uint8 images)."""
        return self._run(batch, probs=False)

    def predict(self, inputs: Mapping[str, Any]) -> np.ndarray:
        """(B, C) float32 class probabilities (softmax; per-class sigmoid for ``sigmoid_bce`` runs) of raw inputs."""
        return self._run(self.preprocess(inputs, normalize=False), probs=True)

    def example_batch(self, batch_size: int = 1) -> Dict[str, Any]:
        """A zero batch of the model's input structure (uint8 images), every modality present."""
        batch: Dict[str, Any] = {"inputs": {}, "modality_mask": {}}
        for m, s in sorted(self.specs.items()):
            batch["inputs"][m] = np.zeros((batch_size,) + s.shape, s.dtype)
            batch["modality_mask"][m] = np.ones(batch_size, bool)
            if s.sequence:
                batch.setdefault("token_mask", {})[m] = np.ones((batch_size, s.shape[0]), bool)
        return batch


def _record(workdir: str):
    from mmjax.train import run_record

    try:
        record = run_record.read(workdir)
    except run_record.ConfigChangedError as e:
        raise LoadError(str(e)) from None
    if record is None:
        raise LoadError(f"{workdir} holds no run ({run_record.FILE}): train there first, or check --workdir")
    task = str(setting(record.config, "task"))
    if task != "classification":
        raise LoadError(f"{workdir} is a {task!r} run: mmjax.load serves classifiers only")
    if "num_classes" not in record.data_info:
        raise LoadError(f"{workdir}/{run_record.FILE} records no num_classes in its data_info")
    return record


def load(workdir: str, which: str = "best") -> LoadedModel:
    """The classifier of ``workdir``'s ``which`` ("best" | "latest") checkpoint, on one device.

    Raises:
      LoadError: no run record, not a classification run, or no checkpoint.
      InputError: the run record does not describe the model's inputs.
    """
    import jax

    from mmjax.data.factory import wanted_modalities
    from mmjax.train import builder, evaluation

    if which not in ("best", "latest"):
        raise LoadError(f"which must be 'best' or 'latest', got {which!r}")
    workdir = str(workdir)
    record = _record(workdir)
    config, info = record.config, record.data_info
    mods = info.get("modalities") or {}
    names = wanted_modalities(config) or tuple(sorted(mods))
    specs = specs_from_record(config, info, names)
    one_device = config.copy_and_resolve_references()
    one_device.parallel.mode = "single"  # inference runs on one device whatever the run trained on
    runner = builder.build(one_device, int(info["num_classes"]), info)
    ckpt = builder.open_checkpoints(one_device, workdir, for_eval=True)
    shell = LoadedModel(config, info, 0, runner.model, {}, specs)
    try:
        # A damaged checkpoint is set aside (a line on stderr) and the next one is used, as training does.
        step, state = evaluation.restore_selected(runner, ckpt, which, shell.example_batch(1), one_device)
        state = runner.host_state(state)
    finally:
        ckpt.close()
    variables = {"params": state.params}
    if state.batch_stats:
        variables["batch_stats"] = state.batch_stats
    return LoadedModel(config, info, step, runner.model, jax.device_get(variables), specs)
