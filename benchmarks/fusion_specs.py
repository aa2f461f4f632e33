"""How ``bench fusion`` drives each of the 27 fusion blocks, and where each comes from.

One :class:`BlockSpec` per registered block (``SPECS``): pooled or token
inputs, the config beyond ``out_dim``, caps on the sizes the block can take,
and the published method it implements. :func:`render_catalogue` writes the
"Blocks" table of ``fusion.md`` from a run's document: every block with its
source, config, parameters and FLOPs from its cost model
(:func:`mmjax.fusion.cost`) at the batch-sweep sizes, and how closely the
PyTorch reference agreed on the same weights.

The bilinear family runs at the widths of the ``av_digits`` sweep
(``experiments/configs/av_digits.py``), not at the published 1200-16000, so
the costs here are those of the blocks that the sweep trains.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Mapping, Optional

from benchmarks.common import fmt_rate, nested_get as _get


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """How the benchmark drives one fusion block.

    Attributes:
      tokens: feed (B, T, D) token sequences (attention blocks) instead of (B, D).
      config: block config beyond ``out_dim`` (filtered to the block's fields).
      max_product: cap on prod_m (d_m + 1) * out_dim, for blocks whose weight
        grows as the product of dims (tensor); larger cases are skipped.
      max_modalities: the most modalities the method takes (nl_gate: 2); cases
        with more are skipped.
      source: the published method and the code it follows.
    """

    tokens: bool = False
    config: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    max_product: Optional[int] = None
    max_modalities: Optional[int] = None
    source: str = ""


ATTENTION_CONFIG = {"dim": 32, "num_heads": 4, "num_layers": 1}
_BBP = "block.bootstrap / MMF"
SPECS: Dict[str, BlockSpec] = {
    # The original twelve.
    "concat": BlockSpec(source="early fusion, concatenation + Linear"),
    "sum": BlockSpec(source="sum of per-modality projections"),
    "weighted": BlockSpec(source="learned softmax weights over projections"),
    "gated": BlockSpec(source="GMU (Arevalo et al. 2017)"),
    "film": BlockSpec(source="FiLM (Perez et al. 2018)"),
    "tensor": BlockSpec(max_product=2**24, source="TFN (Zadeh et al. 2017)"),
    "low_rank": BlockSpec(config={"rank": 4}, source="LMF (Liu et al. 2018)"),
    "bilinear": BlockSpec(config={"factor_dim": 5}, source="MFB (Yu et al. 2017)"),
    "late": BlockSpec(source="decision-level fusion"),
    "cross_attention": BlockSpec(tokens=True, config=ATTENTION_CONFIG, source="MulT (Tsai et al. 2019)"),
    "bottleneck": BlockSpec(tokens=True, config={**ATTENTION_CONFIG, "num_layers": 2, "num_bottlenecks": 4},
                            source="MBT (Nagrani et al. 2021)"),
    "perceiver": BlockSpec(tokens=True, config={**ATTENTION_CONFIG, "num_latents": 8},
                           source="Perceiver (Jaegle et al. 2021)"),
    # The bilinear family, at the av_digits widths.
    "mcb": BlockSpec(config={"mm_dim": 2048}, source=f"MCB, count sketch + FFT (Fukui et al. 2016; {_BBP})"),
    "mlb": BlockSpec(config={"mm_dim": 256}, source=f"MLB, low-rank bilinear with tanh (Kim et al. 2017; {_BBP})"),
    "mfh": BlockSpec(config={"mm_dim": 128}, source=f"MFH, cascade of MFB (Yu et al. 2018; {_BBP})"),
    "mutan": BlockSpec(config={"mm_dim": 64, "rank": 5}, source=f"MUTAN, Tucker (Ben-younes et al. 2017; {_BBP})"),
    "block": BlockSpec(config={"mm_dim": 256, "chunks": 8, "rank": 8},
                       source=f"BLOCK, block-superdiagonal (Ben-younes et al. 2019; {_BBP})"),
    "linear_sum": BlockSpec(config={"mm_dim": 256}, source=f"sum of projections + Linear ({_BBP} baseline)"),
    "concat_mlp": BlockSpec(config={"dimensions": (256,)}, source=f"concatenation + MLP ({_BBP} baseline)"),
    # TorchMultimodal.
    "attention_fusion": BlockSpec(source="input-dependent softmax weights over projections "
                                         "(TorchMultimodal AttentionFusionModule)"),
    "deepset": BlockSpec(config={"hidden_dims": (64,)},
                         source="DeepSet pooling + MLP (Zaheer et al. 2017; TorchMultimodal DeepsetFusionModule)"),
    "deepset_transformer": BlockSpec(config={"hidden_dims": (64,)},
                                     source="DeepSet with transformer pooling "
                                            "(TorchMultimodal DeepsetFusionWithTransformer)"),
    # MultiBench.
    "multiplicative": BlockSpec(source="multiplicative interactions, matrix form (Jayakumar et al. 2020; MultiBench)"),
    # One query and one gating modality by definition.
    "nl_gate": BlockSpec(tokens=True, max_modalities=2, source="non-local gate (Wang et al. 2020; MultiBench NLgate)"),
    # Aligned sequences: the grid gives every modality the same token length.
    "stack": BlockSpec(tokens=True, source="aligned sequences concatenated per step (MultiBench ConcatEarly / Stack)"),
    "early_transformer": BlockSpec(tokens=True, config=ATTENTION_CONFIG,
                                   source="one transformer over all modalities' tokens (MultiBench)"),
    "late_transformer": BlockSpec(tokens=True, config=ATTENTION_CONFIG,
                                  source="a transformer per modality, pooled outputs + Linear (MultiBench)"),
}
DEFAULT_SPEC = BlockSpec()


def spec_for(name: str) -> BlockSpec:
    """The block's spec; a block registered after this file was written gets pooled inputs."""
    return SPECS.get(name, DEFAULT_SPEC)


def _config_cell(config: Mapping[str, Any]) -> str:
    shown = {k: v for k, v in config.items() if k != "out_dim"}
    return ", ".join(f"{k}={v}" for k, v in shown.items()) or "defaults"


def render_catalogue(doc: Mapping[str, Any]) -> List[str]:
    """The "Blocks" section of fusion.md: one row per benchmarked block, at its
    largest batch-sweep case (cost per example does not depend on the batch)."""
    grid = doc["grid"]
    lines = [
        "## Blocks",
        "",
        f"Two modalities, dims {grid['batch_dims']}, out_dim {grid['out_dim']}; token blocks T="
        f"{grid['token_length']}. Params and forward FLOPs per example from the block's cost model "
        "(`mmjax.fusion.cost`; params counted in the built block next to it), FLOPs from XLA for the "
        "compiled forward; `torch diff`: max relative difference of the PyTorch reference's output "
        "from mmjax's on the same weights and inputs.",
        "",
        "| block | method (source) | inputs | config | params (counted / model) | FLOPs model | FLOPs XLA fwd "
        "| torch diff |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in doc["blocks"]:
        spec = spec_for(name)
        rows = [r for r in doc["results"] if r["block"] == name and r["group"] == "batch"]
        ok = [r for r in rows if "error" not in r]
        inputs = f"tokens T={grid['token_length']}" if spec.tokens else "pooled"
        if not ok:
            what = f"error: {rows[0]['error'][:80]}" if rows else "not measured"
            lines.append(f"| {name} | {spec.source or '-'} | {inputs} | {_config_cell(spec.config)} "
                         f"| {what} | | | |")
            continue
        r = max(ok, key=lambda x: x["batch"])
        a = r.get("analytic", {})
        model_params = "err" if "error" in a else f"{a.get('params', 0):,}"
        diff = _get(r, "torch", "max_rel_diff_vs_jax")
        lines.append(
            f"| {name} | {spec.source or '-'} | {inputs} | {_config_cell(r.get('config', spec.config))} "
            f"| {r['params']:,} / {model_params} | {fmt_rate(a.get('flops_per_example'))} "
            f"| {fmt_rate(_get(r, 'jax', 'fwd', 'xla_flops_per_example'))} "
            f"| {'-' if diff is None else f'{diff:.1e}'} |"
        )
    return lines
