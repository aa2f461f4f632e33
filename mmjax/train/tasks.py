"""Model families the train loop knows, selected by ``config.task``.

A :class:`Task` bundles what differs between families while the loop, the
parallel runner, checkpoints and logs stay the same:

* ``build_model()``: the linen module, called as ``model.apply(variables, batch, train=...)``;
* ``loss_terms(state, params, batch_stats, batch, rng, *, train)`` ->
  ``(loss_sum, (weight_sum, aux_sums, new_batch_stats))``, the contract of
  :func:`mmjax.train.step.train_step` (which divides sums by the global
  weight, so the reported loss is the exact global mean in every parallel mode);
* ``evaluate(runner, state, batches, out_dir=None, split=None)`` -> metrics over the whole split
  (default ``config.eval_split``).

Families:

* ``classification`` (default): :class:`mmjax.models.classifier.Classifier`;
  its steps and evaluation are the loop's own (this task only names them).
* ``contrastive``: :class:`mmjax.models.contrastive.ContrastiveModel`. In the
  ``sharded`` mode the loss is computed with the sharded CLIP / SigLIP losses
  over the runner's mesh, so every example of the *global* batch is a
  negative for every other one; ``single`` sees the whole batch anyway;
  ``pmap`` uses the per-device batch as negatives (a documented limitation of
  that legacy mode). Evaluation: retrieval recall@1/5/10 both ways for every
  tower pair over the whole eval split, zero-shot classification from
  class-name prompts when ``text`` is a tower, and a linear probe on frozen
  embeddings of ``eval.probe_examples`` training examples.
* ``captioning``: :class:`mmjax.models.captioner.Captioner`, teacher-forced
  token cross-entropy (loss = mean over all non-padding target tokens of the
  global batch); evaluation decodes greedily or with beam search (jit),
  scores BLEU-4 and CIDEr-D, and writes ``samples.md``.

Config keys: ``task``, ``model`` (the family's kwargs), ``eval`` (``ks``,
``prompts``, ``probe_examples``, ``probe_l2``, ``beam_size``, ``alpha``,
``num_samples``).
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmjax import caption_metrics
from mmjax import errors
from mmjax.models import retrieval
from mmjax.models.captioner import Captioner, generate, strip_bos
from mmjax.models.contrastive import ContrastiveModel
from mmjax.train import files
from mmjax.train.config_access import as_dict as _as_dict, get as _get

PyTree = Any
Batches = Callable[[str], Iterator[Dict[str, Any]]]
TASKS = ("classification", "contrastive", "captioning")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


class TaskConfigError(errors.ConfigError):
    """Bad ``config.task`` or task-specific config (model kwargs, eval options, dataset info)."""


def _dtype(name: Any, key: str):
    if not isinstance(name, str):
        return name
    if name not in DTYPES:
        raise TaskConfigError(f"{key} must be one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


def _freeze(x: Any) -> Any:
    """Nested dicts/lists -> hashable-friendly tuples where linen attributes need them."""
    if isinstance(x, Mapping):
        return {k: _freeze(v) for k, v in x.items()}
    if isinstance(x, list):
        return tuple(_freeze(v) for v in x)
    return x


def _tokenizer(info: Mapping[str, Any]):
    tok = info.get("tokenizer")
    if tok is None or hasattr(tok, "decode"):
        return tok
    from mmjax import tokenizer as tok_lib
    if isinstance(tok, str) and os.path.exists(tok):
        return tok_lib.load(tok)
    return tok_lib.from_json(tok)


def _apply(state, params, batch_stats, batch, rng, train, **kwargs):
    """model.apply with batch_stats handled as the classifier step does."""
    variables = {"params": params}
    if batch_stats:
        variables["batch_stats"] = batch_stats
    if batch_stats and train:
        out, updates = state.apply_fn(variables, batch, train=True, rngs={"dropout": rng},
                                      mutable=["batch_stats"], **kwargs)
        return out, updates["batch_stats"]
    return state.apply_fn(variables, batch, train=train, rngs={"dropout": rng}, **kwargs), batch_stats


def _example_weight(batch: Mapping[str, Any], n: int) -> jax.Array:
    w = batch.get("weight")
    return jnp.ones((n,), jnp.float32) if w is None else w.astype(jnp.float32)


def _gather(x: Any) -> np.ndarray:
    """A device array (possibly spanning processes) -> the full numpy array."""
    if jax.process_count() > 1 and isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))


class Task:
    """Base class; see the module docstring for the contract."""

    name = ""
    best_metric = "loss"
    best_mode = "min"

    def __init__(self, config: Any, info: Mapping[str, Any]):
        self.config = config
        self.info = dict(info)
        self.model_cfg = _as_dict(_get(config, "model", {}))
        self.eval_cfg = _as_dict(_get(config, "eval", {}))
        self.mesh = None
        self.mode = "single"

    def attach(self, runner) -> "Task":
        """Learns the parallel mode and mesh of the runner that will run the steps."""
        self.mode = runner.mode
        self.mesh = runner.mesh
        return self

    def build_model(self) -> nn.Module:
        raise NotImplementedError

    def loss_terms(self, state, params, batch_stats, batch, rng, *, train: bool):
        raise NotImplementedError

    def evaluate(self, runner, state, batches: Batches, out_dir: Optional[str] = None,
                 split: Optional[str] = None) -> Dict[str, Any]:
        raise NotImplementedError

    # Helpers for evaluation: params on the host layout, batches on the runner's layout.
    def _variables(self, runner, state) -> Dict[str, PyTree]:
        host = runner.host_state(state)
        return host.variables

    def _put(self, runner, batch: Mapping[str, Any]) -> PyTree:
        if runner.mode == "sharded":
            return runner.put_batch(batch)
        return jax.tree.map(np.asarray, dict(batch))


class ClassificationTask(Task):
    """The classifier; the loop runs its own step and evaluation for it."""

    name = "classification"
    best_metric = "accuracy"
    best_mode = "max"

    def build_model(self) -> nn.Module:
        from mmjax.models.classifier import build_classifier
        return build_classifier(self.model_cfg, int(self.info["num_classes"]))


# --------------------------------------------------------------------------- contrastive


class ContrastiveTask(Task):
    """Dual/multi encoder trained with CLIP or SigLIP; retrieval, zero-shot and probe eval."""

    name = "contrastive"
    best_metric = "mean_R@1"
    best_mode = "max"

    def build_model(self) -> ContrastiveModel:
        cfg = dict(self.model_cfg)
        towers = _freeze(cfg.pop("towers", None) or {})
        if len(towers) < 2:
            raise TaskConfigError(f"config.model.towers needs at least two modalities, got {sorted(towers)}")
        return ContrastiveModel(
            towers=towers,
            embed_dim=int(cfg.get("embed_dim", 128)),
            loss=str(cfg.get("loss", "clip")),
            project=bool(cfg.get("project", True)),
            dtype=_dtype(cfg.get("dtype", "float32"), "model.dtype"),
            param_dtype=_dtype(cfg.get("param_dtype", "float32"), "model.param_dtype"),
        )

    def loss_terms(self, state, params, batch_stats, batch, rng, *, train: bool):
        kwargs = {"method": "loss_fn"}
        if self.mode == "sharded" and self.mesh is not None:
            # Global-batch negatives: the loss runs under shard_map over the batch axes.
            kwargs.update(mesh=self.mesh, axis_names=("data", "fsdp"))
        (loss, metrics), new_stats = _apply(state, params, batch_stats, batch, rng, train, **kwargs)
        n = jnp.asarray(jax.tree.leaves(batch["inputs"])[0].shape[0], jnp.float32)
        # The loss is already a batch mean; as sums it is loss * B over weight B.
        aux = {k: v * n for k, v in metrics.items() if k != "loss"}
        return loss * n, (n, aux, new_stats)

    def _towers(self) -> List[str]:
        return sorted(_as_dict(self.model_cfg.get("towers")))

    def embed_split(self, runner, state, batches: Iterator[Dict[str, Any]],
                    limit: Optional[int] = None) -> Tuple[Dict[str, np.ndarray], np.ndarray]:
        """Unit embeddings {tower: (N, E)} and labels (N,) of the real (weight > 0) rows."""
        model = runner.model
        variables = self._variables(runner, state)
        if not hasattr(self, "_embed_fn"):
            self._embed_fn = jax.jit(lambda v, b: model.apply(v, b, train=False))
        embs: Dict[str, List[np.ndarray]] = {}
        labels: List[np.ndarray] = []
        count = 0
        with runner.context():
            for batch in batches:
                keep = np.asarray(batch.get("weight", np.ones(len(batch["label"]))), np.float32) > 0
                out = self._embed_fn(variables, self._put(runner, batch))
                for m, e in out.items():
                    embs.setdefault(m, []).append(_gather(e)[keep])
                labels.append(np.asarray(batch["label"])[keep])
                count += int(keep.sum())
                if limit and count >= limit:
                    break
        if not labels:
            raise ValueError("contrastive evaluation got no batches (check eval_split / data)")
        out_e = {m: np.concatenate(v)[:limit] for m, v in embs.items()}
        return out_e, np.concatenate(labels)[:limit]

    def _checkpoint_tokenizer(self):
        """The text modality's ``tokenizer`` (a checkpoint directory) as the pipeline loads it, or None."""
        text = _get(_get(_get(self.config, "data", None), "modalities", None), "text", None)
        if not _get(text, "tokenizer", None):
            return None
        from mmjax.data.preprocess import checkpoint_tokenizer

        return checkpoint_tokenizer(_get(text, "tokenizer"), int(_get(text, "max_len")),
                                    "data config: modalities.text.tokenizer")

    def class_prompt_embeddings(self, runner, state) -> Optional[np.ndarray]:
        """(C, P, E) text embeddings of the class-name prompts, or None without text/class names."""
        names = self.info.get("class_names")
        checkpoint_tok = self._checkpoint_tokenizer()
        tok = _tokenizer(self.info) if checkpoint_tok is None else None
        if "text" not in self._towers() or not names or (tok is None and checkpoint_tok is None):
            return None
        prompts = list(self.eval_cfg.get("prompts") or ("{}",))
        texts = [p.format(name) for name in names for p in prompts]
        if checkpoint_tok is not None:  # the prompts are tokenised as the pipeline tokenises the captions
            from mmjax.data.preprocess import tokenize_checkpoint

            ids, mask, _ = tokenize_checkpoint(checkpoint_tok, texts)
        else:
            max_len = int(self.info.get("max_text_len") or 0) or None
            ids, mask = tok.encode_batch(texts, max_len, add_bos=False)
        model = runner.model
        variables = self._variables(runner, state)
        with runner.context():
            emb = jax.jit(lambda v, i, m: model.apply(v, "text", i, m, method="embed"))(
                variables, jnp.asarray(ids), jnp.asarray(mask))
        return np.asarray(emb).reshape(len(names), len(prompts), -1)

    def evaluate(self, runner, state, batches: Batches, out_dir: Optional[str] = None,
                 split: Optional[str] = None) -> Dict[str, Any]:
        split = split or _get(self.config, "eval_split", "test")
        eval_steps = int(_get(self.config, "eval_steps", 0) or 0)
        bs = int(self.config.batch_size)
        emb, labels = self.embed_split(runner, state, batches(split), eval_steps * bs or None)
        ks = tuple(int(k) for k in (self.eval_cfg.get("ks") or (1, 5, 10)))
        out: Dict[str, Any] = {"num_examples": float(len(labels))}
        towers = sorted(emb)
        r1 = []
        for i, a in enumerate(towers):
            for b in towers[i + 1:]:
                for k, v in retrieval.retrieval_metrics(jnp.asarray(emb[a]), jnp.asarray(emb[b]), (a, b), ks).items():
                    out[f"retrieval/{k}"] = float(v)
                    if k.endswith("/R@1"):
                        r1.append(float(v))
                if int(self.info.get("num_classes") or 0) > 1:
                    # class-level: a key of the query's class counts as a hit (pairs that share only
                    # a class, e.g. a digit image and another speaker's digit, cannot match instance-wise)
                    lab = jnp.asarray(labels)
                    for k, v in retrieval.retrieval_metrics(jnp.asarray(emb[a]), jnp.asarray(emb[b]), (a, b), ks,
                                                            a_ids=lab, b_ids=lab).items():
                        out[f"class_retrieval/{k}"] = float(v)
        out["mean_R@1"] = float(np.mean(r1))
        classes = self.class_prompt_embeddings(runner, state)
        if classes is not None:
            for m in towers:
                if m != "text":
                    out[f"zero_shot/{m}/accuracy"] = float(
                        retrieval.zero_shot_accuracy(jnp.asarray(emb[m]), jnp.asarray(classes), jnp.asarray(labels)))
        probe_n = int(self.eval_cfg.get("probe_examples", 512))
        num_classes = int(self.info.get("num_classes") or 0)
        if probe_n > 0 and num_classes > 1:
            train_emb, train_labels = self.embed_split(runner, state, batches("train"), probe_n)
            for m in towers:
                params, _ = retrieval.linear_probe(jnp.asarray(train_emb[m]), jnp.asarray(train_labels), num_classes,
                                                   l2=float(self.eval_cfg.get("probe_l2", 1e-4)))
                pred = np.asarray(retrieval.linear_probe_predict(params, jnp.asarray(emb[m])))
                out[f"linear_probe/{m}/accuracy"] = float(np.mean(pred == labels))
            out["linear_probe/train_examples"] = float(len(train_labels))
        return out


# --------------------------------------------------------------------------- captioning


class CaptioningTask(Task):
    """Encoder-decoder captioner; teacher-forced loss, decoded BLEU-4 / CIDEr-D eval."""

    name = "captioning"
    best_metric = "cider_d"
    best_mode = "max"

    def build_model(self) -> Captioner:
        cfg = dict(self.model_cfg)
        vocab = cfg.pop("vocab_size", None) or self.info.get("vocab_size")
        max_len = cfg.pop("max_len", None) or self.info.get("max_text_len")
        if not vocab or not max_len:
            raise TaskConfigError("captioning needs model.vocab_size and model.max_len (or dataset info with "
                                  "vocab_size / max_text_len)")
        encoder = _freeze(cfg.pop("encoder", None) or {})
        cfg["dtype"] = _dtype(cfg.get("dtype", "float32"), "model.dtype")
        cfg["param_dtype"] = _dtype(cfg.get("param_dtype", "float32"), "model.param_dtype")
        known = set(Captioner.__dataclass_fields__) - {"parent", "name", "encoder", "vocab_size", "max_len"}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise TaskConfigError(f"config.model has keys the captioner does not take: {unknown}")
        return Captioner(encoder=encoder, vocab_size=int(vocab), max_len=int(max_len), **cfg)

    def _target(self, batch):
        """The targets the Captioner is trained on (without a leading BOS, as it sees them)."""
        targets = batch["inputs"][self.model_cfg.get("target", "text")]
        # The model's own defaults, so a config that leaves the ids out strips what the model expects.
        return strip_bos(targets, int(self.model_cfg.get("bos_id", Captioner.bos_id)),
                         int(self.model_cfg.get("pad_id", Captioner.pad_id)))

    def loss_terms(self, state, params, batch_stats, batch, rng, *, train: bool):
        logits, new_stats = _apply(state, params, batch_stats, batch, rng, train)
        targets = self._target(batch)
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
        smoothing = float(_get(_get(self.config, "loss", {}), "label_smoothing", 0.0))
        if smoothing:
            nll = (1 - smoothing) * nll - smoothing * logp.mean(-1)
        # Token weights: non-padding targets times the example weight, so the
        # global loss is the mean over every real token of the global batch.
        mask = (targets != 0).astype(jnp.float32) * _example_weight(batch, targets.shape[0])[:, None]
        correct = ((jnp.argmax(logp, -1) == targets) * mask).sum()
        return (nll * mask).sum(), (mask.sum(), {"token_accuracy": correct}, new_stats)

    def evaluate(self, runner, state, batches: Batches, out_dir: Optional[str] = None,
                 split: Optional[str] = None) -> Dict[str, Any]:
        split = split or _get(self.config, "eval_split", "test")
        eval_steps = int(_get(self.config, "eval_steps", 0) or 0)
        tok = _tokenizer(self.info)
        model: Captioner = runner.model
        variables = self._variables(runner, state)
        beam = int(self.eval_cfg.get("beam_size", 1))
        alpha = float(self.eval_cfg.get("alpha", 0.6))
        if not hasattr(self, "_gen_fn"):
            self._gen_fn = jax.jit(lambda v, b: generate(model, v, b, beam_size=beam, alpha=alpha))
            self._loss_fn = jax.jit(
                lambda v, b: self.loss_terms(_Applier(model.apply), v["params"], v.get("batch_stats", {}), b,
                                             jax.random.PRNGKey(0), train=False))

        def text(ids) -> str:
            ids = [int(i) for i in ids if int(i) != 0]
            if tok is None:
                return " ".join(str(i) for i in ids if i not in (model.bos_id, model.eos_id))
            return tok.decode(ids)

        hyps: List[str] = []
        refs: List[List[str]] = []
        loss_sum = weight_sum = correct = 0.0
        with runner.context():
            for i, batch in enumerate(batches(split)):
                if eval_steps and i >= eval_steps:
                    break
                keep = np.asarray(batch.get("weight", np.ones(len(batch["label"]))), np.float32) > 0
                placed = self._put(runner, batch)
                tokens, _ = self._gen_fn(variables, placed)
                total, (weight, aux, _) = self._loss_fn(variables, placed)
                loss_sum += float(total)
                weight_sum += float(weight)
                correct += float(aux["token_accuracy"])
                tokens = _gather(tokens)[keep]
                hyps.extend(text(t) for t in tokens)
                if "references" in batch:  # (B, R, L) ids, all-padding rows ignored
                    for row in np.asarray(batch["references"])[keep]:
                        refs.append([text(r) for r in row if np.any(r != 0)])
                else:
                    refs.extend([text(r)] for r in np.asarray(self._target(batch))[keep])
        if not hyps:
            raise ValueError("captioning evaluation got no batches (check eval_split / eval_steps)")
        bleu = caption_metrics.corpus_bleu(hyps, refs)
        cider = caption_metrics.cider_d(hyps, refs)
        out = {
            "loss": loss_sum / max(weight_sum, 1e-12),
            "token_accuracy": correct / max(weight_sum, 1e-12),
            "bleu4": float(bleu["bleu"]),
            "cider_d": float(cider["cider_d"]),
            "exact_match": float(np.mean([h in r for h, r in zip(hyps, refs)])),
            "num_examples": float(len(hyps)),
            "decoding": "greedy" if beam == 1 else f"beam {beam} (alpha {alpha})",
        }
        if out_dir is not None and jax.process_index() == 0:
            write_samples(os.path.join(out_dir, "samples.md"), hyps, refs, cider["per_image"],
                          int(self.eval_cfg.get("num_samples", 20)), out)
        return out


class _Applier:
    """The ``state`` stand-in :meth:`CaptioningTask.loss_terms` needs at eval (only ``apply_fn``)."""

    def __init__(self, apply_fn):
        self.apply_fn = apply_fn


def write_samples(path: str, hyps: Sequence[str], refs: Sequence[Sequence[str]], scores: Sequence[float],
                  n: int, metrics: Mapping[str, Any]) -> None:
    """Markdown table of the first ``n`` generated captions next to their references (``path`` local or gs://)."""
    esc = lambda s: s.replace("|", "\\|") or "(empty)"  # noqa: E731
    lines = ["# Sample captions", "",
             f"Decoding: {metrics.get('decoding')}; BLEU-4 {metrics['bleu4']:.2f}, CIDEr-D {metrics['cider_d']:.3f} "
             f"over {int(metrics['num_examples'])} examples.", "",
             "| # | generated | references | CIDEr-D |", "|---|---|---|---|"]
    for i in range(min(n, len(hyps))):
        lines.append(f"| {i} | {esc(hyps[i])} | {' / '.join(esc(r) for r in refs[i])} | {float(scores[i]):.3f} |")
    files.write_text(path, "\n".join(lines) + "\n")


REGISTRY = {"classification": ClassificationTask, "contrastive": ContrastiveTask, "captioning": CaptioningTask}


def get_task(config: Any, info: Mapping[str, Any]) -> Task:
    """The task named by ``config.task`` (default "classification")."""
    name = _get(config, "task", "classification") or "classification"
    if name not in REGISTRY:
        raise TaskConfigError(f"config.task must be one of {TASKS}, got {name!r}")
    return REGISTRY[name](config, info)


__all__ = ["CaptioningTask", "ClassificationTask", "ContrastiveTask", "Task", "TaskConfigError", "get_task",
           "write_samples", "TASKS"]
