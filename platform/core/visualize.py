"""Pictures for people: loss curves and images with predicted and true boxes drawn."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torchvision.io import write_png
from torchvision.utils import draw_bounding_boxes

PRED_COLOUR = (255, 64, 32)     # predictions: orange-red, with class name and score
TRUE_COLOUR = (32, 200, 64)     # ground truth: green


def pyplot():
    """matplotlib's pyplot with the file-only Agg backend (no display on servers and Ray workers); imported
    here, not at the top, because the backend must be chosen before pyplot is first imported."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def close_figure(fig) -> None:
    pyplot().close(fig)


def plot_loss_curves(history: dict[str, list[tuple[int, float]]], title: str = ""):
    """Matplotlib figure: train/loss and per-head totals against iteration; coco/AP* in a second panel."""
    plt = pyplot()
    loss_keys = [k for k in history if k == "train/loss" or (k.startswith("train/") and k.endswith("/total"))]
    coco_keys = [k for k in ("coco/AP", "coco/AP50", "coco/AP75") if history.get(k)]
    panels = 2 if coco_keys else 1
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4), squeeze=False)
    ax = axes[0][0]
    for key in sorted(loss_keys, key=lambda k: (k != "train/loss", k)):
        points = history[key]
        if points:
            ax.plot([s for s, _ in points], [v for _, v in points], label=key.removeprefix("train/"),
                    linewidth=2 if key == "train/loss" else 1)
    ax.set_xlabel("iteration")
    ax.set_ylabel("weighted loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if coco_keys:
        ax = axes[0][1]
        for key in coco_keys:
            points = history[key]
            ax.plot([s for s, _ in points], [v for _, v in points], marker="o", label=key)
        ax.set_xlabel("iteration")
        ax.set_ylabel("COCO AP")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def draw_detections(image: torch.Tensor, boxes_xyxy: torch.Tensor, labels: torch.Tensor,
                    scores: torch.Tensor | None, category_names: Sequence[str], *,
                    true_boxes_xyxy: torch.Tensor | None = None, true_labels: torch.Tensor | None = None,
                    score_threshold: float = 0.3, max_boxes: int = 30, min_side: int = 512) -> torch.Tensor:
    """Draw predicted (and optionally true) boxes on ``image`` ([3, H, W] float in [0, 1]).

    Boxes are xyxy pixels of ``image``. Predictions below ``score_threshold`` are left out
    (at most ``max_boxes``, highest scores first). Small images are upscaled so that at least
    one side is ``min_side`` pixels and the labels stay legible. Returns [3, H', W'] uint8.
    """
    scale = max(1.0, min_side / max(image.shape[1:]))
    img = image.detach().float().clamp(0, 1)
    if scale > 1:
        img = torch.nn.functional.interpolate(img[None], scale_factor=scale, mode="bilinear")[0]
    canvas = (img * 255).round().to(torch.uint8)

    def name(label: int) -> str:
        return category_names[label] if 0 <= label < len(category_names) else str(label)

    if true_boxes_xyxy is not None and len(true_boxes_xyxy):
        labels_t = true_labels.tolist() if true_labels is not None else [None] * len(true_boxes_xyxy)
        canvas = draw_bounding_boxes(canvas, true_boxes_xyxy.float() * scale, colors=TRUE_COLOUR, width=2,
                                     labels=[f"gt {name(l)}" if l is not None else "gt" for l in labels_t])
    if len(boxes_xyxy):
        order = torch.argsort(scores, descending=True) if scores is not None else torch.arange(len(boxes_xyxy))
        if scores is not None:
            order = order[scores[order] >= score_threshold]
        order = order[:max_boxes]
        if len(order):
            texts = [f"{name(int(labels[i]))} {float(scores[i]):.2f}" if scores is not None else name(int(labels[i]))
                     for i in order]
            canvas = draw_bounding_boxes(canvas, boxes_xyxy[order].float() * scale, colors=PRED_COLOUR, width=2,
                                         labels=texts)
    return canvas


def save_png(image_uint8: torch.Tensor, path: str | Path) -> Path:
    """Write a [3, H, W] uint8 tensor as PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_png(image_uint8.cpu(), str(path))
    return path
