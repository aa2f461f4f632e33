"""SYNTHETIC data, generated in memory, for tests and smoke runs (not a benchmark).

Two sources, chosen by ``data.name``:

``"synthetic"``: two vector modalities ``a`` (B, dims["a"]) and ``b``
(B, dims["b"]) drawn from a standard normal; the label is
``argmax(a @ W_a + b @ W_b)`` for fixed random matrices, so it depends on
*both* modalities (neither alone determines it).

``"synthetic_multimodal"``: paired image/text data for the contrastive and
captioning runs. Every example has a class ``c`` (a colour word) and two
ordered attributes ``a1 != a2`` (animal words). Its caption is the text
"a <colour> <animal1> and a <animal2>" (six words, so BLEU-4 has 4-grams to
match) tokenised with a :class:`mmjax.tokenizer.WordTokenizer` (ids 0..3
pad/unk/bos/eos, then the words), and its "image" (B, image_dim) is

    image = E_class[c] + E_attr[a1] + 0.5 E_attr[a2] + noise_std * N(0, I)

for fixed random tables drawn from ``rule_seed``. The caption is a function of
the image (learnable), the pairs are distinct enough for retrieval to be
meaningful, and the label ``c`` is named by ``class_names`` so that zero-shot
prompts ("a red") can be scored.

Every batch of either source is a pure function of (seed, split, step): a run
that restarts at step s sees exactly the batches it would have seen, and each
process takes its own equal slice of the global batch.
"""
from __future__ import annotations

import math
import zlib
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Type

import numpy as np

from mmjax.data.errors import DataConfigError
from mmjax.tokenizer import EOS_ID, SPECIALS, WordTokenizer

NAMES = ("synthetic", "synthetic_multimodal")
SPLITS = ("train", "test", "validation")
FUNCTION_WORDS = ("a", "and")
COLOURS = ("red", "green", "blue", "gold", "pink", "grey", "black", "white")
ANIMALS = ("cat", "dog", "fish", "bird", "frog", "bear", "owl", "fox", "deer", "seal", "wolf", "hare")

Examples = Callable[[Mapping[str, Any], int, str, int, int], Dict[str, Any]]


class SyntheticDataError(DataConfigError):
    """Bad ``config.data`` for a synthetic source."""


def _rng(seed: int, *parts: Any) -> np.random.RandomState:
    return np.random.RandomState(zlib.crc32(repr((seed,) + parts).encode()))


# --- "synthetic": two vector modalities ------------------------------------------------------------------


def vectors_info(data_config: Mapping[str, Any]) -> Dict[str, Any]:
    """{"num_classes": C, "modalities": ["a", "b"], "dims": {"a": Da, "b": Db}, "synthetic": True}."""
    dims = dict(data_config.get("dims") or {"a": 6, "b": 4})
    return {"num_classes": int(data_config.get("num_classes", 2)), "modalities": sorted(dims),
            "dims": dims, "synthetic": True}


def _vector_examples(data_config: Mapping[str, Any], seed: int, split: str, index: int, n: int) -> Dict[str, Any]:
    meta = vectors_info(data_config)
    dims, c = meta["dims"], meta["num_classes"]
    # The labelling rule depends only on the data seed, not on the split.
    rule = _rng(int(data_config.get("rule_seed", 0)), "rule")
    weights = {m: rule.randn(dims[m], c) for m in sorted(dims)}
    r = _rng(seed, split, index)
    inputs = {m: r.randn(n, dims[m]).astype(np.float32) for m in sorted(dims)}
    score = sum(inputs[m] @ weights[m] for m in sorted(dims))
    score = score + float(data_config.get("label_noise", 0.0)) * r.randn(*score.shape)
    label = np.argmax(score, axis=-1).astype(np.int32)
    missing = float(data_config.get("missing_rate", 0.0))
    modality_mask = {m: (r.rand(n) >= missing) for m in sorted(dims)}
    return {"inputs": inputs, "modality_mask": modality_mask, "label": label}


# --- "synthetic_multimodal": paired image / caption ------------------------------------------------------


def _sizes(data_config: Mapping[str, Any]):
    c = int(data_config.get("num_classes", 4))
    a = int(data_config.get("num_attributes", 6))
    if not 2 <= c <= len(COLOURS):
        raise SyntheticDataError(f"data.num_classes must be in [2, {len(COLOURS)}], got {c}")
    if not 2 <= a <= len(ANIMALS):
        raise SyntheticDataError(f"data.num_attributes must be in [2, {len(ANIMALS)}], got {a}")
    return c, a


def image_text_tokenizer(data_config: Mapping[str, Any]) -> WordTokenizer:
    """The fixed word vocabulary: specials, "a", "and", colours, animals."""
    c, a = _sizes(data_config)
    return WordTokenizer(list(SPECIALS) + list(FUNCTION_WORDS) + list(COLOURS[:c]) + list(ANIMALS[:a]))


def image_text_info(data_config: Mapping[str, Any]) -> Dict[str, Any]:
    """Classes, colour class names, the tokenizer and the text / image sizes of the image-text source."""
    c, a = _sizes(data_config)
    tok = image_text_tokenizer(data_config)
    return {"num_classes": c, "class_names": list(COLOURS[:c]), "modalities": ["image", "text"],
            "tokenizer": tok, "vocab_size": tok.vocab_size, "max_text_len": int(data_config.get("max_len", 8)),
            "image_dim": int(data_config.get("image_dim", 12)), "synthetic": True}


def _image_text_examples(data_config: Mapping[str, Any], seed: int, split: str, index: int,
                         n: int) -> Dict[str, Any]:
    c, a = _sizes(data_config)
    meta = image_text_info(data_config)
    dim, max_len = meta["image_dim"], meta["max_text_len"]
    if max_len < 7:
        raise SyntheticDataError(f"data.max_len must be >= 7 (6 words + EOS), got {max_len}")
    rule = _rng(int(data_config.get("rule_seed", 0)), "tables")
    e_class, e_attr = rule.randn(c, dim), rule.randn(a, dim)
    r = _rng(seed, split, index)
    label = r.randint(0, c, n)
    a1 = r.randint(0, a, n)
    a2 = (a1 + 1 + r.randint(0, a - 1, n)) % a  # a2 != a1
    image = e_class[label] + e_attr[a1] + 0.5 * e_attr[a2]
    image = image + float(data_config.get("noise_std", 0.1)) * r.randn(n, dim)
    w_a, w_and = len(SPECIALS), len(SPECIALS) + 1
    colour0 = len(SPECIALS) + len(FUNCTION_WORDS)
    ids = np.zeros((n, max_len), np.int32)
    ids[:, :7] = np.stack([np.full(n, w_a), colour0 + label, colour0 + c + a1, np.full(n, w_and),
                           np.full(n, w_a), colour0 + c + a2, np.full(n, EOS_ID)], axis=1)
    return {
        "inputs": {"image": image.astype(np.float32), "text": ids},
        "token_mask": {"text": ids != 0},
        "modality_mask": {"image": np.ones(n, bool), "text": np.ones(n, bool)},
        "label": label.astype(np.int32),
    }


# --- batching shared by both sources ----------------------------------------------------------------------


def _process_slice(batch: Dict[str, Any], process_index: int, process_count: int,
                   error: Type[Exception]) -> Dict[str, Any]:
    import jax
    n = len(batch["label"])
    if n % process_count:
        raise error(f"synthetic data: batch size {n} is not divisible by {process_count} processes")
    k = n // process_count
    return jax.tree.map(lambda x: x[process_index * k:(process_index + 1) * k], batch)


def batches(examples: Examples, data_config: Mapping[str, Any], split: str, *, global_batch_size: int, seed: int,
            train: bool, start_step: int = 0, process_index: Optional[int] = None,
            process_count: Optional[int] = None,
            error: Type[Exception] = SyntheticDataError) -> Iterator[Dict[str, Any]]:
    """The batching every in-memory synthetic source shares, around its
    ``examples(data_config, seed, split, index, n)`` generator.

    Train: endless, batch ``s`` generated from (seed, split, s) for s >= start_step.
    Eval (``train=False``): ``data.eval_examples`` examples in batches of
    ``global_batch_size``; the last batch is padded with ``weight`` 0 rows.
    Each process keeps its own contiguous slice of every global batch
    (leading dimension ``global_batch_size // process_count``).
    """
    import jax
    if split not in SPLITS:
        raise error(f"synthetic data: unknown split {split!r}; known: {SPLITS}")
    pi = jax.process_index() if process_index is None else process_index
    pc = jax.process_count() if process_count is None else process_count
    if train:
        step = start_step
        while True:
            batch = examples(data_config, seed, split, step, global_batch_size)
            batch["weight"] = np.ones(global_batch_size, np.float32)
            yield _process_slice(batch, pi, pc, error)
            step += 1
    total = int(data_config.get("eval_examples", 64))
    for i in range(math.ceil(total / global_batch_size)):
        batch = examples(data_config, seed, split, i, global_batch_size)
        real = min(global_batch_size, total - i * global_batch_size)
        batch["weight"] = (np.arange(global_batch_size) < real).astype(np.float32)
        yield _process_slice(batch, pi, pc, error)


_SOURCES = {"synthetic": (vectors_info, _vector_examples),
            "synthetic_multimodal": (image_text_info, _image_text_examples)}


def _source(data_config: Mapping[str, Any]):
    name = data_config.get("name")
    if name not in _SOURCES:
        raise SyntheticDataError(f"synthetic data: unknown data.name {name!r}; known: {NAMES}")
    return _SOURCES[name]


def info(data_config: Mapping[str, Any]) -> Dict[str, Any]:
    """The dataset info of the source ``data_config["name"]`` names (see :func:`vectors_info`,
    :func:`image_text_info`)."""
    return _source(data_config)[0](data_config)


def make_iterator(data_config: Mapping[str, Any], split: str, *, global_batch_size: int, seed: int,
                  train: bool, start_step: int = 0, process_index: Optional[int] = None,
                  process_count: Optional[int] = None) -> Iterator[Dict[str, Any]]:
    """Batches of this process's rows from the source ``data_config["name"]`` names (see :func:`batches`)."""
    return batches(_source(data_config)[1], data_config, split, global_batch_size=global_batch_size, seed=seed,
                   train=train, start_step=start_step, process_index=process_index, process_count=process_count)
