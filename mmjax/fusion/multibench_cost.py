"""Cost models of MultiBench's fusions (``multiplicative``, ``nl_gate``, ``stack``; :mod:`mmjax.fusion.multibench`).

Parameters are exact; FLOPs count the contractions and Dense layers at 2 per multiply-add.
"""
from __future__ import annotations

import math

from mmjax.errors import ConfigError
from mmjax.fusion.cost import Cost, register_cost

MI_FORMS = ("matrix", "vector", "scalar")


def _mi_shapes(form: str, d1: int, d2: int, o: int):
    """Parameter shapes (W, U, V, b) of one multiplicative interaction, as MultiBench stores them."""
    if form == "matrix":
        return (d1, d2, o), (d1, o), (d2, o), (o,)
    if form == "vector":
        return (d1, d2), (d1, d2), (d2,), (d2,)
    return (d1,), (d1,), (1,), (1,)


def _mi_width(form: str, d2: int, o: int) -> int:
    return o if form == "matrix" else d2


@register_cost("multiplicative")
def _multiplicative_cost(dims, out_dim, output="matrix", mi_dim=None, order=None, names=None, normalize=True,
                         **config) -> Cost:
    """Exact params (the LayerNorm's 2 * out_dim with ``normalize``); FLOPs of the contractions (elementwise
    gating and the LayerNorm not counted).

    ``order`` (names) needs ``names`` (the sorted modality names) to reorder ``dims``.
    """
    if order is not None:
        if names is None:
            raise ConfigError("multiplicative cost: order given by name needs names=[sorted modality names]")
        dims = [dims[sorted(names).index(n)] for n in order]
    o, params, flops = mi_dim or out_dim, 0, 0
    h = dims[0]
    for d in dims[1:]:
        params += sum(math.prod(s) for s in _mi_shapes(output, h, d, o))
        if output == "matrix":
            flops += 2 * h * d * o + 2 * d * o + 2 * h * o
        else:
            flops += 2 * 2 * h * (d if output == "vector" else 1)
        h = _mi_width(output, d, o)
    if h != out_dim:
        params += (h + 1) * out_dim
        flops += 2 * h * out_dim
    return Cost(params=params + (2 * out_dim if normalize else 0), flops=flops)


@register_cost("nl_gate")
def _nl_gate_cost(dims, out_dim, query=None, dim=None, kv_tokens=None, token_lengths=(1, 1), names=None,
                  **config) -> Cost:
    """q/k/v projections, the two attention contractions and the output Dense.

    ``query`` is None (first sorted), an index, or a name together with ``names``;
    ``token_lengths`` are (T, S) per modality in sorted order.
    """
    if len(dims) != 2:
        raise ConfigError(f"nl_gate cost: needs exactly 2 modalities, got {len(dims)}")
    qi = 0 if query is None else (sorted(names).index(query) if isinstance(query, str) else query)
    dq, dg, t, s = dims[qi], dims[1 - qi], token_lengths[qi], token_lengths[1 - qi]
    c = dim or dq
    params = (dq + 1) * c if dim is not None else 0
    flops = 2 * t * dq * c if dim is not None else 0
    if kv_tokens is None:
        params += 2 * (dg + 1) * c
        flops += 2 * 2 * s * dg * c
    else:
        s = kv_tokens
        params += 2 * (dg + 1) * s * c
        flops += 2 * 2 * dg * s * c
    flops += 2 * 2 * t * s * c
    if out_dim is not None:
        params += (t * c + 1) * out_dim
        flops += 2 * t * c * out_dim
    return Cost(params=params, flops=flops)


@register_cost("stack")
def _stack_cost(dims, out_dim, inputs="tokens", token_length=1, token_lengths=None, **config) -> Cost:
    """The Dense on the flattened stack (T * sum D_m, or D * M inputs).

    T is ``token_length``, or the common length in ``token_lengths`` (one per
    modality, as the other token blocks' cost models take them).
    """
    if token_lengths is not None:
        if len(set(token_lengths)) != 1:
            raise ConfigError(f"stack cost: aligned sequences need equal lengths, got {list(token_lengths)}")
        token_length = token_lengths[0]
    width = token_length * sum(dims) if inputs == "tokens" else dims[0] * len(dims)
    if out_dim is None:
        return Cost(params=0, flops=0)
    return Cost(params=(width + 1) * out_dim, flops=2 * width * out_dim)
