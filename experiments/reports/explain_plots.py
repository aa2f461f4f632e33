"""PNG plots of per-example explanations: modality contributions, saliency, attention maps.

Same conventions as :mod:`experiments.reports.plots` (matplotlib Agg, written
through ``mmjax.train.files``; :class:`PlotsUnavailableError` without matplotlib).
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np

from experiments.reports.plots import _plt, _save


def contributions_plot(values: Mapping[str, float], path: str, title: str = "", empty: Optional[float] = None,
                       full: Optional[float] = None) -> str:
    """Horizontal bars: each modality's Shapley value (positive green, negative red)."""
    plt = _plt()
    names = sorted(values, key=lambda m: values[m])
    v = np.array([values[m] for m in names])
    fig, ax = plt.subplots(figsize=(6, 0.5 * len(names) + 1.6))
    ax.barh(np.arange(len(names)), v, color=["C2" if x >= 0 else "C3" for x in v])
    ax.set_yticks(np.arange(len(names)))
    ax.set_yticklabels(names)
    ax.axvline(0, color="0.3", lw=0.8)
    label = "Shapley value"
    if empty is not None and full is not None:
        label += f" (no modality {empty:.3f} -> all {full:.3f})"
    ax.set_xlabel(label)
    ax.set_title(title)
    return _save(fig, path)


def _signed_limits(a: np.ndarray) -> float:
    return float(np.max(np.abs(a))) or 1.0


def image_saliency_plot(image: np.ndarray, attributions: np.ndarray, path: str, title: str = "") -> str:
    """image (H, W, C) (any scale) and attributions (H, W, C): the image, the per-pixel
    attribution summed over channels (diverging colours) and that map over the image."""
    plt = _plt()
    img = np.asarray(image, np.float64)
    img = (img - img.min()) / max(img.max() - img.min(), 1e-12)
    show = img[..., 0] if img.shape[-1] == 1 else img
    heat = np.asarray(attributions, np.float64).sum(-1)
    lim = _signed_limits(heat)
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.6))
    axes[0].imshow(show, cmap="gray" if show.ndim == 2 else None)
    axes[0].set_title("input")
    im = axes[1].imshow(heat, cmap="RdBu_r", vmin=-lim, vmax=lim)
    axes[1].set_title("integrated gradients")
    fig.colorbar(im, ax=axes[1], fraction=0.046)
    axes[2].imshow(show, cmap="gray" if show.ndim == 2 else None)
    axes[2].imshow(np.abs(heat), cmap="magma", alpha=0.6)
    axes[2].set_title("|attribution| over input")
    for ax in axes:
        ax.axis("off")
    fig.suptitle(title)
    return _save(fig, path)


def audio_saliency_plot(wave: np.ndarray, attributions: np.ndarray, path: str, title: str = "",
                        sample_rate: int = 0, window: int = 0) -> str:
    """wave (N,) and attributions (N,): the waveform, and the attribution summed over windows
    of ``window`` samples (default N / 200) so it reads at the scale of the plot."""
    plt = _plt()
    wave = np.asarray(wave, np.float64)
    attr = np.asarray(attributions, np.float64)
    n = len(wave)
    window = window or max(1, n // 200)
    k = -(-n // window)
    summed = np.pad(attr, (0, k * window - n)).reshape(k, window).sum(1)
    scale = float(sample_rate) if sample_rate else 1.0
    t = np.arange(n) / scale
    centres = (np.arange(k) * window + window / 2) / scale
    fig, axes = plt.subplots(2, 1, figsize=(9, 4.5), sharex=True)
    axes[0].plot(t, wave, lw=0.5, color="0.3")
    axes[0].set_ylabel("waveform")
    axes[1].bar(centres, summed, width=window / scale, color=["C2" if v >= 0 else "C3" for v in summed])
    axes[1].set_ylabel(f"IG per {window} samples")
    axes[1].set_xlabel("seconds" if sample_rate else "sample")
    fig.suptitle(title)
    return _save(fig, path)


def vector_saliency_plot(attributions: np.ndarray, path: str, title: str = "") -> str:
    """attributions (D,): one bar per input feature."""
    plt = _plt()
    a = np.asarray(attributions, np.float64).reshape(-1)
    fig, ax = plt.subplots(figsize=(max(4, 0.3 * len(a) + 2), 3))
    ax.bar(np.arange(len(a)), a, color=["C2" if v >= 0 else "C3" for v in a])
    ax.axhline(0, color="0.3", lw=0.8)
    ax.set_xlabel("feature")
    ax.set_ylabel("integrated gradients")
    ax.set_title(title)
    return _save(fig, path)


def attention_plot(weights: np.ndarray, path: str, title: str = "",
                   query_labels: Optional[Sequence[str]] = None, key_labels: Optional[Sequence[str]] = None) -> str:
    """weights (heads, Tq, Tk): the mean over heads as a (Tq, Tk) heatmap."""
    plt = _plt()
    w = np.asarray(weights, np.float64).mean(0)
    fig, ax = plt.subplots(figsize=(min(12, 0.25 * w.shape[1] + 3), min(10, 0.25 * w.shape[0] + 2.5)))
    im = ax.imshow(w, cmap="viridis", vmin=0, aspect="auto")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_xlabel("key")
    ax.set_ylabel("query")
    if key_labels is not None:
        ax.set_xticks(np.arange(len(key_labels)))
        ax.set_xticklabels(key_labels, rotation=90)
    if query_labels is not None:
        ax.set_yticks(np.arange(len(query_labels)))
        ax.set_yticklabels(query_labels)
    ax.set_title(title)
    return _save(fig, path)
