"""PyTorch references of the TorchMultimodal and MultiBench fusions (issue 20, catalogue A).

Registered into :data:`benchmarks.reference_torch.REFERENCES` on import (that
module imports this one at its end). Each follows its peer's code:
TorchMultimodal ``AttentionFusionModule`` and ``DeepsetFusionModule`` /
``DeepsetFusionWithTransformer`` (attention_fusion.py, deepset_fusion.py),
MultiBench ``MultiplicativeInteractions2Modal``, ``NLgate``, ``ConcatEarly`` /
``Stack`` and the early / late fusion transformers (fusions/common_fusions.py),
with the transformer layers as the mmjax blocks use them (pre-LN, tanh GELU,
LayerNorm eps 1e-6) so the same weights give the same outputs. All modalities
present, no padding, as the other references.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.reference_torch import (
    LN_EPS, FusionReference, ReferenceError, _copy, _register, _TokenReference, load_layer_norm, load_linear,
    load_self_attention_layer, self_attention_layer,
)


@_register("attention_fusion")
class AttentionFusionRef(FusionReference):
    """TorchMultimodal AttentionFusionModule: softmax(Linear([z_1; ...; z_M])) weights the projections."""

    def __init__(self, names, dims, out_dim=None):
        super().__init__(names, dims, out_dim or min(dims))
        self.attention = nn.Sequential(nn.Linear(sum(dims), len(dims)), nn.Softmax(-1))
        self.encoding_projection = nn.ModuleList(nn.Linear(d, self.out_dim) for d in dims)

    def forward(self, *xs):
        w = self.attention(torch.cat(xs, dim=-1))
        projected = [w[:, i].unsqueeze(-1) * p(x) for i, (p, x) in enumerate(zip(self.encoding_projection, xs))]
        return torch.sum(torch.stack(projected), dim=0)

    def load_flax(self, params):
        load_linear(self.attention[0], params["attention"])
        for n, lin in zip(self.names, self.encoding_projection):
            load_linear(lin, params[f"proj_{n}"])


def _tmm_mlp(in_dim: int, out_dim: int, hidden_dims: Sequence[int]) -> nn.Sequential:
    """TorchMultimodal's MLP (Linear -> ReLU per hidden width, then Linear), dropout 0."""
    layers = []
    for w in hidden_dims:
        layers += [nn.Linear(in_dim, w), nn.ReLU()]
        in_dim = w
    return nn.Sequential(*layers, nn.Linear(in_dim, out_dim))


@_register("deepset")
class DeepsetRef(FusionReference):
    """TorchMultimodal DeepsetFusionModule (use_auto_mapping = ``project``), pooling sum / mean / max."""

    def __init__(self, names, dims, out_dim, proj_dim: Optional[int] = None, project: bool = True,
                 pooling: str = "sum", apply_attention: bool = False, attention_dim: Optional[int] = None,
                 modality_normalize: bool = False, norm_factor: float = 2.0, hidden_dims: Sequence[int] = (),
                 dropout_rate: float = 0.0):
        super().__init__(names, dims, out_dim)
        if not project and len(set(dims)) != 1:
            raise ReferenceError("deepset reference: project=False needs equal dims")
        p = (proj_dim or min(dims)) if project else dims[0]
        self.projections = nn.ModuleList(nn.Linear(d, p) if project else nn.Identity() for d in dims)
        self.attention = None
        if apply_attention:
            a = attention_dim or max(p // 2, 1)
            self.attention = nn.Sequential(nn.Linear(p, a), nn.Tanh(), nn.Linear(a, 1), nn.Softmax(dim=-2))
        self.modality_normalize, self.norm_factor = modality_normalize, norm_factor
        self.pooling_function = {"sum": torch.sum, "mean": torch.mean, "max": torch.max}.get(pooling)
        self.mlp = _tmm_mlp(p, out_dim, hidden_dims)

    def embed(self, xs):
        stacked = torch.stack([proj(x) for proj, x in zip(self.projections, xs)], dim=1)
        if self.attention is not None:
            stacked = stacked * self.attention(stacked)
        return F.normalize(stacked, p=self.norm_factor, dim=1 if self.modality_normalize else 2)

    def pool(self, embeddings):
        pooled = self.pooling_function(embeddings, dim=1)
        return pooled.values if isinstance(pooled, tuple) else pooled

    def forward(self, *xs):
        return self.mlp(self.pool(self.embed(xs)))

    def load_flax(self, params):
        for n, proj in zip(self.names, self.projections):
            if isinstance(proj, nn.Linear):
                load_linear(proj, params[f"proj_{n}"])
        if self.attention is not None:
            load_linear(self.attention[0], params["attention_hidden"])
            load_linear(self.attention[2], params["attention_score"])
        linears = [m for m in self.mlp if isinstance(m, nn.Linear)]
        for i, lin in enumerate(linears[:-1]):
            load_linear(lin, params[f"mlp_{i}"])
        load_linear(linears[-1], params["out"])


def _encoder(dim: int, num_heads: int, mlp_dim: int, num_layers: int) -> nn.TransformerEncoder:
    return nn.TransformerEncoder(self_attention_layer(dim, num_heads, mlp_dim), num_layers,
                                 norm=nn.LayerNorm(dim, eps=LN_EPS), enable_nested_tensor=False)


def _load_encoder(enc: nn.TransformerEncoder, p) -> None:
    for i, layer in enumerate(enc.layers):
        load_self_attention_layer(layer, p[f"layer_{i}"])
    load_layer_norm(enc.norm, p["ln_final"])


@_register("deepset_transformer")
class DeepsetTransformerRef(DeepsetRef):
    """TorchMultimodal DeepsetFusionWithTransformer: a TransformerEncoder pools, first token read out."""

    def __init__(self, names, dims, out_dim, num_heads: int = 2, num_layers: int = 1,
                 mlp_dim: Optional[int] = None, **config):
        super().__init__(names, dims, out_dim, **config)
        p = self.mlp[0].in_features
        self.pooling_function = _encoder(p, num_heads, mlp_dim or 4 * p, num_layers)

    def pool(self, embeddings):
        return self.pooling_function(embeddings)[:, 0, :]

    def load_flax(self, params):
        super().load_flax(params)
        _load_encoder(self.pooling_function, params["transformer"])


@_register("multiplicative")
class MultiplicativeRef(FusionReference):
    """MultiBench MultiplicativeInteractions2Modal (matrix / vector / scalar), chained over ``order``.

    ``normalize`` (mmjax's default) adds its LayerNorm over the output; ``normalize=False`` is MultiBench's.
    """

    def __init__(self, names, dims, out_dim, output: str = "matrix", mi_dim: Optional[int] = None,
                 order: Optional[Sequence[str]] = None, normalize: bool = True):
        super().__init__(names, dims, out_dim)
        self.output, o = output, mi_dim or out_dim
        self.order = [self.names.index(n) for n in order] if order is not None else list(range(len(dims)))
        self.links = nn.ModuleList()
        h = dims[self.order[0]]
        for i in self.order[1:]:
            d = dims[i]
            shapes = {"matrix": [(h, d, o), (h, o), (d, o), (o,)], "vector": [(h, d), (h, d), (d,), (d,)],
                      "scalar": [(h,), (h,), (1,), (1,)]}[output]
            self.links.append(nn.ParameterList(nn.Parameter(torch.zeros(s)) for s in shapes))
            h = o if output == "matrix" else d
        self.proj = nn.Linear(h, out_dim) if h != out_dim else None
        self.norm = nn.LayerNorm(out_dim, eps=LN_EPS) if normalize else None

    def forward(self, *xs):
        m1 = xs[self.order[0]]
        for i, (W, U, V, b) in zip(self.order[1:], self.links):
            m2 = xs[i]
            if self.output == "matrix":
                Wprime = torch.einsum("bn, nmd -> bmd", m1, W) + V
                bprime = torch.matmul(m1, U) + b
                m1 = torch.einsum("bm, bmd -> bd", m2, Wprime) + bprime
            elif self.output == "vector":
                m1 = (torch.matmul(m1, W) + V) * m2 + torch.matmul(m1, U) + b
            else:
                Wprime = torch.matmul(m1, W.unsqueeze(1)).squeeze(1) + V
                bprime = torch.matmul(m1, U.unsqueeze(1)).squeeze(1) + b
                m1 = Wprime.unsqueeze(1) * m2 + bprime.unsqueeze(1)
        m1 = self.proj(m1) if self.proj is not None else m1
        return self.norm(m1) if self.norm is not None else m1

    def load_flax(self, params):
        for k, link in enumerate(self.links, start=1):
            for p, s in zip(link, "WUVb"):
                _copy(p, params[f"link_{k}_{s}"], f"multiplicative.link_{k}_{s}")
        if self.proj is not None:
            load_linear(self.proj, params["proj"])
        if self.norm is not None:
            load_layer_norm(self.norm, params["norm"])


@_register("nl_gate")
class NLGateRef(FusionReference):
    """MultiBench NLgate: q + softmax(q kin) vin (no scale), flattened, then a Linear to out_dim."""

    def __init__(self, names, dims, out_dim, query: Optional[str] = None, dim: Optional[int] = None,
                 kv_tokens: Optional[int] = None):
        super().__init__(names, dims, out_dim)
        if len(dims) != 2:
            raise ReferenceError("nl_gate reference: exactly 2 modalities")
        self.qi = 0 if query is None else self.names.index(query)
        dq, dg = dims[self.qi], dims[1 - self.qi]
        self.c, self.s = dim or dq, kv_tokens
        self.qli = nn.Linear(dq, dim) if dim else None
        width = self.c * (kv_tokens or 1)
        self.kli, self.vli = nn.Linear(dg, width), nn.Linear(dg, width)
        self.out = None

    def forward(self, *xs):
        q, k = xs[self.qi], xs[1 - self.qi]
        q = q if q.dim() == 3 else q[:, None]
        qin = self.qli(q) if self.qli is not None else q
        if self.s is not None:  # NLgate's k_linear / v_linear on a flat vector (tokens: their mean)
            k = k.mean(dim=1) if k.dim() == 3 else k
            kin = self.kli(k).view(-1, self.c, self.s)
            vin = self.vli(k).view(-1, self.s, self.c)
        else:
            k = k if k.dim() == 3 else k[:, None]
            kin, vin = self.kli(k).transpose(1, 2), self.vli(k)
        finalout = torch.matmul(torch.softmax(torch.matmul(qin, kin), dim=2), vin)
        flat = torch.flatten(qin + finalout, 1)
        if self.out is None:
            raise ReferenceError("nl_gate reference: load_flax first (the output Linear's width is the flatten's)")
        return self.out(flat)

    def load_flax(self, params):
        if self.qli is not None:
            load_linear(self.qli, params["q"])
        load_linear(self.kli, params["k"])
        load_linear(self.vli, params["v"])
        kernel = params["out"]["kernel"]
        self.out = nn.Linear(kernel.shape[0], self.out_dim)
        load_linear(self.out, params["out"])


@_register("stack")
class StackRef(FusionReference):
    """MultiBench ConcatEarly (torch.cat on dim 2, aligned tokens) or Stack (pooled), flattened, Linear.

    ``token_length`` None (tokens): T is read from the loaded kernel's rows, T = rows / sum(D_m).
    """

    def __init__(self, names, dims, out_dim, inputs: str = "tokens", token_length: Optional[int] = None):
        super().__init__(names, dims, out_dim)
        self.inputs, self.token_length = inputs, token_length
        self.proj = nn.Linear(self._width(token_length or 1), out_dim)

    def _width(self, token_length: int) -> int:
        return token_length * sum(self.dims) if self.inputs == "tokens" else self.dims[0] * len(self.dims)

    def forward(self, *xs):
        if self.inputs == "pooled":
            s = torch.stack([torch.flatten(x, start_dim=1) for x in xs], dim=2)
        else:
            s = torch.cat([x if x.dim() == 3 else x[:, None] for x in xs], dim=2)
        return self.proj(torch.flatten(s, start_dim=1))

    def load_flax(self, params):
        rows = params["proj"]["kernel"].shape[0]
        if self.inputs == "tokens" and self.token_length is None and rows % sum(self.dims) == 0:
            self.proj = nn.Linear(self._width(rows // sum(self.dims)), self.out_dim)
        load_linear(self.proj, params["proj"])


class _TransformerFusionRef(_TokenReference):
    def __init__(self, names, dims, out_dim, dim=64, num_heads=4, num_layers=1, mlp_dim=None, pos_emb=False,
                 pooled_token=False, readout="mean", token_lengths=None, dropout_rate=0.0):
        if pooled_token and token_lengths is not None:
            token_lengths = [t + 1 for t in token_lengths]
        super().__init__(names, dims, out_dim, dim, num_heads, mlp_dim, pos_emb, token_lengths)
        self.num_layers, self.pooled_token, self.readout = num_layers, pooled_token, readout

    def tokens(self, xs):
        xs = [x if x.dim() == 3 else x[:, None] for x in xs]
        if self.pooled_token:
            xs = [torch.cat([x.mean(dim=1, keepdim=True), x], dim=1) for x in xs]
        return self.project(xs)


@_register("early_transformer")
class EarlyTransformerRef(_TransformerFusionRef):
    """One TransformerEncoder over all modalities' projected tokens plus modality embeddings."""

    def __init__(self, names, dims, out_dim, **config):
        super().__init__(names, dims, out_dim, **config)
        self.modality_emb = nn.ParameterList(nn.Parameter(torch.zeros(self.dim)) for _ in dims)
        self.transformer = _encoder(self.dim, self.num_heads, self.mlp_dim, self.num_layers)
        self.out = nn.Linear(self.dim, out_dim)

    def forward(self, *xs):
        x = [h + e for h, e in zip(self.tokens(xs), self.modality_emb)]
        h = self.transformer(torch.cat(x, dim=1))
        if self.readout == "pooled_token":
            starts = torch.cumsum(torch.tensor([0] + [t.shape[1] for t in x[:-1]]), 0)
            return self.out(h[:, starts].mean(dim=1))
        return self.out(h.mean(dim=1))

    def load_flax(self, params):
        self.load_projections(params)
        for n, e in zip(self.names, self.modality_emb):
            _copy(e, params[f"modality_emb_{n}"], f"modality_emb_{n}")
        _load_encoder(self.transformer, params["transformer"])
        load_linear(self.out, params["out"])


@_register("late_transformer")
class LateTransformerRef(_TransformerFusionRef):
    """A TransformerEncoder per modality, token mean (or pooled token), concatenated, Linear (ConcatWithLinear)."""

    def __init__(self, names, dims, out_dim, **config):
        super().__init__(names, dims, out_dim, **config)
        self.transformers = nn.ModuleList(
            _encoder(self.dim, self.num_heads, self.mlp_dim, self.num_layers) for _ in dims)
        self.out = nn.Linear(len(dims) * self.dim, out_dim)

    def forward(self, *xs):
        pooled = []
        for enc, x in zip(self.transformers, self.tokens(xs)):
            h = enc(x)
            pooled.append(h[:, 0] if self.readout == "pooled_token" else h.mean(dim=1))
        return self.out(torch.cat(pooled, dim=-1))

    def load_flax(self, params):
        self.load_projections(params)
        for n, enc in zip(self.names, self.transformers):
            _load_encoder(enc, params[f"transformer_{n}"])
        load_linear(self.out, params["out"])
