"""A synthetic two-modality task whose label needs both modalities.

Used by ``python -m experiments demo`` and by ``tests/fusion/test_learning.py``.

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

The classifier is an MLP encoder per modality, the fusion block and a Dense
head (for a decision-level block, one whose class says ``fuses_logits``, the
block output is the logits).
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Dict, Mapping, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import mmjax.fusion  # noqa: F401  (registers every block)
from mmjax.encoders.vector import MlpEncoder
from mmjax.fusion.registry import FUSION
from mmjax.models import fusion_choice

ENCODER_DIM = 16
FUSION_DIM = 16

# A small config for every fusion block. Every registered block must have an
# entry: the learning test fails on a block without one.
FUSION_CONFIGS: Dict[str, Dict[str, Any]] = {
    "concat": {"out_dim": FUSION_DIM},
    "sum": {"out_dim": FUSION_DIM},
    "weighted": {"out_dim": FUSION_DIM},
    "gated": {"out_dim": FUSION_DIM},
    "film": {"out_dim": FUSION_DIM},
    "tensor": {"out_dim": FUSION_DIM},
    "low_rank": {"out_dim": FUSION_DIM},
    "bilinear": {"out_dim": FUSION_DIM},
    "late": {},  # out_dim = number of classes, filled in by fusion_choice.resolve
    "cross_attention": {"out_dim": FUSION_DIM, "dim": 8, "num_heads": 2, "num_layers": 1, "mlp_dim": 16},
    "bottleneck": {
        "out_dim": FUSION_DIM, "dim": 8, "num_heads": 2, "num_layers": 1, "fusion_layer": 0,
        "num_bottlenecks": 2, "mlp_dim": 16,
    },
    "perceiver": {
        "out_dim": FUSION_DIM, "dim": 8, "num_heads": 2, "num_layers": 1, "num_latents": 4,
        "num_self_layers": 1, "mlp_dim": 16,
    },
    # The block.bootstrap / MMF bilinear family (published sizes are 1200-16000 wide).
    "mcb": {"out_dim": FUSION_DIM, "mm_dim": 256},
    "mlb": {"out_dim": FUSION_DIM, "mm_dim": 32},
    "mfh": {"out_dim": FUSION_DIM, "mm_dim": 16, "factor": 2},
    "mutan": {"out_dim": FUSION_DIM, "mm_dim": 16, "rank": 4},
    "block": {"out_dim": FUSION_DIM, "mm_dim": 32, "chunks": 4, "rank": 4},
    "linear_sum": {"out_dim": FUSION_DIM, "mm_dim": 32},
    "concat_mlp": {"out_dim": FUSION_DIM, "dimensions": (32,)},
    # TorchMultimodal and MultiBench (issue 20, catalogue A).
    "attention_fusion": {"out_dim": FUSION_DIM},
    "deepset": {"out_dim": FUSION_DIM, "hidden_dims": (FUSION_DIM,)},
    "deepset_transformer": {"out_dim": FUSION_DIM, "proj_dim": 8, "num_heads": 2, "mlp_dim": 16,
                            "hidden_dims": (FUSION_DIM,)},
    "multiplicative": {"out_dim": FUSION_DIM},
    "nl_gate": {"out_dim": FUSION_DIM},
    "stack": {"out_dim": FUSION_DIM, "inputs": "pooled"},  # the toy sequences are not aligned (3 vs 2 tokens)
    "early_transformer": {"out_dim": FUSION_DIM, "dim": 8, "num_heads": 2, "num_layers": 1, "mlp_dim": 16},
    "late_transformer": {"out_dim": FUSION_DIM, "dim": 8, "num_heads": 2, "num_layers": 1, "mlp_dim": 16},
}


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
        if self.interaction not in ("pair", "xor"):
            raise ValueError(f"toy task: interaction must be 'pair' or 'xor', got {self.interaction!r}")
        if self.k < 2:
            raise ValueError(f"toy task: k must be >= 2, got {self.k}")

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


class ToyClassifier(nn.Module):
    """MLP encoder per modality -> fusion block -> Dense head: (B, C) logits."""

    fusion: str
    fusion_config: Tuple[Tuple[str, Any], ...]
    num_classes: int

    @nn.compact
    def __call__(self, inputs: Mapping[str, jax.Array], token_mask: Mapping[str, jax.Array], modality_mask=None):
        encoded = {
            m: MlpEncoder(features=(ENCODER_DIM, ENCODER_DIM), name=f"encoder_{m}")(x, token_mask[m])
            for m, x in inputs.items()
        }
        choice = fusion_choice.resolve({"fusion": self.fusion, "fusion_config": dict(self.fusion_config)},
                                       num_classes=self.num_classes)
        z = FUSION.get(choice.block)(**choice.block_config, name="fusion")(encoded, modality_mask)
        if choice.placement == "late":  # decision-level: the block's per-modality heads give the logits
            return z
        return nn.Dense(self.num_classes, name="head")(z)


@dataclasses.dataclass
class Result:
    block: str
    params: int
    train_accuracy: float
    test_accuracy: float
    steps_per_s: float
    final_loss: float


def fusion_config(name: str) -> Dict[str, Any]:
    if name not in FUSION_CONFIGS:
        raise KeyError(
            f"toy task: no config for fusion block {name!r}; add one to FUSION_CONFIGS in {__name__}"
        )
    return FUSION_CONFIGS[name]


def train_and_evaluate(
    block: str,
    task: ToyTask = ToyTask(),
    *,
    steps: int = 300,
    learning_rate: float = 1e-2,
    n_train: int = 256,
    n_test: int = 512,
    seed: int = 0,
    drop_modality: Optional[str] = None,
    fast_compile: bool = False,
) -> Result:
    """Full-batch Adam on ``n_train`` examples; init, all steps (a ``lax.scan``)
    and both evaluations are one compiled program.

    ``steps_per_s`` times that program after compilation (one init and two
    forward passes besides the steps). ``drop_modality`` masks one modality out
    (modality_mask False) for training and testing, to measure what the other
    modality alone achieves. ``fast_compile`` turns off XLA's backend
    optimisations: much quicker to compile, slower to run (for tests).
    """
    model = ToyClassifier(block, tuple(sorted(fusion_config(block).items())), task.num_classes)
    train = task.sample(n_train, seed=1 + 2 * seed)
    test = task.sample(n_test, seed=2 + 2 * seed)

    def modality_mask(n):
        if drop_modality is None:
            return None
        return {drop_modality: jnp.zeros((n,), bool)}

    def forward(params, data):
        return model.apply({"params": params}, data["inputs"], data["token_mask"], modality_mask(len(data["label"])))

    def init(key):
        return nn.unbox(model.init(key, train["inputs"], train["token_mask"], modality_mask(n_train)))["params"]

    tx = optax.adam(learning_rate)

    def loss_fn(p):
        logits = forward(p, train)
        return optax.softmax_cross_entropy_with_integer_labels(logits, train["label"]).mean()

    def accuracy(p, data):
        return (forward(p, data).argmax(-1) == data["label"]).mean()

    def program(key):
        def step(carry, _):
            p, opt = carry
            loss, grads = jax.value_and_grad(loss_fn)(p)
            updates, opt = tx.update(grads, opt, p)
            return (optax.apply_updates(p, updates), opt), loss

        p = init(key)
        (p, _), losses = jax.lax.scan(step, (p, tx.init(p)), None, length=steps)
        return losses[-1], accuracy(p, train), accuracy(p, test)

    # The RBG generator compiles far faster than threefry; init quality is the same.
    key = jax.random.key(seed, impl="rbg")
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(jax.eval_shape(init, key)))
    options = {"xla_backend_optimization_level": 0} if fast_compile else None
    compiled = jax.jit(program).lower(key).compile(compiler_options=options)
    start = time.perf_counter()
    loss, train_acc, test_acc = jax.block_until_ready(compiled(key))
    elapsed = time.perf_counter() - start
    return Result(
        block=block,
        params=n_params,
        train_accuracy=float(train_acc),
        test_accuracy=float(test_acc),
        steps_per_s=steps / max(elapsed, 1e-9),
        final_loss=float(loss),
    )
