"""The captioning family: an encoder-decoder :class:`mmjax.models.captioner.Captioner` trained with
teacher-forced token cross-entropy (the mean over every non-padding target token of the global
batch); eval decodes greedily or with beam search (jit), scores BLEU-4 and CIDEr-D, and writes
``samples.md``.

Config keys: ``model`` (the captioner's kwargs, ``encoder``, ``target``), ``eval`` (``beam_size``,
``alpha``, ``num_samples``).
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mmjax.losses.caption import token_nll
from mmjax.metrics import caption as caption_metrics
from mmjax.models.captioner import Captioner, generate, strip_bos
from mmjax.sharding import BatchShards
from mmjax.train import files
from mmjax.train.config_access import setting
from mmjax.train.tasks.base import (Batches, Task, TaskConfigError, apply_model, dtype, example_weight, freeze,
                                    gather, real_rows, tokenizer)


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
        encoder = freeze(cfg.pop("encoder", None) or {})
        for key in ("dtype", "param_dtype"):  # left out: the Captioner's own
            if cfg.get(key) is None:
                cfg.pop(key, None)
            else:
                cfg[key] = dtype(cfg[key], f"model.{key}")
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

    def loss_terms(self, apply_fn, params, batch_stats, batch, rng, *, train: bool,
                   shards: BatchShards = BatchShards()):
        del shards  # a token mean: the step's weight reduction makes it global
        logits, new_stats = apply_model(apply_fn, params, batch_stats, batch, rng, train)
        targets = self._target(batch)
        nll, logp = token_nll(logits, targets, float(setting(self.config, "loss.label_smoothing")))
        # Token weights: non-padding targets times the example weight, so the
        # global loss is the mean over every real token of the global batch.
        mask = (targets != 0).astype(jnp.float32) * example_weight(batch, targets.shape[0])[:, None]
        correct = ((jnp.argmax(logp, -1) == targets) * mask).sum()
        return (nll * mask).sum(), (mask.sum(), {"token_accuracy": (correct, mask.sum())}, new_stats)

    def evaluate(self, runner, state, batches: Batches, out_dir: Optional[str] = None,
                 split: Optional[str] = None) -> Dict[str, Any]:
        split, eval_steps = self.split_and_limit(split)
        tok = tokenizer(self.info)
        model: Captioner = runner.model
        variables = self.variables(runner, state)
        beam = int(setting(self.config, "eval.beam_size"))
        alpha = float(setting(self.config, "eval.alpha"))
        if not hasattr(self, "_gen_fn"):
            self._gen_fn = jax.jit(lambda v, b: generate(model, v, b, beam_size=beam, alpha=alpha))
            self._loss_fn = jax.jit(
                lambda v, b: self.loss_terms(model.apply, v["params"], v.get("batch_stats", {}), b,
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
                keep = real_rows(batch)
                placed = self.put(runner, batch)
                tokens, _ = self._gen_fn(variables, placed)
                total, (weight, aux, _) = self._loss_fn(variables, placed)
                loss_sum += float(total)
                weight_sum += float(weight)
                correct += float(aux["token_accuracy"][0])
                tokens = gather(tokens)[keep]
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
                          int(setting(self.config, "eval.num_samples")), out)
        return out


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
