"""PyTorch references of the bilinear family (mcb, mlb, mfh, mutan, block, linear_sum, concat_mlp).

Each mirrors ``block/models/networks/fusions/fusions.py`` (and
``compactbilinearpooling.py`` for MCB) of Cadene/block.bootstrap.pytorch,
which MMF's ``mmf/modules/fusions.py`` copies: the same ``linear0`` /
``merge_linears`` / ``linear_out`` structure, ``view(..).sum(..)`` poolings
and chunking, with three changes that the mmjax blocks share and document:

* more than two modalities chain the elementwise product (or, for MCB, the
  spectrum product) over the modalities in sorted-name order;
* the power normalisation is the eps-stabilised sign(z)(sqrt(|z| + eps) -
  sqrt(eps)) (the published sqrt(relu(z)) - sqrt(relu(-z)) at eps = 0), and
  F.normalize's eps is sqrt(eps);
* MCB's count-sketch hashes are passed in (the published ``CountSketch``
  accepts h and s), taken from :func:`mmjax.fusion.compact_bilinear.count_sketch_hashes`,
  and ``torch.fft.rfft`` / ``irfft`` replace the removed ``torch.rfft`` / ``irfft``.

Registered into :data:`benchmarks.reference_torch.REFERENCES` on import
(``reference_torch`` imports this module).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.reference_torch import FusionReference, ReferenceError, _register, load_linear


def _act(name: Optional[str]):
    if name is None:
        return lambda x: x
    if name not in ("relu", "tanh", "sigmoid"):
        raise ReferenceError(f"bilinear family reference: unknown activation {name!r}")
    return getattr(torch, name)


def _power_l2(z: torch.Tensor, eps: float) -> torch.Tensor:
    z = torch.sign(z) * (torch.sqrt(z.abs() + eps) - math.sqrt(eps))
    return F.normalize(z, p=2, dim=-1, eps=math.sqrt(eps))


def _prod(ts):
    out = ts[0]
    for t in ts[1:]:
        out = out * t
    return out


def get_sizes_list(dim: int, chunks: int):
    """block.bootstrap's ``get_sizes_list``; a last size of 0 is evened out as for < 0."""
    split_size = (dim + chunks - 1) // chunks
    sizes_list = [split_size] * chunks
    sizes_list[-1] = sizes_list[-1] - (sum(sizes_list) - dim)
    if sizes_list[-1] <= 0:
        n_miss = sizes_list[-2] - sizes_list[-1]
        sizes_list[-1] = sizes_list[-2]
        for j in range(n_miss):
            sizes_list[-j - 1] -= 1
    return sizes_list


@_register("mlb")
class MLBRef(FusionReference):
    """MLB: linear_out(prod_m act_in(linear_m(x_m))), then act_out."""

    def __init__(self, names, dims, out_dim, mm_dim=1200, activ_input="tanh", activ_output="relu",
                 normalize=False, dropout_rate=0.0, eps=1e-8):
        super().__init__(names, dims, out_dim)
        self.activ_input, self.activ_output, self.normalize, self.eps = activ_input, activ_output, normalize, eps
        self.linears = nn.ModuleList(nn.Linear(d, mm_dim) for d in dims)
        self.linear_out = nn.Linear(mm_dim, out_dim)

    def forward(self, *xs):
        z = _prod([_act(self.activ_input)(lin(x)) for lin, x in zip(self.linears, xs)])
        if self.normalize:
            z = _power_l2(z, self.eps)
        return _act(self.activ_output)(self.linear_out(z))

    def load_flax(self, params):
        for n, lin in zip(self.names, self.linears):
            load_linear(lin, params[f"linear_{n}"])
        load_linear(self.linear_out, params["linear_out"])


@_register("linear_sum")
class LinearSumRef(MLBRef):
    """LinearSum: linear_out(sum_m act_in(linear_m(x_m))), then act_out."""

    def __init__(self, names, dims, out_dim, mm_dim=1200, activ_input="relu", activ_output="relu",
                 normalize=False, dropout_rate=0.0, eps=1e-8):
        super().__init__(names, dims, out_dim, mm_dim, activ_input, activ_output, normalize, dropout_rate, eps)

    def forward(self, *xs):
        z = torch.stack([_act(self.activ_input)(lin(x)) for lin, x in zip(self.linears, xs)], 0).sum(0)
        if self.normalize:
            z = _power_l2(z, self.eps)
        return _act(self.activ_output)(self.linear_out(z))


@_register("mfh")
class MFHRef(FusionReference):
    """MFH: ``order`` MFB blocks, z_i_skip = prod_m act(linear_{m,i}(x_m)) * z_{i-1}_skip,
    z_i = z_i_skip.view(B, mm_dim, factor).sum(2); linear_out(cat z_i), then act_out."""

    def __init__(self, names, dims, out_dim, mm_dim=1200, factor=2, order=2, activ_input="relu",
                 activ_output="relu", normalize=False, dropout_rate=0.0, eps=1e-8):
        super().__init__(names, dims, out_dim)
        self.mm_dim, self.factor, self.order = mm_dim, factor, order
        self.activ_input, self.activ_output, self.normalize, self.eps = activ_input, activ_output, normalize, eps
        self.linears = nn.ModuleList(
            nn.ModuleList(nn.Linear(d, mm_dim * factor) for d in dims) for _ in range(order))
        self.linear_out = nn.Linear(mm_dim * order, out_dim)

    def forward(self, *xs):
        skip, zs = None, []
        for linears in self.linears:
            m = _prod([_act(self.activ_input)(lin(x)) for lin, x in zip(linears, xs)])
            skip = m if skip is None else m * skip
            z = skip.view(skip.size(0), self.mm_dim, self.factor).sum(2)
            zs.append(_power_l2(z, self.eps) if self.normalize else z)
        return _act(self.activ_output)(self.linear_out(torch.cat(zs, 1)))

    def load_flax(self, params):
        for i, linears in enumerate(self.linears):
            for n, lin in zip(self.names, linears):
                load_linear(lin, params[f"linear_{n}_{i}"])
        load_linear(self.linear_out, params["linear_out"])


@_register("mutan")
class MutanRef(FusionReference):
    """Mutan: m = prod_m merge_linear_m(linear_m(x_m)), view(-1, rank, mm_dim).sum(1), linear_out."""

    def __init__(self, names, dims, out_dim, mm_dim=1600, rank=15, normalize=False, dropout_rate=0.0, eps=1e-8):
        super().__init__(names, dims, out_dim)
        self.mm_dim, self.rank, self.normalize, self.eps = mm_dim, rank, normalize, eps
        self.linears = nn.ModuleList(nn.Linear(d, mm_dim) for d in dims)
        self.merge_linears = nn.ModuleList(nn.Linear(mm_dim, mm_dim * rank) for _ in dims)
        self.linear_out = nn.Linear(mm_dim, out_dim)

    def forward(self, *xs):
        m = _prod([merge(lin(x)) for lin, merge, x in zip(self.linears, self.merge_linears, xs)])
        z = m.view(-1, self.rank, self.mm_dim).sum(1)
        if self.normalize:
            z = _power_l2(z, self.eps)
        return self.linear_out(z)

    def load_flax(self, params):
        for n, lin, merge in zip(self.names, self.linears, self.merge_linears):
            load_linear(lin, params[f"linear_{n}"])
            load_linear(merge, params[f"merge_{n}"])
        load_linear(self.linear_out, params["linear_out"])


@_register("block")
class BlockRef(FusionReference):
    """Block: linear_m, chunks (get_sizes_list), per chunk prod_m merge_{m,c}, view(B, rank, -1).sum(1),
    power + L2 per chunk (before_cat) or on the concatenation (after_cat), linear_out."""

    def __init__(self, names, dims, out_dim, mm_dim=1600, chunks=20, rank=15, pos_norm="before_cat",
                 dropout_rate=0.0, eps=1e-8):
        super().__init__(names, dims, out_dim)
        if pos_norm not in ("before_cat", "after_cat"):
            raise ReferenceError(f"block reference: pos_norm {pos_norm!r}")
        self.rank, self.pos_norm, self.eps = rank, pos_norm, eps
        self.sizes_list = get_sizes_list(mm_dim, chunks)
        self.linears = nn.ModuleList(nn.Linear(d, mm_dim) for d in dims)
        self.merge_linears = nn.ModuleList(
            nn.ModuleList(nn.Linear(s, s * rank) for s in self.sizes_list) for _ in dims)
        self.linear_out = nn.Linear(mm_dim, out_dim)

    def forward(self, *xs):
        chunks = [torch.split(lin(x), self.sizes_list, dim=1) for lin, x in zip(self.linears, xs)]
        zs = []
        for c in range(len(self.sizes_list)):
            m = _prod([merges[c](ch[c]) for merges, ch in zip(self.merge_linears, chunks)])
            z = m.view(m.size(0), self.rank, -1).sum(1)
            zs.append(_power_l2(z, self.eps) if self.pos_norm == "before_cat" else z)
        z = torch.cat(zs, 1)
        if self.pos_norm == "after_cat":
            z = _power_l2(z, self.eps)
        return self.linear_out(z)

    def load_flax(self, params):
        for n, lin, merges in zip(self.names, self.linears, self.merge_linears):
            load_linear(lin, params[f"linear_{n}"])
            for c, merge in enumerate(merges):
                load_linear(merge, params[f"merge_{n}_{c}"])
        load_linear(self.linear_out, params["linear_out"])


def count_sketch(x: torch.Tensor, h: torch.Tensor, s: torch.Tensor, output_size: int) -> torch.Tensor:
    """block.bootstrap's ``CountSketchFn_forward``: out[h_i] += x_i * s_i (scatter_add)."""
    out = x.new_zeros(x.shape[:-1] + (output_size,))
    return out.scatter_add_(-1, h.view(1, -1).expand(x.shape), x * s.view(1, -1))


@_register("mcb")
class MCBRef(FusionReference):
    """MCB: count sketch each input, rfft, complex product, irfft (signal size mm_dim), linear_out, act_out."""

    def __init__(self, names, dims, out_dim, mm_dim=16000, activ_output="relu", seed=1, dropout_rate=0.0):
        super().__init__(names, dims, out_dim)
        from mmjax.fusion.compact_bilinear import count_sketch_hashes

        self.mm_dim, self.activ_output = mm_dim, activ_output
        for i, (n, d) in enumerate(zip(names, dims)):
            h, s = count_sketch_hashes(n, d, mm_dim, seed)
            self.register_buffer(f"h{i}", torch.as_tensor(h, dtype=torch.long))
            self.register_buffer(f"s{i}", torch.as_tensor(s, dtype=torch.float32))
        self.linear_out = nn.Linear(mm_dim, out_dim)

    def forward(self, *xs):
        spectrum = None
        for i, x in enumerate(xs):
            f = torch.fft.rfft(count_sketch(x, getattr(self, f"h{i}"), getattr(self, f"s{i}"), self.mm_dim), dim=-1)
            spectrum = f if spectrum is None else spectrum * f
        z = torch.fft.irfft(spectrum, n=self.mm_dim, dim=-1)
        return _act(self.activ_output)(self.linear_out(z))

    def load_flax(self, params):
        load_linear(self.linear_out, params["linear_out"])


@_register("concat_mlp")
class ConcatMLPRef(FusionReference):
    """ConcatMLP: block.bootstrap's MLP(sum d_m, dimensions + [out_dim]) on the concatenation."""

    def __init__(self, names, dims, out_dim, dimensions: Sequence[int] = (500, 500), activation="relu",
                 dropout_rate=0.0):
        super().__init__(names, dims, out_dim)
        widths = [sum(dims), *dimensions, out_dim]
        self.activation = activation
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))

    def forward(self, *xs):
        z = torch.cat(xs, dim=-1)
        for i, lin in enumerate(self.linears):
            z = lin(z)
            if i < len(self.linears) - 1:
                z = F.__dict__[self.activation](z)
        return z

    def load_flax(self, params):
        for i, lin in enumerate(self.linears[:-1]):
            load_linear(lin, params[f"linear_{i}"])
        load_linear(self.linears[-1], params["linear_out"])
