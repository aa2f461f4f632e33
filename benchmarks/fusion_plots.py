"""throughput.png and scaling.png of one ``bench fusion`` run (needs matplotlib)."""
from __future__ import annotations

import math
import os
from typing import Any, Mapping

from benchmarks.common import nested_get as _get
from benchmarks.fusion_summary import measured


def _throughput_plot(plt: Any, ticker: Any, doc: Mapping[str, Any], out_dir: str) -> None:
    """One panel per block: train examples/s vs batch, mmjax and PyTorch eager / compile."""
    results, blocks = doc["results"], doc["blocks"]
    n = len(blocks)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.9 * rows), squeeze=False)
    for ax, name in zip(axes.flat, blocks):
        rs = sorted(measured(results, "batch", name), key=lambda r: r["batch"])
        ax.set_title(name, fontsize=10)
        if not rs:
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
            continue
        b = [r["batch"] for r in rs]
        ax.plot(b, [r["jax"]["train"]["examples_per_s"] for r in rs], "o-", label="mmjax")
        for variant, style in (("eager", "s--"), ("compile", "^:")):
            pts = [(r["batch"], _get(r, "torch", variant, "train", "examples_per_s")) for r in rs]
            pts = [p for p in pts if p[1] is not None]
            if pts:
                ax.plot(*zip(*pts), style, label=f"torch {variant}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())  # short ranges crowd minor labels
        ax.yaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_xlabel("batch", fontsize=8)
        ax.set_ylabel("train examples/s", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(f"Fusion blocks, forward+backward, {doc['environment']['device_kind']} "
                 f"({doc['environment']['date'][:10]})", fontsize=11)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "throughput.png"), dpi=110)
    plt.close(fig)


def _scaling_plot(plt: Any, doc: Mapping[str, Any], out_dir: str) -> None:
    """Model FLOPs and measured train time per example vs modalities (left) and dim (right)."""
    results, blocks = doc["results"], doc["blocks"]
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    for col, (group, xkey, xlabel) in enumerate((("modalities", "num_modalities", "number of modalities"),
                                                  ("dims", "dim", "per-modality dim (2 modalities)"))):
        for name in blocks:
            rs = measured(results, group, name)
            if not rs:
                continue
            xs = [r["num_modalities"] if xkey == "num_modalities" else r["dims"][0] for r in rs]
            flops = [_get(r, "analytic", "flops_per_example") for r in rs]
            if all(f is not None for f in flops):
                axes[0, col].plot(xs, flops, "o-", label=name)
            axes[1, col].plot(xs, [1e6 / r["jax"]["train"]["examples_per_s"] for r in rs], "o-", label=name)
        axes[0, col].set_ylabel("model FLOPs / example (forward)")
        axes[1, col].set_ylabel("measured train µs / example")
        for row in range(2):
            ax = axes[row, col]
            if ax.has_data():
                ax.set_yscale("log")
                if xkey == "dim":
                    ax.set_xscale("log", base=2)
            ax.set_xlabel(xlabel)
            ax.grid(True, which="both", alpha=0.3)
        if axes[0, col].get_legend_handles_labels()[0]:
            axes[0, col].legend(fontsize=7, ncol=2)
    fig.suptitle("How fusion cost grows (tensor: product of dims; low_rank: linear)", fontsize=11)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "scaling.png"), dpi=110)
    plt.close(fig)


def plot(doc: Mapping[str, Any], out_dir: str) -> None:
    """throughput.png (train examples/s vs batch per block) and scaling.png."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _throughput_plot(plt, matplotlib.ticker, doc, out_dir)
    _scaling_plot(plt, doc, out_dir)
