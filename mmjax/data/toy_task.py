"""A synthetic two-modality task whose label needs both modalities.

Used by ``python -m experiments toy`` and by ``tests/fusion/test_learning.py``
(with :func:`mmjax.train.full_batch.fit_full_batch` and the tiny block configs of
:mod:`mmjax.fusion.tiny_configs`).

Data: each example draws two independent hidden classes c_a, c_b in
{0..k-1}. Modality "a" is a (T_a, d_a) token sequence, every token the
prototype of c_a plus Gaussian noise; modality "b" likewise (T_b, d_b) from
c_b. Some "a" sequences end in a padded token holding large garbage, marked
False in the token mask. The label is

* ``interaction="pair"`` (default): y = k·c_a + c_b, k² classes. Either
  modality alone identifies only one of the two factors, so no single-modality
  model can exceed 1/k accuracy (0.5 for k=2), while the pair determines y.
  Additive fusion (concat/sum + a linear head, decision-level ``late``) can
  solve it, so every fusion block is expected to.
* ``interaction="xor"``: y = (c_a + c_b) mod k, k classes. Each modality
  alone is at chance 1/k, and no model whose logits are a sum of a function of
  "a" and a function of "b" can solve it (for k=2 this is XOR): it separates
  blocks with multiplicative or attention interactions from additive ones.

Batches are the library's batch dicts (:mod:`mmjax.data.pipeline`), numpy on the host.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Tuple

import numpy as np

from mmjax import errors
from mmjax.data.errors import DataConfigError

INTERACTIONS = ("pair", "xor")


@dataclasses.dataclass(frozen=True)
class ToyTask:
    """The task's shape and difficulty (see the module docstring)."""

    k: int = 2
    interaction: str = "pair"
    dims: Tuple[Tuple[str, int], ...] = (("a", 6), ("b", 5))
    lengths: Tuple[Tuple[str, int], ...] = (("a", 3), ("b", 2))
    noise: float = 0.5
    seed: int = 0  # fixes the class prototypes, shared by train and test splits

    def __post_init__(self):
        if self.interaction not in INTERACTIONS:
            raise DataConfigError(f"toy task: interaction must be one of {INTERACTIONS}, got {self.interaction!r}")
        if self.k < 2:
            raise DataConfigError(f"toy task: k must be >= 2, got {self.k}")

    @property
    def modalities(self) -> Tuple[str, ...]:
        return tuple(m for m, _ in self.dims)

    @property
    def num_classes(self) -> int:
        return self.k * self.k if self.interaction == "pair" else self.k

    @property
    def single_modality_max_accuracy(self) -> float:
        """Best accuracy any model can reach from one modality alone (exact, by construction)."""
        return 1.0 / self.k

    def sample(self, n: int, seed: int) -> Dict[str, Any]:
        """n examples -> {"inputs": {m: (n, T_m, d_m)}, "token_mask": {m: (n, T_m)}, "label": (n,)}."""
        proto_rng = np.random.default_rng(self.seed)
        protos = {m: proto_rng.normal(size=(self.k, d)) for m, d in self.dims}
        rng = np.random.default_rng([self.seed, seed])
        c = {m: rng.integers(0, self.k, size=n) for m, _ in self.dims}
        lengths = dict(self.lengths)
        inputs, masks = {}, {}
        for m, d in self.dims:
            t = lengths[m]
            x = protos[m][c[m]][:, None, :] + self.noise * rng.normal(size=(n, t, d))
            mask = np.ones((n, t), bool)
            if m == self.dims[0][0] and t > 1:
                # Pad the last token of half the sequences and fill it with garbage.
                pad = rng.random(n) < 0.5
                mask[pad, -1] = False
                x[pad, -1] = 100.0 * rng.normal(size=(int(pad.sum()), d))
            inputs[m], masks[m] = x.astype(np.float32), mask
        a, b = (c[m] for m, _ in self.dims)
        label = self.k * a + b if self.interaction == "pair" else (a + b) % self.k
        return {"inputs": inputs, "token_mask": masks, "label": label.astype(np.int32)}

    def splits(self, n_train: int = 256, n_test: int = 512, seed: int = 0) -> Tuple[Dict[str, Any], Dict[str, Any]]:
        """(train, test) batches of ``sample``, disjoint draws for each ``seed``."""
        return self.sample(n_train, seed=1 + 2 * seed), self.sample(n_test, seed=2 + 2 * seed)


def without_modality(batch: Dict[str, Any], modality: str) -> Dict[str, Any]:
    """``batch`` with ``modality`` missing in every example (``modality_mask`` False): the classifier
    zeroes its inputs and tells the fusion block, to measure what the other modalities alone achieve."""
    if modality not in batch["inputs"]:
        raise errors.InputError(f"toy task: no modality {modality!r} to drop; the batch has {sorted(batch['inputs'])}")
    n = len(batch["label"])
    return {**batch, "modality_mask": {**batch.get("modality_mask", {}), modality: np.zeros((n,), bool)}}
