"""``minilm``: a BERT-style sentence encoder (all-MiniLM-L6-v2 layout) in Flax.

The architecture is BERT's: word + position + token-type embeddings and a
LayerNorm, then ``num_layers`` post-LN encoder layers

    x = LN(x + Attn(x));  x = LN(x + W2 gelu(W1 x))

with exact (erf) GELU, then sentence-transformers' mean pooling over real
tokens and (optionally) L2 normalisation. With the default config it holds the
weights of ``sentence-transformers/all-MiniLM-L6-v2``; use
:func:`mmjax.encoders.pretrained.load_minilm` to get them, and
:func:`convert_bert_state_dict` to convert any BERT-layout state dict.
"""
from __future__ import annotations

import functools
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmjax import errors
from mmjax.encoders.registry import register
from mmjax.layers import MultiHeadAttention, dense
from mmjax.sharding import EMBED, LENGTH, MLP, NORM, VOCAB, logical
from mmjax.types import Encoded

Array = jax.Array


class MiniLMConfigError(errors.ConfigError):
    """Bad input or config for the minilm encoder."""


def _layer_norm(eps: float, dtype: Any, param_dtype: Any, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(
        epsilon=eps,
        dtype=dtype,
        param_dtype=param_dtype,
        scale_init=logical(nn.initializers.ones_init(), (NORM,)),
        bias_init=logical(nn.initializers.zeros_init(), (NORM,)),
        name=name,
    )


class BertLayer(nn.Module):
    """One post-LN BERT encoder layer: (B, L, D), key mask (B, L) -> (B, L, D)."""

    num_heads: int
    mlp_dim: int
    layer_norm_eps: float = 1e-12
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, mask: Array, train: bool = False) -> Array:
        d = x.shape[-1]
        ln = functools.partial(_layer_norm, self.layer_norm_eps, self.dtype, self.param_dtype)
        attn = MultiHeadAttention(
            num_heads=self.num_heads,
            dropout_rate=self.dropout_rate,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="attention",
        )(x, mask=mask[:, None, :], train=train)
        x = ln("ln_attention")(x + attn)
        h = dense(self.mlp_dim, axes=(EMBED, MLP), dtype=self.dtype, param_dtype=self.param_dtype,
                  name="intermediate")(x)
        # BERT's "gelu" is the exact erf form; the tanh approximation drifts by ~1e-3.
        h = nn.gelu(h, approximate=False)
        h = dense(d, axes=(MLP, EMBED), dtype=self.dtype, param_dtype=self.param_dtype, name="output")(h)
        h = nn.Dropout(self.dropout_rate)(h, deterministic=not train)
        return ln("ln_output")(x + h)


@register("minilm")
class MiniLM(nn.Module):
    """BERT text encoder with mean pooling: ids (B, L) int -> Encoded.

    Returns ``Encoded(pooled (B, D), tokens (B, L, D), mask (B, L))`` where
    ``tokens`` is the last hidden state and ``pooled`` the mean of the real
    tokens' hidden states, L2-normalised if ``normalize`` (as
    sentence-transformers' Normalize module does for all-MiniLM-L6-v2, so
    dot products are cosine similarities).

    Attributes:
      vocab_size, hidden_size, num_layers, num_heads, mlp_dim, max_len,
      type_vocab_size, layer_norm_eps: BERT config (defaults: all-MiniLM-L6-v2).
      normalize: L2-normalise ``pooled``.
      dropout_rate: hidden dropout (BERT used 0.1 in pre-training; 0 by default
        so fine-tuning starts from the deterministic network).
    """

    vocab_size: int = 30522
    hidden_size: int = 384
    num_layers: int = 6
    num_heads: int = 12
    mlp_dim: int = 1536
    max_len: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    normalize: bool = True
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self,
        ids: Array,
        mask: Optional[Array] = None,
        *,
        train: bool = False,
        token_type_ids: Optional[Array] = None,
    ) -> Encoded:
        """ids (B, L) int token ids (0 = padding), mask (B, L) bool (default ids != 0),
        token_type_ids (B, L) int (default 0)."""
        if ids.ndim != 2 or not jnp.issubdtype(ids.dtype, jnp.integer):
            raise MiniLMConfigError(
                f"minilm: text input must be (B, L) integer token ids, got {ids.dtype} {tuple(ids.shape)}"
            )
        b, length = ids.shape
        if length > self.max_len:
            raise MiniLMConfigError(
                f"minilm: sequence length {length} exceeds max_len={self.max_len} (position embeddings)"
            )
        if mask is None:
            mask = ids != 0
        elif tuple(mask.shape) != (b, length):
            raise MiniLMConfigError(f"minilm: mask must have shape {(b, length)}, got {tuple(mask.shape)}")
        mask = mask.astype(bool)
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(ids)

        embed = functools.partial(nn.Embed, dtype=self.dtype, param_dtype=self.param_dtype)
        init = nn.initializers.normal(0.02)
        x = embed(self.vocab_size, self.hidden_size, embedding_init=logical(init, (VOCAB, EMBED)),
                  name="word_embeddings")(ids)
        x = x + embed(self.max_len, self.hidden_size, embedding_init=logical(init, (LENGTH, EMBED)),
                      name="position_embeddings")(jnp.arange(length)[None, :])
        x = x + embed(self.type_vocab_size, self.hidden_size, embedding_init=logical(init, (None, EMBED)),
                      name="token_type_embeddings")(token_type_ids)
        x = _layer_norm(self.layer_norm_eps, self.dtype, self.param_dtype, "ln_embeddings")(x)
        x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
        for i in range(self.num_layers):
            x = BertLayer(
                num_heads=self.num_heads,
                mlp_dim=self.mlp_dim,
                layer_norm_eps=self.layer_norm_eps,
                dropout_rate=self.dropout_rate,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name=f"layer_{i}",
            )(x, mask, train=train)

        m = mask[..., None]
        # sentence-transformers clamps the token count at 1e-9; an all-padding row gives 0, not NaN.
        summed = jnp.where(m, x, 0).astype(jnp.float32).sum(axis=1)
        pooled = summed / jnp.maximum(m.sum(axis=1).astype(jnp.float32), 1e-9)
        if self.normalize:
            # torch.nn.functional.normalize: x / max(||x||, 1e-12)
            pooled = pooled / jnp.maximum(jnp.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)
        return Encoded(pooled=pooled.astype(self.dtype), tokens=x, mask=mask)


def convert_bert_state_dict(
    state: Mapping[str, np.ndarray], *, num_layers: int, num_heads: int, prefix: str = ""
) -> Dict[str, Any]:
    """HuggingFace ``BertModel`` state dict (numpy) -> ``MiniLM`` params pytree.

    Linear weights are (out, in) in torch and (in, out) in Flax; attention
    projections are split into (embed, heads, head_dim) as
    :class:`mmjax.layers.MultiHeadAttention` stores them. The pooler (unused
    by sentence-transformers' mean pooling) is ignored.
    """

    def get(name: str) -> np.ndarray:
        key = prefix + name
        if key not in state:
            raise MiniLMConfigError(f"minilm: state dict has no {key!r} (needed for the BERT port)")
        return np.asarray(state[key], np.float32)

    def ln(name: str) -> Dict[str, np.ndarray]:
        return {"scale": get(f"{name}.weight"), "bias": get(f"{name}.bias")}

    def lin(name: str) -> Dict[str, np.ndarray]:
        return {"kernel": get(f"{name}.weight").T, "bias": get(f"{name}.bias")}

    params: Dict[str, Any] = {
        "word_embeddings": {"embedding": get("embeddings.word_embeddings.weight")},
        "position_embeddings": {"embedding": get("embeddings.position_embeddings.weight")},
        "token_type_embeddings": {"embedding": get("embeddings.token_type_embeddings.weight")},
        "ln_embeddings": ln("embeddings.LayerNorm"),
    }
    d = params["word_embeddings"]["embedding"].shape[1]
    if d % num_heads:
        raise MiniLMConfigError(f"minilm: hidden size {d} is not divisible by num_heads={num_heads}")
    hd = d // num_heads
    for i in range(num_layers):
        p = f"encoder.layer.{i}."
        attention = {
            name: {
                "kernel": get(f"{p}attention.self.{name}.weight").T.reshape(d, num_heads, hd),
                "bias": get(f"{p}attention.self.{name}.bias").reshape(num_heads, hd),
            }
            for name in ("query", "key", "value")
        }
        attention["out"] = {
            "kernel": get(f"{p}attention.output.dense.weight").T.reshape(num_heads, hd, d),
            "bias": get(f"{p}attention.output.dense.bias"),
        }
        params[f"layer_{i}"] = {
            "attention": attention,
            "ln_attention": ln(f"{p}attention.output.LayerNorm"),
            "intermediate": lin(f"{p}intermediate.dense"),
            "output": lin(f"{p}output.dense"),
            "ln_output": ln(f"{p}output.LayerNorm"),
        }
    if f"{prefix}encoder.layer.{num_layers}.attention.self.query.weight" in state:
        raise MiniLMConfigError(f"minilm: state dict has more than num_layers={num_layers} layers")
    return params


class MiniLMTokenizer:
    """WordPiece tokenizer from a HuggingFace ``tokenizer.json``, with fixed-length output.

    ``tok(texts) -> (ids (B, max_len) int32, mask (B, max_len) bool)``: each text is
    ``[CLS] ... [SEP]``, truncated to ``max_len`` and right-padded with id 0, so
    every batch has the same shape and a jitted encoder compiles once.
    """

    def __init__(self, path: str, max_len: int = 128):
        try:
            from tokenizers import Tokenizer
        except ImportError as e:
            raise ImportError(
                "the minilm tokenizer needs the 'tokenizers' package: pip install tokenizers"
            ) from e
        if max_len < 2:
            raise MiniLMConfigError(f"minilm tokenizer: max_len must be >= 2 ([CLS] and [SEP]), got {max_len}")
        self._tok = Tokenizer.from_file(str(path))
        self.max_len = max_len
        self.pad_id = self._tok.token_to_id("[PAD]")
        if self.pad_id is None:
            self.pad_id = 0
        self._tok.no_padding()
        self._tok.no_truncation()

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def __call__(
        self, texts: Union[str, Sequence[str]], max_len: Optional[int] = None
    ) -> Tuple[np.ndarray, np.ndarray]:
        """texts (one string or B strings) -> ids (B, L) int32, mask (B, L) bool, L = max_len."""
        if isinstance(texts, str):
            texts = [texts]
        if not all(isinstance(t, str) for t in texts):
            raise MiniLMConfigError("minilm tokenizer: texts must be strings")
        length = max_len or self.max_len
        self._tok.enable_truncation(max_length=length)
        self._tok.enable_padding(length=length, pad_id=self.pad_id, pad_token="[PAD]")
        enc = self._tok.encode_batch(list(texts))
        ids = np.asarray([e.ids for e in enc], np.int32).reshape(len(enc), length)
        mask = np.asarray([e.attention_mask for e in enc], bool).reshape(len(enc), length)
        return ids, mask

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(map(int, ids)))
