"""The contrastive family: a dual (or multi) encoder trained with CLIP or SigLIP over the global
batch's negatives; eval: retrieval recall@1/5/10 both ways for every tower pair over the whole eval
split, zero-shot classification from class-name prompts when ``text`` is a tower, and a linear probe
on frozen embeddings of ``eval.probe_examples`` training examples.

Config keys: ``model`` (``towers``, ``embed_dim``, ``loss``, ``project``, dtypes), ``eval`` (``ks``,
``prompts``, ``probe_examples``, ``probe_l2``).
"""
from __future__ import annotations

from typing import Any, Dict, Iterator, List, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from mmjax.metrics import retrieval
from mmjax.models.contrastive import ContrastiveModel
from mmjax.sharding import BatchShards
from mmjax.train.config_access import as_dict as _as_dict, get as _get, setting
from mmjax.train.defaults import default
from mmjax.train.tasks.base import (Batches, Task, TaskConfigError, apply_model, dtype, freeze, gather, real_rows,
                                    tokenizer)


class ContrastiveTask(Task):
    """Dual/multi encoder trained with CLIP or SigLIP; retrieval, zero-shot and probe eval."""

    name = "contrastive"
    best_metric = "mean_R@1"
    best_mode = "max"

    def build_model(self) -> ContrastiveModel:
        cfg = dict(self.model_cfg)
        towers = freeze(cfg.pop("towers", None) or {})
        if len(towers) < 2:
            raise TaskConfigError(f"config.model.towers needs at least two modalities, got {sorted(towers)}")
        # Options the config leaves out keep the model's own defaults (its attributes).
        kwargs = {k: cast(cfg[k]) for k, cast in (("embed_dim", int), ("loss", str), ("project", bool))
                  if cfg.get(k) is not None}
        for key in ("dtype", "param_dtype"):
            if cfg.get(key) is not None:
                kwargs[key] = dtype(cfg[key], f"model.{key}")
        return ContrastiveModel(towers=towers, **kwargs)

    def loss_terms(self, apply_fn, params, batch_stats, batch, rng, *, train: bool,
                   shards: BatchShards = BatchShards()):
        # Negatives are the whole global batch in every parallel mode (``shards`` says where its rows are).
        (loss, metrics), new_stats = apply_model(apply_fn, params, batch_stats, batch, rng, train,
                                                 method="loss_fn", shards=shards)
        n = jnp.asarray(jax.tree.leaves(batch["inputs"])[0].shape[0], jnp.float32)
        # The loss is already the global batch mean; as sums it is loss * B over weight B.
        aux = {k: (v * n, n) for k, v in metrics.items() if k != "loss"}
        return loss * n, (n, aux, new_stats)

    def _towers(self) -> List[str]:
        return sorted(_as_dict(self.model_cfg.get("towers")))

    def embed_split(self, runner, state, batches: Iterator[Dict[str, Any]],
                    limit: Optional[int] = None) -> Tuple[Dict[str, np.ndarray], np.ndarray]:
        """Unit embeddings {tower: (N, E)} and labels (N,) of the real (weight > 0) rows."""
        model = runner.model
        variables = self.variables(runner, state)
        if not hasattr(self, "_embed_fn"):
            self._embed_fn = jax.jit(lambda v, b: model.apply(v, b, train=False))
        embs: Dict[str, List[np.ndarray]] = {}
        labels: List[np.ndarray] = []
        count = 0
        with runner.context():
            for batch in batches:
                keep = real_rows(batch)
                out = self._embed_fn(variables, self.put(runner, batch))
                for m, e in out.items():
                    embs.setdefault(m, []).append(gather(e)[keep])
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
        if not hasattr(self, "_ckpt_tok"):  # read once: every eval asks for it
            from mmjax.data.preprocess import checkpoint_tokenizer

            self._ckpt_tok = checkpoint_tokenizer(_get(text, "tokenizer"), int(_get(text, "max_len")),
                                                  "data config: modalities.text.tokenizer")
        return self._ckpt_tok

    def class_prompt_embeddings(self, runner, state) -> Optional[np.ndarray]:
        """(C, P, E) text embeddings of the class-name prompts, or None without text/class names."""
        names = self.info.get("class_names")
        checkpoint_tok = self._checkpoint_tokenizer()
        tok = tokenizer(self.info) if checkpoint_tok is None else None
        if "text" not in self._towers() or not names or (tok is None and checkpoint_tok is None):
            return None
        prompts = list(setting(self.config, "eval.prompts") or default("eval.prompts"))
        texts = [p.format(name) for name in names for p in prompts]
        if checkpoint_tok is not None:  # the prompts are tokenised as the pipeline tokenises the captions
            from mmjax.data.preprocess import tokenize_checkpoint

            ids, mask, _ = tokenize_checkpoint(checkpoint_tok, texts)
        else:
            max_len = int(self.info.get("max_text_len") or 0) or None
            ids, mask = tok.encode_batch(texts, max_len, add_bos=False)
        model = runner.model
        variables = self.variables(runner, state)
        with runner.context():
            emb = jax.jit(lambda v, i, m: model.apply(v, "text", i, m, method="embed"))(
                variables, jnp.asarray(ids), jnp.asarray(mask))
        return np.asarray(emb).reshape(len(names), len(prompts), -1)

    def evaluate(self, runner, state, batches: Batches, out_dir: Optional[str] = None,
                 split: Optional[str] = None) -> Dict[str, Any]:
        split, eval_steps = self.split_and_limit(split)
        bs = int(self.config.batch_size)
        emb, labels = self.embed_split(runner, state, batches(split), eval_steps * bs or None)
        ks = tuple(int(k) for k in (setting(self.config, "eval.ks") or default("eval.ks")))
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
        probe_n = int(setting(self.config, "eval.probe_examples"))
        num_classes = int(self.info.get("num_classes") or 0)
        if probe_n > 0 and num_classes > 1:
            train_emb, train_labels = self.embed_split(runner, state, batches("train"), probe_n)
            for m in towers:
                params, _ = retrieval.linear_probe(jnp.asarray(train_emb[m]), jnp.asarray(train_labels), num_classes,
                                                   l2=float(setting(self.config, "eval.probe_l2")))
                pred = np.asarray(retrieval.linear_probe_predict(params, jnp.asarray(emb[m])))
                out[f"linear_probe/{m}/accuracy"] = float(np.mean(pred == labels))
            out["linear_probe/train_examples"] = float(len(train_labels))
        return out
