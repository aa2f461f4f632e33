"""PyTorch references of the mmjax fusion blocks, for the benchmarks only.

Each reference follows the published definition of its method, written the
way the public PyTorch code bases write it (MultiBench ``fusions/common_fusions.py``,
TorchMultimodal, the authors' repositories): TFN materialises the full outer
product and applies one Linear to it, LMF keeps its factors as
``(rank, d_m + 1, out)`` parameters and mixes the rank-one terms with
``fusion_weights``, MFB sum-pools groups of ``k`` units and power/L2
normalises, GMU gates tanh hidden units, FiLM modulates with gamma/beta
projections, MulT/MBT/Perceiver stack pre-LN transformer layers.

Sizes are never hard-coded: every reference is built by
:func:`build_reference` from the modality names (sorted, the order mmjax
uses), their dims, ``out_dim`` and the mmjax block's config, and takes the
per-modality features positionally in sorted-name order
(``module(*features)``), which is also what ``torch.compile`` handles best.

:func:`load_from_flax` copies an mmjax params pytree into a reference, so the
two implementations can be run on the same weights (the agreement tests do):
a flax ``Dense`` kernel is (in, out), a torch ``Linear`` weight is (out, in).

Only the benchmarked path is implemented: all modalities present and no
padding (the mmjax blocks' missing-modality handling has its own tests).
"""
from __future__ import annotations

import itertools
import math
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

REFERENCES: Dict[str, Callable[..., "FusionReference"]] = {}


class ReferenceError(ValueError):
    """No reference for a block, or a config/params layout the reference cannot follow."""


def _register(name: str):
    def deco(cls):
        REFERENCES[name] = cls
        return cls

    return deco


def _t(x: Any) -> torch.Tensor:
    return torch.as_tensor(np.array(x, dtype=np.float32))


def _unbox(params: Any) -> Any:
    try:
        import flax.linen as flax_nn

        return flax_nn.unbox(params)
    except ImportError:  # pragma: no cover - flax is a core dependency
        return params


@torch.no_grad()
def load_linear(linear: nn.Linear, p: Mapping[str, Any]) -> None:
    """flax Dense params {"kernel": (in, out), "bias": (out,)} -> torch Linear."""
    kernel = _t(p["kernel"])
    if tuple(kernel.shape) != (linear.in_features, linear.out_features):
        raise ReferenceError(
            f"Dense kernel shape {tuple(kernel.shape)} does not match Linear({linear.in_features}, "
            f"{linear.out_features})"
        )
    linear.weight.copy_(kernel.T)
    if linear.bias is not None:
        linear.bias.copy_(_t(p["bias"]))


@torch.no_grad()
def _copy(param: torch.Tensor, value: Any, what: str) -> None:
    value = _t(value)
    if tuple(value.shape) != tuple(param.shape):
        raise ReferenceError(f"{what}: shape {tuple(value.shape)} does not match reference {tuple(param.shape)}")
    param.copy_(value)


class FusionReference(nn.Module):
    """Base of the references: ``names`` sorted, ``dims`` in that order."""

    def __init__(self, names: Sequence[str], dims: Sequence[int], out_dim: int):
        super().__init__()
        self.names = list(names)
        self.dims = list(dims)
        self.out_dim = out_dim

    def load_flax(self, params: Mapping[str, Any]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


@_register("concat")
class ConcatRef(FusionReference):
    """Early fusion: Linear([z_1; ...; z_M])."""

    def __init__(self, names, dims, out_dim):
        super().__init__(names, dims, out_dim)
        self.proj = nn.Linear(sum(dims), out_dim)

    def forward(self, *xs):
        return self.proj(torch.cat(xs, dim=-1))

    def load_flax(self, params):
        load_linear(self.proj, params["proj"])


@_register("sum")
class SumRef(FusionReference):
    """sum_m Linear_m(z_m), divided by M with ``mean`` (mmjax's default)."""

    def __init__(self, names, dims, out_dim, mean: bool = True):
        super().__init__(names, dims, out_dim)
        self.mean = mean
        self.proj = nn.ModuleList(nn.Linear(d, out_dim) for d in dims)

    def forward(self, *xs):
        v = torch.stack([p(x) for p, x in zip(self.proj, xs)], dim=1)
        return v.mean(dim=1) if self.mean else v.sum(dim=1)

    def load_flax(self, params):
        for n, lin in zip(self.names, self.proj):
            load_linear(lin, params[f"proj_{n}"])


@_register("weighted")
class WeightedRef(SumRef):
    """sum_m softmax(a)_m Linear_m(z_m), a (M,) learned."""

    def __init__(self, names, dims, out_dim):
        super().__init__(names, dims, out_dim)
        self.modality_logits = nn.Parameter(torch.zeros(len(dims)))

    def forward(self, *xs):
        v = torch.stack([p(x) for p, x in zip(self.proj, xs)], dim=1)  # (B, M, O)
        w = torch.softmax(self.modality_logits, dim=0)
        return torch.einsum("m,bmo->bo", w, v)

    def load_flax(self, params):
        super().load_flax(params)
        _copy(self.modality_logits, params["modality_logits"], "weighted.modality_logits")


@_register("gated")
class GatedRef(FusionReference):
    """Gated Multimodal Unit (Arevalo et al. 2017), M modalities.

    h_m = tanh(W_m z_m); g = softmax over modalities of W_g [z_1; ...; z_M]
    (per output unit), z = sum_m g_m * h_m. ``gate="sigmoid"`` with two
    modalities is the paper's bimodal form z = g h_1 + (1 - g) h_2.
    ``normalize`` (mmjax's default) first brings each z_m to zero mean and unit
    variance (a LayerNorm without parameters); ``normalize=False`` is the paper's GMU.
    """

    def __init__(self, names, dims, out_dim, gate: str = "softmax", normalize: bool = True):
        super().__init__(names, dims, out_dim)
        if gate not in ("softmax", "sigmoid") or (gate == "sigmoid" and len(dims) != 2):
            raise ReferenceError(f"gated reference: gate={gate!r} with {len(dims)} modalities")
        self.gate_kind, self.normalize = gate, normalize
        self.hidden = nn.ModuleList(nn.Linear(d, out_dim) for d in dims)
        g = 1 if gate == "sigmoid" else len(dims)
        self.gate = nn.Linear(sum(dims), g * out_dim)

    def forward(self, *xs):
        if self.normalize:
            xs = [F.layer_norm(x, x.shape[-1:], eps=1e-6) for x in xs]
        h = torch.stack([torch.tanh(lin(x)) for lin, x in zip(self.hidden, xs)], dim=1)
        logits = self.gate(torch.cat(xs, dim=-1))
        if self.gate_kind == "sigmoid":
            g = torch.sigmoid(logits)
            return g * h[:, 0] + (1 - g) * h[:, 1]
        g = torch.softmax(logits.view(-1, len(self.dims), self.out_dim), dim=1)
        return (g * h).sum(dim=1)

    def load_flax(self, params):
        for n, lin in zip(self.names, self.hidden):
            load_linear(lin, params[f"hidden_{n}"])
        load_linear(self.gate, params["gate"])


@_register("film")
class FiLMRef(FusionReference):
    """FiLM (Perez et al. 2018): z = (1 + gamma(x_c)) * base(x_b) + beta(x_c).

    x_b is the ``target`` modality (default: first sorted), x_c the others
    concatenated; gamma is parametrised around 1 as in the mmjax block.
    ``normalize`` (mmjax's default) brings z to zero mean and unit variance (a
    LayerNorm without parameters); ``normalize=False`` is the published formula.
    """

    def __init__(self, names, dims, out_dim, target: Optional[str] = None, normalize: bool = True):
        super().__init__(names, dims, out_dim)
        self.normalize = normalize
        self.t = 0 if target is None else self.names.index(target)
        d_c = sum(dims) - dims[self.t]
        self.base = nn.Linear(dims[self.t], out_dim)
        self.gamma = nn.Linear(d_c, out_dim)
        self.beta = nn.Linear(d_c, out_dim)

    def forward(self, *xs):
        x_c = torch.cat([x for i, x in enumerate(xs) if i != self.t], dim=-1)
        z = (1 + self.gamma(x_c)) * self.base(xs[self.t]) + self.beta(x_c)
        return F.layer_norm(z, z.shape[-1:], eps=1e-6) if self.normalize else z

    def load_flax(self, params):
        for k in ("base", "gamma", "beta"):
            load_linear(getattr(self, k), params[k])


@_register("tensor")
class TensorRef(FusionReference):
    """Tensor Fusion Network (Zadeh et al. 2017), as MultiBench writes it:
    the outer product of [1; z_m] over all modalities is materialised,
    flattened and fed to one Linear (optionally after per-modality ``pre_dim``
    projections). ``normalize`` (mmjax's default) adds its LayerNorm over the
    output; ``normalize=False`` is MultiBench's formula.
    """

    def __init__(self, names, dims, out_dim, pre_dim: Optional[int] = None, normalize: bool = True):
        super().__init__(names, dims, out_dim)
        self.pre = nn.ModuleList(nn.Linear(d, pre_dim) for d in dims) if pre_dim else None
        aug = [(pre_dim or d) + 1 for d in dims]
        self.aug = aug
        self.linear = nn.Linear(math.prod(aug), out_dim)
        self.norm = nn.LayerNorm(out_dim, eps=1e-6) if normalize else None

    def forward(self, *xs):
        if self.pre is not None:
            xs = [p(x) for p, x in zip(self.pre, xs)]
        b = xs[0].shape[0]
        ones = xs[0].new_ones(b, 1)
        fused = torch.cat([ones, xs[0]], dim=1)
        for x in xs[1:]:
            h = torch.cat([ones, x], dim=1)
            fused = torch.bmm(fused.unsqueeze(2), h.unsqueeze(1)).flatten(start_dim=1)
        out = self.linear(fused)
        return out if self.norm is None else self.norm(out)

    def load_flax(self, params):
        kernel = _t(params["kernel"])
        if list(kernel.shape[:-1]) != self.aug:
            raise ReferenceError(f"tensor: kernel shape {tuple(kernel.shape)} vs augmented dims {self.aug}")
        load_linear(self.linear, {"kernel": kernel.reshape(-1, self.out_dim), "bias": params["bias"]})
        if self.pre is not None:
            for n, lin in zip(self.names, self.pre):
                load_linear(lin, params[f"pre_{n}"])
        if self.norm is not None:
            load_layer_norm(self.norm, params["norm"])


@_register("low_rank")
class LowRankRef(FusionReference):
    """Low-rank Multimodal Fusion (Liu et al. 2018), the authors' formulation:
    factors (rank, d_m + 1, out), fusion_weights (1, rank), fusion_bias (out,);
    ``normalize`` (mmjax's default) adds its LayerNorm over the output.
    ``factor_init`` only picks mmjax's initialiser (the weights are loaded)."""

    def __init__(self, names, dims, out_dim, rank: int = 4, normalize: bool = True, factor_init: str = "xavier"):
        super().__init__(names, dims, out_dim)
        self.norm = nn.LayerNorm(out_dim, eps=1e-6) if normalize else None
        self.rank = rank
        self.factors = nn.ParameterList(nn.Parameter(torch.empty(rank, d + 1, out_dim)) for d in dims)
        for f in self.factors:
            nn.init.xavier_normal_(f)
        self.fusion_weights = nn.Parameter(torch.empty(1, rank))
        self.fusion_bias = nn.Parameter(torch.zeros(1, out_dim))
        nn.init.xavier_normal_(self.fusion_weights)

    def forward(self, *xs):
        b = xs[0].shape[0]
        ones = xs[0].new_ones(b, 1)
        fused = None
        for x, f in zip(xs, self.factors):
            term = torch.matmul(torch.cat([ones, x], dim=1), f)  # (rank, B, out)
            fused = term if fused is None else fused * term
        out = torch.matmul(self.fusion_weights, fused.permute(1, 0, 2)).squeeze(1) + self.fusion_bias
        return out if self.norm is None else self.norm(out)

    def load_flax(self, params):
        for n, f in zip(self.names, self.factors):
            # mmjax stores U (d, r, out) and the bias row c (r, out); the paper's factor is [c; U] per rank.
            u, c = np.asarray(params[f"factor_{n}"]), np.asarray(params[f"factor_bias_{n}"])
            _copy(f, np.concatenate([c[:, None], u.transpose(1, 0, 2)], axis=1), f"low_rank.factor_{n}")
        _copy(self.fusion_weights, params["fusion_weights"], "low_rank.fusion_weights")
        _copy(self.fusion_bias, np.asarray(params["fusion_bias"])[None], "low_rank.fusion_bias")
        if self.norm is not None:
            load_layer_norm(self.norm, params["norm"])


@_register("bilinear")
class BilinearRef(FusionReference):
    """Multi-modal Factorised Bilinear pooling (Yu et al. 2017) on every pair.

    Per pair: (U x) * (V y) -> sum-pool groups of k -> signed sqrt -> L2
    normalise; pairs concatenated, then a Linear if that width != out_dim.
    The signed square root is the eps-stabilised sign(z)(sqrt(|z| + eps) -
    sqrt(eps)) of the mmjax block (the paper's at eps = 0).
    """

    def __init__(self, names, dims, out_dim, factor_dim: int = 5, pair_dim: Optional[int] = None,
                 eps: float = 1e-8, dropout_rate: float = 0.0):
        super().__init__(names, dims, out_dim)
        self.k, self.o, self.eps = factor_dim, pair_dim or out_dim, eps
        self.pairs = list(itertools.combinations(range(len(dims)), 2))
        self.U = nn.ModuleList(nn.Linear(dims[a], self.k * self.o) for a, _ in self.pairs)
        self.V = nn.ModuleList(nn.Linear(dims[b], self.k * self.o) for _, b in self.pairs)
        width = len(self.pairs) * self.o
        self.proj = nn.Linear(width, out_dim) if width != out_dim else None

    def forward(self, *xs):
        outs = []
        for (a, b), u, v in zip(self.pairs, self.U, self.V):
            p = u(xs[a]) * v(xs[b])
            z = p.view(p.shape[0], self.o, self.k).sum(-1)
            z = torch.sign(z) * (torch.sqrt(z.abs() + self.eps) - math.sqrt(self.eps))
            outs.append(F.normalize(z, dim=-1, eps=math.sqrt(self.eps)))
        z = torch.cat(outs, dim=-1)
        return self.proj(z) if self.proj is not None else z

    def load_flax(self, params):
        for (a, b), u, v in zip(self.pairs, self.U, self.V):
            na, nb = self.names[a], self.names[b]
            load_linear(u, params[f"U_{na}_{nb}"])
            load_linear(v, params[f"V_{na}_{nb}"])
        if self.proj is not None:
            load_linear(self.proj, params["proj"])


@_register("late")
class LateRef(FusionReference):
    """Late fusion: per-modality heads (Linear, or Linear-GELU-Linear), logits averaged
    (``combine="mean"``) or softmax(a)-weighted (``combine="learned"``)."""

    def __init__(self, names, dims, out_dim, hidden_dim: Optional[int] = None, combine: str = "mean",
                 dropout_rate: float = 0.0):
        super().__init__(names, dims, out_dim)
        self.hidden_dim, self.combine = hidden_dim, combine
        if hidden_dim is None:
            self.heads = nn.ModuleList(nn.Linear(d, out_dim) for d in dims)
        else:
            # flax's nn.gelu defaults to the tanh approximation.
            self.heads = nn.ModuleList(
                nn.Sequential(nn.Linear(d, hidden_dim), nn.GELU(approximate="tanh"), nn.Linear(hidden_dim, out_dim))
                for d in dims
            )
        self.modality_logits = nn.Parameter(torch.zeros(len(dims))) if combine == "learned" else None

    def forward(self, *xs):
        logits = torch.stack([h(x) for h, x in zip(self.heads, xs)], dim=1)
        if self.modality_logits is None:
            return logits.mean(dim=1)
        return torch.einsum("m,bmc->bc", torch.softmax(self.modality_logits, 0), logits)

    def load_flax(self, params):
        for n, h in zip(self.names, self.heads):
            if self.hidden_dim is None:
                load_linear(h, params[f"head_{n}"])
            else:
                load_linear(h[0], params[f"hidden_{n}"])
                load_linear(h[2], params[f"head_{n}"])
        if self.modality_logits is not None:
            _copy(self.modality_logits, params["modality_logits"], "late.modality_logits")


# ----------------------------------------------------------------------------- attention blocks
#
# Built from the stock PyTorch layers a PyTorch user reaches for:
# nn.MultiheadAttention (packed in_proj, as in MulT's and TorchMultimodal's
# code) and nn.TransformerEncoderLayer(norm_first=True) for self-attention
# layers. flax's LayerNorm epsilon is 1e-6 and its GELU the tanh approximation;
# the references use the same so that given the same weights they agree.

LN_EPS = 1e-6


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


@torch.no_grad()
def load_layer_norm(ln: nn.LayerNorm, p: Mapping[str, Any]) -> None:
    _copy(ln.weight, p["scale"], "LayerNorm.scale")
    _copy(ln.bias, p["bias"], "LayerNorm.bias")


@torch.no_grad()
def load_mha(mha: nn.MultiheadAttention, p: Mapping[str, Any]) -> None:
    """mmjax MultiHeadAttention {query,key,value: kernel (E, H, hd), bias (H, hd);
    out: kernel (H, hd, E), bias (E,)} -> nn.MultiheadAttention (packed in_proj)."""
    e = mha.embed_dim
    w = [_t(p[k]["kernel"]).reshape(e, -1).T for k in ("query", "key", "value")]
    b = [_t(p[k]["bias"]).reshape(-1) for k in ("query", "key", "value")]
    _copy(mha.in_proj_weight, torch.cat(w, 0), "attention in_proj_weight")
    _copy(mha.in_proj_bias, torch.cat(b, 0), "attention in_proj_bias")
    out_kernel = _t(p["out"]["kernel"])
    _copy(mha.out_proj.weight, out_kernel.reshape(-1, out_kernel.shape[-1]).T, "attention out_proj.weight")
    _copy(mha.out_proj.bias, p["out"]["bias"], "attention out_proj.bias")


def self_attention_layer(dim: int, num_heads: int, mlp_dim: int) -> nn.TransformerEncoderLayer:
    """Pre-LN self-attention layer, the stock PyTorch one."""
    return nn.TransformerEncoderLayer(
        dim, num_heads, dim_feedforward=mlp_dim, dropout=0.0, activation=_gelu_tanh,
        layer_norm_eps=LN_EPS, batch_first=True, norm_first=True,
    )


@torch.no_grad()
def load_self_attention_layer(layer: nn.TransformerEncoderLayer, p: Mapping[str, Any]) -> None:
    """mmjax TransformerBlock {ln_attn, self_attn, ln_mlp, mlp: {fc1, fc2}} -> encoder layer."""
    load_layer_norm(layer.norm1, p["ln_attn"])
    load_mha(layer.self_attn, p["self_attn"])
    load_layer_norm(layer.norm2, p["ln_mlp"])
    load_linear(layer.linear1, p["mlp"]["fc1"])
    load_linear(layer.linear2, p["mlp"]["fc2"])


class CrossAttentionLayer(nn.Module):
    """Pre-LN cross-modal attention layer (MulT): x + MHA(LN x, LN c, LN c); x + MLP(LN x)."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int):
        super().__init__()
        self.ln_q = nn.LayerNorm(dim, eps=LN_EPS)
        self.ln_kv = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = nn.MultiheadAttention(dim, num_heads, dropout=0.0, batch_first=True)
        self.ln_mlp = nn.LayerNorm(dim, eps=LN_EPS)
        self.fc1 = nn.Linear(dim, mlp_dim)
        self.fc2 = nn.Linear(mlp_dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        c = self.ln_kv(context)
        x = x + self.attn(self.ln_q(x), c, c, need_weights=False)[0]
        return x + self.fc2(_gelu_tanh(self.fc1(self.ln_mlp(x))))

    @torch.no_grad()
    def load_flax(self, p: Mapping[str, Any]) -> None:
        load_layer_norm(self.ln_q, p["ln_q"])
        load_layer_norm(self.ln_kv, p["ln_kv"])
        load_mha(self.attn, p["cross_attn"])
        load_layer_norm(self.ln_mlp, p["ln_mlp"])
        load_linear(self.fc1, p["mlp"]["fc1"])
        load_linear(self.fc2, p["mlp"]["fc2"])


class _TokenReference(FusionReference):
    """Per-modality token projections (B, T_m, D_m) -> (B, T_m, dim); pooled (B, D_m) is one token."""

    def __init__(self, names, dims, out_dim, dim: int, num_heads: int, mlp_dim: Optional[int],
                 pos_emb: bool, token_lengths: Optional[Sequence[int]]):
        super().__init__(names, dims, out_dim)
        self.dim, self.num_heads = dim, num_heads
        self.mlp_dim = 4 * dim if mlp_dim is None else mlp_dim
        self.proj = nn.ModuleList(nn.Linear(d, dim) for d in dims)
        self.pos_emb = None
        if pos_emb:
            if token_lengths is None:
                raise ReferenceError("attention reference with pos_emb=True needs token_lengths")
            self.pos_emb = nn.ParameterList(nn.Parameter(torch.zeros(t, dim)) for t in token_lengths)

    def project(self, xs):
        out = []
        for i, (lin, x) in enumerate(zip(self.proj, xs)):
            if x.dim() == 2:
                x = x[:, None, :]
            h = lin(x)
            if self.pos_emb is not None:
                h = h + self.pos_emb[i]
            out.append(h)
        return out

    def load_projections(self, params):
        for i, (n, lin) in enumerate(zip(self.names, self.proj)):
            load_linear(lin, params[f"proj_{n}"])
            if self.pos_emb is not None:
                _copy(self.pos_emb[i], params[f"pos_emb_{n}"], f"pos_emb_{n}")


@_register("cross_attention")
class CrossModalRef(_TokenReference):
    """MulT (Tsai et al. 2019): for every target a and source b != a, ``num_layers``
    cross-modal attention layers (queries from a, keys/values from b) and a
    LayerNorm; per target the M-1 streams are concatenated on features,
    mean-pooled over tokens; the M targets concatenated; a Linear to out_dim."""

    def __init__(self, names, dims, out_dim, dim: int = 64, num_heads: int = 4, num_layers: int = 1,
                 mlp_dim: Optional[int] = None, pos_emb: bool = False, token_lengths=None,
                 dropout_rate: float = 0.0, return_tokens: bool = False):
        super().__init__(names, dims, out_dim, dim, num_heads, mlp_dim, pos_emb, token_lengths)
        if return_tokens:
            raise ReferenceError("cross_attention reference: return_tokens is not supported")
        self.num_layers = num_layers
        m = len(dims)
        self.pairs = [(a, b) for a in range(m) for b in range(m) if a != b]
        self.layers = nn.ModuleList(
            nn.ModuleList(CrossAttentionLayer(dim, num_heads, self.mlp_dim) for _ in range(num_layers))
            for _ in self.pairs
        )
        self.norms = nn.ModuleList(nn.LayerNorm(dim, eps=LN_EPS) for _ in self.pairs)
        self.out = nn.Linear(m * (m - 1) * dim, out_dim)

    def forward(self, *xs):
        x = self.project(xs)
        m = len(x)
        streams: List[List[torch.Tensor]] = [[] for _ in range(m)]
        for (a, b), layers, norm in zip(self.pairs, self.layers, self.norms):
            h = x[a]
            for layer in layers:
                h = layer(h, x[b])
            streams[a].append(norm(h))
        pooled = [torch.cat(s, dim=-1).mean(dim=1) for s in streams]
        return self.out(torch.cat(pooled, dim=-1))

    def load_flax(self, params):
        self.load_projections(params)
        for (a, b), layers, norm in zip(self.pairs, self.layers, self.norms):
            na, nb = self.names[a], self.names[b]
            for i, layer in enumerate(layers):
                layer.load_flax(params[f"{na}_from_{nb}_{i}"])
            load_layer_norm(norm, params[f"{na}_from_{nb}_norm"])
        load_linear(self.out, params["out"])


@_register("bottleneck")
class BottleneckRef(_TokenReference):
    """MBT (Nagrani et al. 2021): per-modality pre-LN transformer layers; from
    ``fusion_layer`` on each modality's layer attends over [own tokens;
    bottleneck tokens] and the updated bottlenecks are averaged over
    modalities. Per-modality final LayerNorm, token mean, modality mean, Linear."""

    def __init__(self, names, dims, out_dim, dim: int = 64, num_heads: int = 4, num_layers: int = 2,
                 fusion_layer: int = 0, num_bottlenecks: int = 4, mlp_dim: Optional[int] = None,
                 share_weights: bool = False, pos_emb: bool = False, token_lengths=None,
                 dropout_rate: float = 0.0):
        super().__init__(names, dims, out_dim, dim, num_heads, mlp_dim, pos_emb, token_lengths)
        self.num_layers, self.fusion_layer, self.share = num_layers, fusion_layer, share_weights
        owners = 1 if share_weights else len(dims)
        self.layers = nn.ModuleList(
            nn.ModuleList(self_attention_layer(dim, num_heads, self.mlp_dim) for _ in range(num_layers))
            for _ in range(owners)
        )
        self.final_norms = nn.ModuleList(nn.LayerNorm(dim, eps=LN_EPS) for _ in range(owners))
        self.bottleneck = nn.Parameter(torch.zeros(num_bottlenecks, dim)) if fusion_layer < num_layers else None
        self.out = nn.Linear(dim, out_dim)

    def forward(self, *xs):
        x = self.project(xs)
        m, b = len(x), x[0].shape[0]
        owner = (lambda i: 0) if self.share else (lambda i: i)  # noqa: E731
        bott = None if self.bottleneck is None else self.bottleneck.expand(b, -1, -1)
        for layer_idx in range(self.num_layers):
            if layer_idx < self.fusion_layer:
                x = [self.layers[owner(i)][layer_idx](x[i]) for i in range(m)]
                continue
            updated = []
            for i in range(m):
                t = x[i].shape[1]
                out = self.layers[owner(i)][layer_idx](torch.cat([x[i], bott], dim=1))
                x[i] = out[:, :t]
                updated.append(out[:, t:])
            bott = torch.stack(updated, dim=0).mean(dim=0)
        pooled = [self.final_norms[owner(i)](x[i]).mean(dim=1) for i in range(m)]
        return self.out(torch.stack(pooled, dim=0).mean(dim=0))

    def load_flax(self, params):
        self.load_projections(params)
        owners = ["shared"] if self.share else self.names
        for o, layers, norm in zip(owners, self.layers, self.final_norms):
            for i, layer in enumerate(layers):
                load_self_attention_layer(layer, params[f"layer_{i}" if self.share else f"{o}_layer_{i}"])
            load_layer_norm(norm, params["ln_final" if self.share else f"{o}_ln_final"])
        if self.bottleneck is not None:
            _copy(self.bottleneck, params["bottleneck"], "bottleneck")
        load_linear(self.out, params["out"])


@_register("perceiver")
class PerceiverRef(_TokenReference):
    """Perceiver (Jaegle et al. 2021): N learned latents cross-attend to the
    concatenated tokens of all modalities (each plus a modality embedding), then
    latent self-attention; repeated ``num_layers`` times; LayerNorm, latent mean, Linear."""

    def __init__(self, names, dims, out_dim, dim: int = 64, num_heads: int = 4, num_layers: int = 1,
                 num_latents: int = 8, num_self_layers: int = 1, mlp_dim: Optional[int] = None,
                 share_weights: bool = False, pos_emb: bool = False, token_lengths=None,
                 dropout_rate: float = 0.0):
        super().__init__(names, dims, out_dim, dim, num_heads, mlp_dim, pos_emb, token_lengths)
        self.num_layers, self.share = num_layers, share_weights
        repeats = 1 if share_weights else num_layers
        self.modality_emb = nn.ParameterList(nn.Parameter(torch.zeros(dim)) for _ in dims)
        self.latents = nn.Parameter(torch.zeros(num_latents, dim))
        self.cross = nn.ModuleList(CrossAttentionLayer(dim, num_heads, self.mlp_dim) for _ in range(repeats))
        self.selfs = nn.ModuleList(
            nn.ModuleList(self_attention_layer(dim, num_heads, self.mlp_dim) for _ in range(num_self_layers))
            for _ in range(repeats)
        )
        self.ln_final = nn.LayerNorm(dim, eps=LN_EPS)
        self.out = nn.Linear(dim, out_dim)

    def forward(self, *xs):
        x = self.project(xs)
        byte = torch.cat([h + e for h, e in zip(x, self.modality_emb)], dim=1)
        z = self.latents.expand(byte.shape[0], -1, -1)
        for r in range(self.num_layers):
            j = 0 if self.share else r
            z = self.cross[j](z, byte)
            for layer in self.selfs[j]:
                z = layer(z)
        return self.out(self.ln_final(z).mean(dim=1))

    def load_flax(self, params):
        self.load_projections(params)
        for n, e in zip(self.names, self.modality_emb):
            _copy(e, params[f"modality_emb_{n}"], f"modality_emb_{n}")
        _copy(self.latents, params["latents"], "latents")
        for r, (cross, selfs) in enumerate(zip(self.cross, self.selfs)):
            cross.load_flax(params[f"cross_{r}"])
            for s, layer in enumerate(selfs):
                load_self_attention_layer(layer, params[f"self_{r}_{s}"])
        load_layer_norm(self.ln_final, params["ln_final"])
        load_linear(self.out, params["out"])


def has_reference(name: str) -> bool:
    return name in REFERENCES


def build_reference(name: str, dims: Mapping[str, int], out_dim: int, **config: Any) -> FusionReference:
    """The PyTorch reference of fusion block ``name``.

    Args:
      name: an mmjax fusion block name.
      dims: modality name -> feature dim (the reference orders them by name).
      out_dim: output width.
      **config: the mmjax block's config; keys that only affect dtype or
        training (``dtype``, ``param_dtype``, dropout) are ignored.
    """
    if name not in REFERENCES:
        raise ReferenceError(f"no PyTorch reference for fusion block {name!r}; have {sorted(REFERENCES)}")
    config = {k: v for k, v in config.items() if k not in ("dtype", "param_dtype")}
    names = sorted(dims)
    try:
        return REFERENCES[name](names, [dims[n] for n in names], out_dim, **config)
    except TypeError as e:
        raise ReferenceError(f"reference {name!r}: unsupported config {sorted(config)}: {e}") from None


def load_from_flax(torch_module: FusionReference, params: Any) -> FusionReference:
    """Copies an mmjax params pytree (boxed or not, with or without the top-level
    ``"params"`` key) into ``torch_module`` in place; returns it."""
    params = _unbox(params)
    if isinstance(params, Mapping) and "params" in params and len(params) == 1:
        params = params["params"]
    torch_module.load_flax(params)
    return torch_module


def to_torch_inputs(features: Mapping[str, Any]) -> List[torch.Tensor]:
    """modality -> array (numpy / jax) as torch tensors in sorted-name order."""
    return [torch.from_numpy(np.array(features[n], dtype=np.float32)) for n in sorted(features)]


# The block.bootstrap / MMF bilinear family lives in its own file (registered on import).
from benchmarks import reference_torch_bilinear  # noqa: E402,F401
# TorchMultimodal's and MultiBench's fusions (issue 20, catalogue A), registered on import.
from benchmarks import reference_torch_catalogue  # noqa: E402,F401
