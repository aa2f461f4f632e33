"""PNG plots of sweeps and evaluations (matplotlib with the Agg backend: no display needed).

matplotlib is an optional dependency (the ``plots`` extra); every function
raises :class:`PlotsUnavailableError` with the install line when it is missing.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np


class PlotsUnavailableError(ImportError):
    """matplotlib is not installed."""


def _plt():
    try:
        import matplotlib
    except ImportError as e:
        raise PlotsUnavailableError("plots need matplotlib: pip install matplotlib (the 'plots' extra)") from e
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str) -> str:
    """Writes ``fig`` as PNG to ``path`` (a local path or an object-store URL, through mmjax.train.files)."""
    import io

    from mmjax.train import files

    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=100, format="png")
    files.write_bytes(path, buffer.getvalue())
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def sweep_plot(rows: Sequence[Mapping[str, Any]], path: str, title: str = "", chance: Optional[float] = None) -> str:
    """Horizontal bars: test accuracy mean ± std per sweep row (unimodal baselines in grey), chance level dashed."""
    plt = _plt()
    rows = sorted(rows, key=lambda r: r["accuracy_mean"])
    fig, ax = plt.subplots(figsize=(7, 0.4 * len(rows) + 1.5))
    y = np.arange(len(rows))
    colors = ["0.6" if r.get("fusion") is None else "C0" for r in rows]
    ax.barh(y, [r["accuracy_mean"] for r in rows], xerr=[r["accuracy_std"] for r in rows], color=colors, capsize=3)
    ax.set_yticks(y, [r["name"] for r in rows])
    ax.set_xlabel("test accuracy (mean ± std over seeds)")
    ax.set_xlim(0, 1)
    ax.set_title(f"sweep: {title}" if title else "sweep")
    _chance(ax, chance, vertical=True)
    return _save(fig, path)


def confusion_plot(confusion: np.ndarray, path: str, class_names: Optional[List[str]] = None,
                   subtitle: str = "") -> str:
    """The (C, C) confusion matrix (rows: true class, columns: predicted), counts written in the cells."""
    plt = _plt()
    cm = np.asarray(confusion, np.float64)
    c = cm.shape[0]
    names = class_names or [str(i) for i in range(c)]
    fig, ax = plt.subplots(figsize=(0.45 * c + 2.5, 0.45 * c + 2))
    im = ax.imshow(cm, cmap="Blues")
    fig.colorbar(im, ax=ax)
    ax.set_xticks(range(c), names, rotation=90 if c > 10 else 0)
    ax.set_yticks(range(c), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if c <= 20:
        thresh = cm.max() / 2 if cm.size else 0
        for i in range(c):
            for j in range(c):
                ax.text(j, i, f"{cm[i, j]:.0f}", ha="center", va="center", fontsize=7,
                        color="white" if cm[i, j] > thresh else "black")
    ax.set_title("confusion matrix" + (f"\n{subtitle}" if subtitle else ""), fontsize=9)
    return _save(fig, path)


def roc_plot(curves: Mapping[str, Dict[str, Any]], path: str, subtitle: str = "") -> str:
    """One-vs-rest ROC curves: ``curves[class] = {"fpr": (K,), "tpr": (K,), "auc": float}``."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 5))
    for name, cur in curves.items():
        ax.plot(cur["fpr"], cur["tpr"], lw=1, label=f"{name} (AUC {cur['auc']:.3f})")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("ROC, one vs rest" + (f"\n{subtitle}" if subtitle else ""), fontsize=9)
    if len(curves) <= 20:
        ax.legend(fontsize=6, loc="lower right")
    return _save(fig, path)


def robustness_plot(robustness: Mapping[str, Any], path: str, subtitle: str = "",
                    chance: Optional[float] = None) -> str:
    """Left: accuracy with each modality masked out; right: accuracy vs noise level per modality;
    chance level (1 / classes) dashed on both."""
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    masked = robustness.get("masked", {})
    names = ["(none)"] + sorted(masked)
    vals = [robustness.get("clean_accuracy", float("nan"))] + [masked[m] for m in sorted(masked)]
    a1.bar(range(len(names)), vals, color=["C2"] + ["C3"] * len(masked))
    a1.set_xticks(range(len(names)), [f"without {n}" if n != "(none)" else "all present" for n in names])
    a1.set_ylim(0, 1)
    a1.set_ylabel("accuracy")
    a1.set_title("modality masked out (modality_mask False)")
    noise = robustness.get("noise", {})
    for m in sorted(noise):
        levels = sorted(noise[m], key=float)
        a2.plot([float(l) for l in levels], [noise[m][l] for l in levels], marker="o", label=m)
    a2.set_xlabel("Gaussian noise std (relative to the input's std)")
    a2.set_ylabel("accuracy")
    a2.set_ylim(0, 1)
    a2.set_title("accuracy under input noise")
    _chance(a1, chance)
    _chance(a2, chance)
    if noise or chance:
        a2.legend()
    if subtitle:
        fig.suptitle(subtitle, fontsize=9)
    return _save(fig, path)


def _chance(ax, chance: Optional[float], vertical: bool = False) -> None:
    if chance is None:
        return
    line = ax.axvline if vertical else ax.axhline
    line(chance, color="k", ls="--", lw=0.8, label=f"chance ({chance:.2f})")
