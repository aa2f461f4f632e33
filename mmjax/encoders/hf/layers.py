"""Building blocks shared by the Hugging Face families: one encoder layer, norms, activations.

Every family's layer is ``x -> x + Attn(.) -> x + MLP(.)`` with LayerNorms
either before each branch (pre-LN: ViT, CLIP, SigLIP) or after each residual
sum (post-LN: BERT, RoBERTa). Weights carry the same logical axis names as the
native mmjax encoders, so converted towers shard by the same rules.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.encoders.hf.weights import HFCheckpointError
from mmjax.layers import MultiHeadAttention, dense
from mmjax.sharding import EMBED, MLP, NORM, logical

Array = jax.Array


def quick_gelu(x: Array) -> Array:
    """CLIP's activation: x * sigmoid(1.702 x)."""
    return x * jax.nn.sigmoid(1.702 * x)


ACTIVATIONS: dict = {
    "gelu": lambda x: nn.gelu(x, approximate=False),  # the exact erf form (torch's default)
    "gelu_new": lambda x: nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: nn.gelu(x, approximate=True),
    "quick_gelu": quick_gelu,
    "relu": nn.relu,
}


def activation(name: str) -> Callable[[Array], Array]:
    """The function a config's ``hidden_act`` names."""
    if name not in ACTIVATIONS:
        raise HFCheckpointError(f"unsupported hidden_act {name!r}; supported: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def layer_norm(eps: float, dtype: Any, param_dtype: Any, name: str) -> nn.LayerNorm:
    """LayerNorm with torch's epsilon and replicated ("norm") scale / bias."""
    return nn.LayerNorm(
        epsilon=eps,
        dtype=dtype,
        param_dtype=param_dtype,
        scale_init=logical(nn.initializers.ones_init(), (NORM,)),
        bias_init=logical(nn.initializers.zeros_init(), (NORM,)),
        name=name,
    )


class EncoderLayer(nn.Module):
    """One transformer encoder layer: x (B, T, D), attention mask (B, T, T) bool or None -> (B, T, D).

    ``pre_norm``: ``x + Attn(ln_1 x)``, ``x + MLP(ln_2 x)``; otherwise (BERT)
    ``ln_1(x + Attn x)``, ``ln_2(x + MLP x)``. The attention may also be causal.
    """

    num_heads: int
    mlp_dim: int
    act: str = "gelu"
    pre_norm: bool = True
    layer_norm_eps: float = 1e-5
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, mask: Optional[Array] = None, causal: bool = False,
                 train: bool = False) -> Array:
        ln_1 = layer_norm(self.layer_norm_eps, self.dtype, self.param_dtype, "ln_1")
        ln_2 = layer_norm(self.layer_norm_eps, self.dtype, self.param_dtype, "ln_2")
        attn = MultiHeadAttention(num_heads=self.num_heads, dropout_rate=self.dropout_rate, dtype=self.dtype,
                                  param_dtype=self.param_dtype, name="attention")
        h = attn(ln_1(x) if self.pre_norm else x, mask=mask, causal=causal, train=train)
        x = x + h if self.pre_norm else ln_1(x + h)
        h = ln_2(x) if self.pre_norm else x
        h = dense(self.mlp_dim, axes=(EMBED, MLP), dtype=self.dtype, param_dtype=self.param_dtype, name="fc1")(h)
        h = activation(self.act)(h)
        h = dense(x.shape[-1], axes=(MLP, EMBED), dtype=self.dtype, param_dtype=self.param_dtype, name="fc2")(h)
        h = nn.Dropout(self.dropout_rate)(h, deterministic=not train)
        return x + h if self.pre_norm else ln_2(x + h)


def key_mask(mask: Optional[Array]) -> Optional[Array]:
    """(B, T) bool padding mask -> (B, T, T) attention mask over keys, or None."""
    return None if mask is None else mask.astype(bool)[:, None, :]


def patch_embed(x: Array, features: int, patch: Union[int, Sequence[int]], use_bias: bool, dtype: Any,
                param_dtype: Any, name: str, strides: Optional[Sequence[int]] = None) -> Array:
    """Patches by a strided conv, flattened row-major like torch's ``flatten(2)``: images (B, H, W, C) with
    ``patch`` p -> (B, (H/p)*(W/p), features); also (B, F, H, W, C) with a (t, p, p) tubelet, or overlapping
    patches with ``strides`` smaller than the kernel (AST)."""
    kernel = (patch, patch) if isinstance(patch, int) else tuple(patch)
    y = nn.Conv(features, kernel, strides=tuple(strides or kernel), padding="VALID", use_bias=use_bias,
                dtype=dtype, param_dtype=param_dtype,
                kernel_init=logical(nn.initializers.lecun_normal(), (None,) * (len(kernel) + 1) + (EMBED,)),
                bias_init=logical(nn.initializers.zeros_init(), (EMBED,)), name=name)(x)
    return y.reshape(y.shape[0], -1, features)


def check_image(x: Array, size: int, channels: int, where: str) -> None:
    """Raises for anything but (B, size, size, channels) pixel values."""
    if x.ndim != 4 or tuple(x.shape[1:]) != (size, size, channels):
        raise HFCheckpointError(f"{where}: pixel_values must be (B, {size}, {size}, {channels}) channels last, "
                                f"got {tuple(x.shape)}")


def convert_layer(sd, num_heads: int, names: dict) -> dict:
    """One layer's params from the checkpoint; ``names`` maps our parts to the family's tensor names
    (q, k, v, o, ln_1, ln_2, fc1, fc2)."""
    return {
        "attention": {
            "query": sd.heads(names["q"], num_heads),
            "key": sd.heads(names["k"], num_heads),
            "value": sd.heads(names["v"], num_heads),
            "out": sd.merge(names["o"], num_heads),
        },
        "ln_1": sd.layer_norm(names["ln_1"]),
        "ln_2": sd.layer_norm(names["ln_2"]),
        "fc1": sd.linear(names["fc1"]),
        "fc2": sd.linear(names["fc2"]),
    }


def vit_layer_names(prefix: str) -> dict:
    """The tensor names of one ViT-style layer (ViT, AST, VideoMAE) under ``prefix`` ("encoder.layer.{i}.")."""
    p = prefix
    return {"q": p + "attention.attention.query", "k": p + "attention.attention.key",
            "v": p + "attention.attention.value", "o": p + "attention.output.dense",
            "ln_1": p + "layernorm_before", "ln_2": p + "layernorm_after",
            "fc1": p + "intermediate.dense", "fc2": p + "output.dense"}
