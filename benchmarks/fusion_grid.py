"""The sizes ``bench fusion`` measures: the :class:`Grid` presets (``FULL``,
``QUICK``, ``TINY``) and the :class:`Case` list built from one. The groups of
cases (batch, modalities, dims, tokens, large) are described in
:mod:`benchmarks.fusion_throughput`.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from benchmarks.fusion_specs import BlockSpec, spec_for

MATMUL_HEAVY = ("concat", "tensor", "low_rank", "bilinear")


@dataclasses.dataclass(frozen=True)
class Grid:
    """Sizes to measure. Every tuple is swept independently around the defaults."""

    batches: Tuple[int, ...] = (1, 8, 64, 512, 4096)
    batch_dims: Tuple[int, ...] = (64, 32)       # per-modality dims for the batch sweep
    out_dim: int = 64
    token_length: int = 16                        # attention blocks in the batch sweep
    scaling_batch: int = 64
    scaling_modalities: Tuple[int, ...] = (2, 3, 4)
    scaling_dim: int = 16                         # per-modality dim of the modalities sweep
    scaling_dims: Tuple[int, ...] = (16, 32, 64, 128, 256)
    scaling_out_dim: int = 32
    token_lengths: Tuple[int, ...] = (16, 64, 256)
    token_batch: int = 8
    large: bool = True
    repeats: int = 5
    min_time: float = 0.1
    torch_compile: bool = True
    torch_compile_batches: Optional[Tuple[int, ...]] = None  # None: every batch-sweep case
    scaling_forward: bool = True                  # also time the forward pass in scaling cases
    peak_n: int = 2048
    max_token_batch: Optional[int] = None         # cap on the batch sweep for the attention blocks
    dtype: str = "float32"                        # compute dtype: float32 | bfloat16 (params stay float32)
    mode: str = "full"


FULL = Grid()
QUICK = Grid(
    batches=(8, 512),
    scaling_modalities=(2, 4),
    scaling_dims=(16, 64),
    token_lengths=(16, 64),
    repeats=5,
    min_time=0.03,
    torch_compile=False,
    scaling_forward=False,
    peak_n=1024,
    max_token_batch=64,
    mode="quick",
)
# The test suite's configuration: one small case per block, one repeat.
TINY = Grid(
    batches=(4,),
    batch_dims=(8, 6),
    out_dim=8,
    token_length=4,
    scaling_batch=4,
    scaling_modalities=(),
    scaling_dim=4,
    scaling_dims=(),
    scaling_out_dim=4,
    token_lengths=(),
    token_batch=2,
    large=False,
    repeats=1,
    min_time=0.0,
    torch_compile=False,
    scaling_forward=False,
    peak_n=128,
    mode="tiny",
)


@dataclasses.dataclass(frozen=True)
class Case:
    """One measurement: a block at one set of sizes."""

    block: str
    group: str                  # batch | modalities | dims | tokens | large
    batch: int
    dims: Tuple[int, ...]       # per modality, sorted-name order (m0, m1, ...)
    out_dim: int
    token_length: Optional[int]  # None: pooled (B, D) inputs
    config: Mapping[str, Any]
    torch: bool = True           # also run the PyTorch reference
    torch_compile: bool = False
    forward: bool = True         # time the forward pass (train is always timed)

    @property
    def names(self) -> Tuple[str, ...]:
        return tuple(f"m{i}" for i in range(len(self.dims)))


def _large_case(block: str) -> Optional[Dict[str, Any]]:
    """Sizes where the matmul-heavy blocks are dominated by one big matmul."""
    return {
        "concat": dict(batch=1024, dims=(1024, 1024), out_dim=1024, config={}),
        "tensor": dict(batch=1024, dims=(32, 32), out_dim=512, config={}),
        "low_rank": dict(batch=1024, dims=(512, 512), out_dim=512, config={"rank": 8}),
        "bilinear": dict(batch=1024, dims=(512, 512), out_dim=512, config={"factor_dim": 5}),
    }.get(block)


def _fits(spec: BlockSpec, dims: Sequence[int], out_dim: int) -> bool:
    if spec.max_modalities is not None and len(dims) > spec.max_modalities:
        return False
    return spec.max_product is None or math.prod(d + 1 for d in dims) * out_dim <= spec.max_product


def _batch_cases(name: str, spec: BlockSpec, grid: Grid, tl: Optional[int], cfg: Dict[str, Any]) -> List[Case]:
    batches = grid.batches
    if spec.tokens and grid.max_token_batch is not None:
        batches = tuple(sorted({min(b, grid.max_token_batch) for b in batches}))
    cases = []
    for b in batches:
        compile_here = grid.torch_compile and (
            grid.torch_compile_batches is None or b in grid.torch_compile_batches
        )
        cases.append(Case(name, "batch", b, tuple(grid.batch_dims), grid.out_dim, tl, cfg,
                          torch_compile=compile_here))
    return cases


def _scaling_cases(name: str, spec: BlockSpec, grid: Grid, tl: Optional[int], cfg: Dict[str, Any]) -> List[Case]:
    cases = []
    for m in grid.scaling_modalities:
        dims = (grid.scaling_dim,) * m
        if _fits(spec, dims, grid.scaling_out_dim):
            cases.append(Case(name, "modalities", grid.scaling_batch, dims, grid.scaling_out_dim, tl, cfg,
                              torch=False, forward=grid.scaling_forward))
    for d in grid.scaling_dims:
        dims = (d, d)
        if _fits(spec, dims, grid.scaling_out_dim):
            cases.append(Case(name, "dims", grid.scaling_batch, dims, grid.scaling_out_dim, tl, cfg,
                              torch=False, forward=grid.scaling_forward))
    return cases


def build_cases(blocks: Sequence[str], grid: Grid) -> List[Case]:
    """The measurements for ``blocks`` on ``grid``, in run order."""
    cases: List[Case] = []
    for name in blocks:
        spec = spec_for(name)
        tl = grid.token_length if spec.tokens else None
        cfg = dict(spec.config)
        cases += _batch_cases(name, spec, grid, tl, cfg)
        cases += _scaling_cases(name, spec, grid, tl, cfg)
        if spec.tokens:
            for t in grid.token_lengths:
                cases.append(Case(name, "tokens", grid.token_batch, tuple(grid.batch_dims), grid.out_dim, t, cfg))
        if grid.large and name in MATMUL_HEAVY:
            large = _large_case(name)
            cases.append(Case(name, "large", large["batch"], large["dims"], large["out_dim"], None,
                              {**cfg, **large["config"]}))
    return cases
