"""SYNTHETIC paired image/text data, generated in memory, for the contrastive and
captioning smoke runs and CLI tests (not a benchmark).

Every example has a class ``c`` (a colour word) and two ordered attributes
``a1 != a2`` (animal words). Its caption is the text "a <colour> <animal1>
and a <animal2>" (six words, so BLEU-4 has 4-grams to match) tokenised with a :class:`mmjax.tokenizer.WordTokenizer` (ids
0..3 pad/unk/bos/eos, then the words), and its "image" is a feature vector

    image = E_class[c] + E_attr[a1] + 0.5 E_attr[a2] + noise_std * N(0, I)

for fixed random tables drawn from ``rule_seed``. The caption is therefore a
function of the image (learnable), the pairs are distinct enough for retrieval
to be meaningful, and the label ``c`` is named by ``class_names`` so that
zero-shot prompts ("a red") can be scored. Batches are a pure function of
(seed, split, step) and each process takes its equal slice, exactly like
:mod:`experiments.synthetic`.
"""
from __future__ import annotations

import zlib
from typing import Any, Dict, Iterator, Mapping, Optional

import numpy as np

from experiments import synthetic
from mmjax.tokenizer import EOS_ID, SPECIALS, WordTokenizer

SPLITS = synthetic.SPLITS
FUNCTION_WORDS = ("a", "and")
COLOURS = ("red", "green", "blue", "gold", "pink", "grey", "black", "white")
ANIMALS = ("cat", "dog", "fish", "bird", "frog", "bear", "owl", "fox", "deer", "seal", "wolf", "hare")


class SyntheticDataError(ValueError):
    """Bad ``config.data`` for the synthetic multimodal source."""


def _rng(seed: int, *parts: Any) -> np.random.RandomState:
    return np.random.RandomState(zlib.crc32(repr((seed,) + parts).encode()))


def _sizes(data_config: Mapping[str, Any]):
    c = int(data_config.get("num_classes", 4))
    a = int(data_config.get("num_attributes", 6))
    if not 2 <= c <= len(COLOURS):
        raise SyntheticDataError(f"data.num_classes must be in [2, {len(COLOURS)}], got {c}")
    if not 2 <= a <= len(ANIMALS):
        raise SyntheticDataError(f"data.num_attributes must be in [2, {len(ANIMALS)}], got {a}")
    return c, a


def tokenizer(data_config: Mapping[str, Any]) -> WordTokenizer:
    """The fixed word vocabulary: specials, "a", "and", colours, animals."""
    c, a = _sizes(data_config)
    return WordTokenizer(list(SPECIALS) + list(FUNCTION_WORDS) + list(COLOURS[:c]) + list(ANIMALS[:a]))


def info(data_config: Mapping[str, Any]) -> Dict[str, Any]:
    c, a = _sizes(data_config)
    tok = tokenizer(data_config)
    return {"num_classes": c, "class_names": list(COLOURS[:c]), "modalities": ["image", "text"],
            "tokenizer": tok, "vocab_size": tok.vocab_size, "max_text_len": int(data_config.get("max_len", 8)),
            "image_dim": int(data_config.get("image_dim", 12)), "synthetic": True}


def _examples(data_config: Mapping[str, Any], seed: int, split: str, index: int, n: int) -> Dict[str, Any]:
    c, a = _sizes(data_config)
    meta = info(data_config)
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


def make_iterator(data_config: Mapping[str, Any], split: str, *, global_batch_size: int, seed: int,
                  train: bool, start_step: int = 0, process_index: Optional[int] = None,
                  process_count: Optional[int] = None) -> Iterator[Dict[str, Any]]:
    """Batches of this process's rows (same contract as :func:`experiments.synthetic.make_iterator`)."""
    return synthetic.batches(_examples, data_config, split, global_batch_size=global_batch_size, seed=seed,
                             train=train, start_step=start_step, process_index=process_index,
                             process_count=process_count, error=SyntheticDataError)
