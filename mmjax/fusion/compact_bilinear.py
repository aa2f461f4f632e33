"""``mcb`` (compact bilinear pooling) and block.bootstrap's baselines ``linear_sum``, ``concat_mlp``.

Written after ``block/models/networks/fusions/{fusions,compactbilinearpooling}.py``
of Cadene/block.bootstrap.pytorch (copied by MMF's ``mmf/modules/fusions.py``);
the rest of that family (``mlb``, ``mfh``, ``mutan``, ``block``) is in
:mod:`mmjax.fusion.bilinear_family`.
"""
from __future__ import annotations

import math
import zlib
from typing import Any, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmjax.fusion.base import FusionInputError, prepare
from mmjax.fusion.bilinear_family import _Family, _linear, _total, power_l2
from mmjax.fusion.bilinear_family import activation as get_activation
from mmjax.fusion.cost import Cost, register_cost
from mmjax.fusion.registry import register


def count_sketch_hashes(name: str, dim: int, mm_dim: int, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """Modality ``name``'s fixed count-sketch hashes: h (dim,) in [0, mm_dim), s (dim,) in {-1, +1}.

    Drawn from ``np.random.default_rng([seed, zlib.crc32(name.encode())])``:
    first ``h = rng.integers(0, mm_dim, dim)``, then ``s = 2 * rng.integers(0, 2, dim) - 1``
    (the published code draws them with torch's RNG at construction). They
    depend only on the seed, the modality's name and the sizes, so the same
    config gives the same sketch in every process and after a restore.
    """
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    h = rng.integers(0, mm_dim, size=dim)
    s = 2 * rng.integers(0, 2, size=dim) - 1
    return h.astype(np.int32), s.astype(np.float32)


def count_sketch(x: jax.Array, h: np.ndarray, s: np.ndarray, mm_dim: int) -> jax.Array:
    """Psi(x)_j = sum_{i: h_i = j} s_i x_i: (B, d) -> (B, mm_dim)."""
    return jnp.zeros((x.shape[0], mm_dim), x.dtype).at[:, h].add(x * s.astype(x.dtype))


@register("mcb")
class MCBFusion(_Family):
    """Multimodal Compact Bilinear pooling (Fukui et al. 2016; Gao et al. 2016):

        Psi_m = count_sketch(x_m; h_m, s_m)                (B, mm_dim), no learned weights
        z = IFFT(FFT(Psi_1) * FFT(Psi_2) * ... * FFT(Psi_M)) (B, mm_dim), real FFTs in float32
        z = power_l2(z) if normalize                         signed sqrt + L2, as in Fukui et al.
        out = act_out(W_out z + b_out)                       (B, out_dim)

    z is the circular convolution of the sketches, i.e. the count sketch of
    the outer product x_1 (x) x_2 with hash (h_1[i] + h_2[j]) mod mm_dim and
    sign s_1[i] s_2[j] (the "tensor sketch"), without forming d_1 * d_2
    numbers. More modalities: the convolution chained over all sketches in
    sorted-name order, the tensor sketch of the M-way outer product.
    The hashes are fixed, not learned: see :func:`count_sketch_hashes`
    (``seed`` and each modality's name fix them). Scale: the published
    block.bootstrap code's (torch.irfft with its 1/mm_dim); MMF's rewrite
    multiplies by mm_dim.

    Input: pooled (B, D_m) or tokens (B, T_m, D_m) (mean-pooled) per modality.
    Missing modality: input zeroed, so its sketch and with it z are zero, and
    the output is act_out(b_out) (the product has no term without it).

    Attributes:
      out_dim: output width.
      mm_dim: sketch length; 16000 in the published code.
      activ_output: "relu" (published), "tanh", "sigmoid" or None.
      seed: fixes the count-sketch hashes (with the modality names).
      normalize: signed sqrt + L2 normalisation of z, the paper's (block.bootstrap's code has none).
      dropout_rate: dropout on the output (published ``dropout_output``), train only.
      eps: normalisation epsilon.
    """

    out_dim: int
    mm_dim: int = 16000
    activ_output: Optional[str] = "relu"
    seed: int = 1
    normalize: bool = False
    dropout_rate: float = 0.0
    eps: float = 1e-8
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    block_name = "mcb"

    @nn.compact
    def __call__(self, features, modality_mask=None, *, train: bool = False) -> jax.Array:
        inputs = prepare(features, modality_mask, block="mcb")
        fft_dtype = jnp.promote_types(self.dtype, jnp.float32)
        spectrum = None
        for n in inputs.names:
            x = inputs.pooled[n].astype(fft_dtype)
            h, s = count_sketch_hashes(n, x.shape[-1], self.mm_dim, self.seed)
            f = jnp.fft.rfft(count_sketch(x, h, s, self.mm_dim), axis=-1)
            spectrum = f if spectrum is None else spectrum * f
        z = jnp.fft.irfft(spectrum, n=self.mm_dim, axis=-1)
        if self.normalize:
            z = power_l2(z, self.eps)
        z = self._dense(self.out_dim, "linear_out")(z.astype(self.dtype))
        z = get_activation(self.activ_output, "mcb", "activ_output")(z)
        return nn.Dropout(self.dropout_rate)(z, deterministic=not train)


@register("linear_sum")
class LinearSumFusion(_Family):
    """Sum of projections, block.bootstrap's additive baseline:

        z = sum_m act_in(W_m x_m + b_m)      (B, mm_dim), any number of modalities
        z = power_l2(z) if normalize
        out = act_out(W_out z + b_out)       (B, out_dim)

    Input: pooled (B, D_m) or tokens (B, T_m, D_m) (mean-pooled) per modality.
    Missing modality: input zeroed, so its term is act_in(b_m).

    Attributes:
      out_dim: output width.
      mm_dim: width of the summed space; 1200 published.
      activ_input, activ_output: "relu" (published, both), "tanh", "sigmoid" or None.
      normalize: signed sqrt + L2 normalisation of z.
      dropout_rate: dropout on z before linear_out (train only).
      eps: normalisation epsilon.
    """

    out_dim: int
    mm_dim: int = 1200
    activ_input: Optional[str] = "relu"
    activ_output: Optional[str] = "relu"
    normalize: bool = False
    dropout_rate: float = 0.0
    eps: float = 1e-8
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    block_name = "linear_sum"

    @nn.compact
    def __call__(self, features, modality_mask=None, *, train: bool = False) -> jax.Array:
        inputs = prepare(features, modality_mask, block="linear_sum")
        act = get_activation(self.activ_input, "linear_sum", "activ_input")
        z = sum(act(self._dense(self.mm_dim, f"linear_{n}")(inputs.pooled[n].astype(self.dtype)))
                for n in inputs.names)
        if self.normalize:
            z = power_l2(z, self.eps)
        return self._output(z, train, self.activ_output)


@register("concat_mlp")
class ConcatMLPFusion(_Family):
    """Concatenation then an MLP, block.bootstrap's ``ConcatMLP``:

        z = [x_1; ...; x_M]                  (B, sum_m D_m), sorted-name order
        z = act(W_i z + b_i), dropout        for each hidden width in ``dimensions``
        out = W_out z + b_out                (B, out_dim), no output activation

    Input: pooled (B, D_m) or tokens (B, T_m, D_m) (mean-pooled) per modality.
    Missing modality: its slot is zeros.

    Attributes:
      out_dim: output width.
      dimensions: hidden widths; (500, 500) published; () is ``concat`` with a projection.
      activation: "relu" (published), "tanh" or "sigmoid".
      dropout_rate: dropout after each hidden activation (train only).
    """

    out_dim: int
    dimensions: Sequence[int] = (500, 500)
    activation: str = "relu"
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    block_name = "concat_mlp"

    @nn.compact
    def __call__(self, features, modality_mask=None, *, train: bool = False) -> jax.Array:
        inputs = prepare(features, modality_mask, block="concat_mlp")
        if self.activation is None:
            raise FusionInputError("concat_mlp: config activation must be 'relu', 'tanh' or 'sigmoid', got None")
        act = get_activation(self.activation, "concat_mlp", "activation")
        z = jnp.concatenate([inputs.pooled[n].astype(self.dtype) for n in inputs.names], axis=-1)
        for i, width in enumerate(self.dimensions):
            z = act(self._dense(width, f"linear_{i}")(z))
            z = nn.Dropout(self.dropout_rate)(z, deterministic=not train)
        return self._dense(self.out_dim, "linear_out")(z)


def fft_flops(n: int) -> int:
    """The usual estimate for one real FFT of length n: 2.5 n log2 n (half a complex FFT's
    5 n log2 n). XLA's CPU cost analysis counts 8 n log2 n for an rfft, 4 n log2 n for an irfft."""
    return int(round(2.5 * n * math.log2(n))) if n > 1 else 0


@register_cost("mcb")
def _mcb_cost(dims, out_dim, mm_dim: int = 16000, **config) -> Cost:
    """linear_out plus M real FFTs and one inverse (:func:`fft_flops`); the count
    sketches (scatter-adds) and the spectrum products are not counted."""
    c = _linear(mm_dim, out_dim)
    return Cost(params=c.params, flops=c.flops + (len(dims) + 1) * fft_flops(mm_dim))


@register_cost("linear_sum")
def _linear_sum_cost(dims, out_dim, mm_dim: int = 1200, **config) -> Cost:
    return _total([_linear(d, mm_dim) for d in dims] + [_linear(mm_dim, out_dim)])


@register_cost("concat_mlp")
def _concat_mlp_cost(dims, out_dim, dimensions: Sequence[int] = (500, 500), **config) -> Cost:
    widths = [sum(dims), *dimensions, out_dim]
    return _total(_linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
