"""Transformer layers: multi-head attention, MLP, pre-LN block and a stack.

Shared by the ViT / text / audio / video encoders, the attention fusion blocks
and the caption decoder. Attention goes through :func:`dot_product_attention`,
which picks cuDNN's fused flash-attention kernel on a GPU for bf16/fp16 inputs
of a shape it supports (``jax.nn.dot_product_attention`` alone always takes
the XLA path unless told otherwise) and XLA's everywhere else.
"""
from __future__ import annotations

import functools
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.sharding import EMBED, HEADS, KV, LAYERS, MLP, NORM, logical

Array = jax.Array


def layer_norm(dtype: Any, param_dtype: Any, name: Optional[str] = None) -> nn.LayerNorm:
    return nn.LayerNorm(
        dtype=dtype,
        param_dtype=param_dtype,
        scale_init=logical(nn.initializers.ones_init(), (NORM,)),
        bias_init=logical(nn.initializers.zeros_init(), (NORM,)),
        name=name,
    )


def attention_mask(q_mask: Optional[Array], kv_mask: Optional[Array]) -> Optional[Array]:
    """(B, T) query mask and (B, S) key mask -> (B, T, S) bool, or None.

    Only keys are masked; a padded query still gets an output (ignored later),
    so no row of the softmax is ever empty unless every key is padding.
    """
    del q_mask
    if kv_mask is None:
        return None
    return kv_mask[:, None, :]


ATTENTION_IMPLEMENTATIONS = ("auto", "xla", "cudnn")


def cudnn_attention_applies(backend: str, dtype: Any, head_dim: int, q_len: int, kv_len: int,
                            has_mask: bool) -> bool:
    """Whether cuDNN flash attention can run these shapes (its documented limits).

    GPU only, bf16/fp16 inputs, head dim a multiple of 8 and at most 128; with
    a mask (cuDNN takes it as a bias), even query and key lengths.
    """
    return (
        backend in ("gpu", "cuda")
        and jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
        and head_dim % 8 == 0
        and head_dim <= 128
        and (not has_mask or (q_len % 2 == 0 and kv_len % 2 == 0))
    )


def dot_product_attention(q: Array, k: Array, v: Array, *, mask: Optional[Array] = None,
                          is_causal: bool = False, implementation: str = "auto") -> Array:
    """Scaled dot-product attention: q (B, T, N, H), k and v (B, S, N, H), mask
    broadcastable to (B, N, T, S) bool (True = may attend) -> (B, T, N, H).

    implementation: "auto" (cuDNN where :func:`cudnn_attention_applies`, XLA
    otherwise), "xla", or "cudnn" (raises where cuDNN cannot run).
    """
    if implementation not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(f"attention implementation must be one of {ATTENTION_IMPLEMENTATIONS}, "
                         f"got {implementation!r}")
    if implementation == "auto":
        if cudnn_attention_applies(jax.default_backend(), q.dtype, q.shape[-1], q.shape[1], k.shape[1],
                                   mask is not None):
            try:
                return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=is_causal,
                                                    implementation="cudnn")
            except (NotImplementedError, RuntimeError):
                pass  # a cuDNN limit not listed above (version, compute capability): XLA instead
        implementation = "xla"
    return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=is_causal, implementation=implementation)


class HeadProjection(nn.Module):
    """(B, T, D) -> (B, T, N, H) with kernel (D, N, H) and bias (N, H).

    Written with explicit full-rank weights (not ``nn.DenseGeneral``, which
    initialises a flattened 2-D kernel) so the three logical axis names match
    the array's rank when the weights are created already sharded.
    """

    num_heads: int
    head_dim: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        shape = (x.shape[-1], self.num_heads, self.head_dim)
        kernel = self.param("kernel", logical(_fan_in_out_xavier(shape[0], self.num_heads * self.head_dim),
                                              (EMBED, HEADS, KV)), shape, self.param_dtype)
        bias = self.param("bias", logical(nn.initializers.zeros_init(), (HEADS, KV)),
                          shape[1:], self.param_dtype)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        return jnp.einsum("btd,dnh->btnh", x, kernel) + bias


class HeadMerge(nn.Module):
    """(B, T, N, H) -> (B, T, out_dim) with kernel (N, H, out_dim) and bias (out_dim,)."""

    out_dim: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        shape = x.shape[-2:] + (self.out_dim,)
        kernel = self.param("kernel", logical(_fan_in_out_xavier(shape[0] * shape[1], self.out_dim),
                                              (HEADS, KV, EMBED)), shape, self.param_dtype)
        bias = self.param("bias", logical(nn.initializers.zeros_init(), (EMBED,)), (self.out_dim,),
                          self.param_dtype)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        return jnp.einsum("btnh,nhd->btd", x, kernel) + bias


def _fan_in_out_xavier(fan_in: int, fan_out: int):
    """Glorot-uniform for a kernel whose fan-in / fan-out span several axes."""
    limit = (6.0 / (fan_in + fan_out)) ** 0.5

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -limit, limit)

    return init


class MultiHeadAttention(nn.Module):
    """Multi-head (self or cross) attention.

    Attributes:
      num_heads: number of heads N.
      qkv_dim: total width of q/k/v (N * head_dim); defaults to the query width.
      out_dim: output width; defaults to the query width.
    """

    num_heads: int
    qkv_dim: Optional[int] = None
    out_dim: Optional[int] = None
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self,
        inputs_q: Array,
        inputs_kv: Optional[Array] = None,
        mask: Optional[Array] = None,
        causal: bool = False,
        train: bool = False,
    ) -> Array:
        """inputs_q (B, T, Dq), inputs_kv (B, S, Dkv) or None for self-attention,
        mask (B, T, S) bool (True = may attend) -> (B, T, out_dim)."""
        if inputs_kv is None:
            inputs_kv = inputs_q
        qkv_dim = self.qkv_dim or inputs_q.shape[-1]
        if qkv_dim % self.num_heads:
            raise ValueError(
                f"attention width {qkv_dim} is not divisible by num_heads={self.num_heads}"
            )
        head_dim = qkv_dim // self.num_heads
        proj = functools.partial(
            HeadProjection,
            num_heads=self.num_heads,
            head_dim=head_dim,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        q = proj(name="query")(inputs_q)
        k = proj(name="key")(inputs_kv)
        v = proj(name="value")(inputs_kv)
        if mask is not None:
            mask = mask[:, None, :, :]  # (B, 1, T, S): same mask for every head
        out = dot_product_attention(q, k, v, mask=mask, is_causal=causal)
        out = HeadMerge(
            out_dim=self.out_dim or inputs_q.shape[-1],
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="out",
        )(out)
        return nn.Dropout(self.dropout_rate)(out, deterministic=not train)


class MlpBlock(nn.Module):
    """Dense(mlp_dim) -> GELU -> Dropout -> Dense(D): (B, T, D) -> (B, T, D)."""

    mlp_dim: int
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        d = x.shape[-1]
        h = nn.Dense(
            self.mlp_dim,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=logical(nn.initializers.xavier_uniform(), (EMBED, MLP)),
            bias_init=logical(nn.initializers.zeros_init(), (MLP,)),
            name="fc1",
        )(x)
        h = nn.gelu(h)
        h = nn.Dropout(self.dropout_rate)(h, deterministic=not train)
        h = nn.Dense(
            d,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=logical(nn.initializers.xavier_uniform(), (MLP, EMBED)),
            bias_init=logical(nn.initializers.zeros_init(), (EMBED,)),
            name="fc2",
        )(h)
        return nn.Dropout(self.dropout_rate)(h, deterministic=not train)


class TransformerBlock(nn.Module):
    """Pre-LN block: x + SelfAttn(LN x) [+ CrossAttn(LN x, context)] + MLP(LN x).

    Shapes: x (B, T, D), mask (B, T) bool key padding mask, context (B, S, Dc),
    context_mask (B, S) bool. Returns (B, T, D).
    """

    num_heads: int
    mlp_dim: int
    dropout_rate: float = 0.0
    causal: bool = False
    cross_attention: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self,
        x: Array,
        mask: Optional[Array] = None,
        context: Optional[Array] = None,
        context_mask: Optional[Array] = None,
        train: bool = False,
    ) -> Array:
        attn = functools.partial(
            MultiHeadAttention,
            num_heads=self.num_heads,
            dropout_rate=self.dropout_rate,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        h = layer_norm(self.dtype, self.param_dtype, "ln_attn")(x)
        x = x + attn(name="self_attn")(
            h, mask=attention_mask(mask, mask), causal=self.causal, train=train
        )
        if self.cross_attention:
            if context is None:
                raise ValueError("TransformerBlock(cross_attention=True) needs a context")
            h = layer_norm(self.dtype, self.param_dtype, "ln_cross")(x)
            x = x + attn(name="cross_attn")(
                h, context, mask=attention_mask(mask, context_mask), train=train
            )
        h = layer_norm(self.dtype, self.param_dtype, "ln_mlp")(x)
        x = x + MlpBlock(self.mlp_dim, self.dropout_rate, self.dtype, self.param_dtype, name="mlp")(
            h, train=train
        )
        return x


class _ScanBlock(TransformerBlock):
    """TransformerBlock with the (carry, output) signature nn.scan expects."""

    @nn.compact
    def __call__(self, x, mask, context, context_mask, train):  # type: ignore[override]
        return super().__call__(x, mask, context, context_mask, train), None


class TransformerStack(nn.Module):
    """``num_layers`` TransformerBlocks and a final LayerNorm.

    ``scan=True`` stacks the layers' weights on a leading "layers" axis and runs
    them with ``nn.scan`` (compile time independent of depth); ``remat=True``
    recomputes activations in the backward pass to save memory.
    """

    num_layers: int
    num_heads: int
    mlp_dim: int
    dropout_rate: float = 0.0
    causal: bool = False
    cross_attention: bool = False
    scan: bool = False
    remat: bool = False
    final_norm: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self,
        x: Array,
        mask: Optional[Array] = None,
        context: Optional[Array] = None,
        context_mask: Optional[Array] = None,
        train: bool = False,
    ) -> Array:
        """x (B, T, D), mask (B, T) -> (B, T, D)."""
        kwargs = dict(
            num_heads=self.num_heads,
            mlp_dim=self.mlp_dim,
            dropout_rate=self.dropout_rate,
            causal=self.causal,
            cross_attention=self.cross_attention,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        if self.scan:
            block = _ScanBlock
            if self.remat:
                block = nn.remat(block, static_argnums=(5,), prevent_cse=False)
            stack = nn.scan(
                block,
                variable_axes={"params": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=(nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
                length=self.num_layers,
                metadata_params={nn.PARTITION_NAME: LAYERS},
            )(**kwargs, name="layers")
            x, _ = stack(x, mask, context, context_mask, train)
        else:
            block = nn.remat(TransformerBlock, static_argnums=(5,)) if self.remat else TransformerBlock
            for i in range(self.num_layers):
                x = block(**kwargs, name=f"layer_{i}")(x, mask, context, context_mask, train)
        if self.final_norm:
            x = layer_norm(self.dtype, self.param_dtype, "ln_final")(x)
        return x
