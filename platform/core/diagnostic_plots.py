"""Pictures of the evaluation diagnostics: the encoder's IoF-IoB curve (and, see
:mod:`platform.analysis.error_report`, the error analysis figures)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from platform.core.visualize import pyplot


def plot_iof_iob(curve: tuple[Sequence[float], Sequence[float], Sequence[float]], area: float | None = None,
                 title: str = ""):
    """Matplotlib figure: IoF against IoB as the threshold S sweeps [0, 1] (left), and both against S (right)."""
    thresholds, iof, iob = (np.asarray(x, dtype=float) for x in curve)
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 4))
    left.plot(iob, iof, marker=".", markersize=3, label="encoder" + (f" (area {area:.3f})" if area is not None else ""))
    left.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="no discrimination")
    left.set_xlabel("IoB(S): background pixels with D > S")
    left.set_ylabel("IoF(S): foreground pixels with D > S")
    left.set_xlim(0, 1)
    left.set_ylim(0, 1)
    left.grid(alpha=0.3)
    left.legend(fontsize=8)
    right.plot(thresholds, iof, label="IoF")
    right.plot(thresholds, iob, label="IoB")
    right.set_xlabel("threshold S")
    right.grid(alpha=0.3)
    right.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_error_breakdown(dap: dict[str, float], counts: dict[str, int], ap50: float, title: str = ""):
    """Bars: the AP50 each error kind costs (oracle dAP, left) and how many detections / gt boxes it has (right)."""
    plt = pyplot()
    kinds = list(dap)
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
    left.bar(kinds, [100 * dap[k] for k in kinds], color="tab:red")
    left.set_ylabel("dAP50 (points) when fixed alone")
    left.set_title(f"AP50 {100 * ap50:.1f}", fontsize=9)
    left.grid(axis="y", alpha=0.3)
    right.bar(["tp"] + kinds, [counts.get(k, 0) for k in ["tp"] + kinds], color="tab:blue")
    right.set_ylabel("detections (missed: gt boxes)")
    right.grid(axis="y", alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_pr_curves(recall: Sequence[float], curves: dict[str, Sequence[float]], title: str = "", max_classes: int = 12):
    """Precision against recall at IoU 0.5: all classes (thick) and up to ``max_classes`` single classes."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for name, precision in list(curves.items())[: max_classes + 1]:
        precision = np.asarray(precision, dtype=float)
        ax.plot(recall, np.where(precision < 0, np.nan, precision), label=name,
                linewidth=2.5 if name == "all" else 1, color="black" if name == "all" else None)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision (IoU 0.5)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_confusion(confusion: np.ndarray, class_names: Sequence[str], title: str = ""):
    """Heat map: rows the true class (last: background = unmatched detections), columns the predicted class
    (last: missed = unmatched gt boxes)."""
    plt = pyplot()
    n = len(class_names) + 1
    fig, ax = plt.subplots(figsize=(1.2 + 0.55 * n, 1.0 + 0.5 * n))
    ax.imshow(confusion, cmap="Blues")
    ax.set_xticks(range(n), list(class_names) + ["missed"], rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), list(class_names) + ["background"], fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (i, j), value in np.ndenumerate(confusion):
        if value:
            ax.text(j, i, str(int(value)), ha="center", va="center", fontsize=7,
                    color="white" if value > confusion.max() / 2 else "black")
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_ap_breakdown(metrics: dict[str, float], prefix: str = "coco", title: str = ""):
    """Bars: AP by object size (small / medium / large) and AP per class, from the evaluator's metrics."""
    plt = pyplot()
    sizes = [(name, metrics.get(f"{prefix}/AP{s}", -1.0)) for name, s in (("small", "s"), ("medium", "m"), ("large", "l"))]
    classes = sorted((k.split("/", 2)[2], v) for k, v in metrics.items() if k.startswith(f"{prefix}/AP/"))
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8), gridspec_kw={"width_ratios": [1, 3]})
    left.bar([n for n, _ in sizes], [max(v, 0) for _, v in sizes], color="tab:green")
    left.set_ylabel("AP")
    left.set_title("by size (-1: none)", fontsize=9)
    right.bar([n for n, _ in classes], [max(v, 0) for _, v in classes], color="tab:purple")
    right.set_title("by class", fontsize=9)
    right.tick_params(axis="x", labelrotation=45, labelsize=7)
    for ax in (left, right):
        ax.set_ylim(0, 1)
        ax.grid(axis="y", alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def error_analysis_figures(analysis, metrics: dict[str, float], title: str = "") -> dict[str, object]:
    """The figures of a :class:`codetr.evaluation.diagnostics.errors.ErrorAnalysis`, by file name."""
    return {"error_breakdown.png": plot_error_breakdown(analysis.dap, analysis.counts, analysis.ap50, title),
            "pr_curves.png": plot_pr_curves(analysis.recall, analysis.pr_curves, title),
            "confusion_matrix.png": plot_confusion(analysis.confusion, analysis.class_names, title),
            "ap_by_size_and_class.png": plot_ap_breakdown(metrics, title=title)}
