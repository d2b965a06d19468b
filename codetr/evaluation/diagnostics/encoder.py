"""Encoder discriminability: how well the encoder's feature norms separate objects from background.

The paper's Eq. 7 (Sec. 3.4): for each encoder level, the per-pixel L2 norm over channels divided by
that map's maximum, resized to the image and averaged over the levels, gives a score map D in [0, 1].
With the foreground = the union of the ground-truth boxes, a threshold S gives

    IoF(S) = share of foreground pixels with D > S,    IoB(S) = share of background pixels with D > S.

Sweeping S over [0, 1] traces a curve of IoF against IoB (a ROC curve of D as a foreground detector);
its area (``curve_area``) is 1 for a map that is high exactly on the objects and 0.5 for one that
ignores them. Curves are averaged over the images of a fixed validation subset. The maps are computed
on each image's unpadded area, at most ``max_side`` pixels on its long side (boxes scaled alike).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from codetr.evaluation.gather import all_gather_objects, merge_per_image

THRESHOLDS = np.linspace(0.0, 1.0, 101)


def discriminability_map(level_maps: Sequence[Tensor], size: tuple[int, int], padded: tuple[int, int],
                         out_size: tuple[int, int]) -> Tensor:
    """One image's score map D [h', w'] in [0, 1].

    level_maps: per level [C, H_l, W_l] encoder features of the padded batch (``padded`` = (H, W) pixels);
    size: the image's (h, w) in it (top-left); out_size: the map's (h', w').
    """
    h, w = size
    pad_h, pad_w = padded
    maps = []
    for feat in level_maps:
        fh = max(1, round(feat.shape[-2] * h / pad_h))
        fw = max(1, round(feat.shape[-1] * w / pad_w))
        norm = feat[:, :fh, :fw].float().norm(dim=0)                              # [fh, fw]
        norm = norm / norm.max().clamp(min=1e-12)
        maps.append(F.interpolate(norm[None, None], size=out_size, mode="bilinear", align_corners=False)[0, 0])
    return torch.stack(maps).mean(0).clamp(0, 1)


def foreground_mask(boxes_xyxy: Tensor, out_size: tuple[int, int], scale: float = 1.0) -> Tensor:
    """[h', w'] bool: pixels inside any box (xyxy pixels x ``scale``); a pixel is inside when its centre is."""
    h, w = out_size
    mask = torch.zeros(h, w, dtype=torch.bool)
    ys = torch.arange(h, dtype=torch.float32) + 0.5
    xs = torch.arange(w, dtype=torch.float32) + 0.5
    for x1, y1, x2, y2 in (boxes_xyxy.float().reshape(-1, 4) * scale).tolist():
        mask |= ((ys >= y1) & (ys < y2))[:, None] & ((xs >= x1) & (xs < x2))[None, :]
    return mask


def iof_iob(score_map: Tensor, fg: Tensor, thresholds: np.ndarray = THRESHOLDS) -> tuple[np.ndarray, np.ndarray]:
    """IoF(S) and IoB(S) for each threshold S (NaN where the image has no foreground / no background)."""
    d = score_map.flatten().cpu().numpy().astype(np.float64)
    f = fg.flatten().cpu().numpy()
    t = np.asarray(thresholds, dtype=np.float64)[:, None]
    iof = (d[f][None] > t).mean(1) if f.any() else np.full(len(thresholds), np.nan)
    iob = (d[~f][None] > t).mean(1) if (~f).any() else np.full(len(thresholds), np.nan)
    return iof, iob


def curve_area(iof: np.ndarray, iob: np.ndarray) -> float:
    """Area under IoF as a function of IoB, the curve closed at (0, 0) and (1, 1) (a ROC area)."""
    x = np.concatenate([[1.0], iob, [0.0]])
    y = np.concatenate([[1.0], iof, [0.0]])
    keep = ~(np.isnan(x) | np.isnan(y))
    x, y = x[keep], y[keep]
    order = np.lexsort((y, x))      # by IoB, ties by IoF: the curve rises at a fixed IoB before it moves right
    x, y = x[order], y[order]
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2))


class EncoderDiscriminability:
    """Accumulates the IoF / IoB curves of the subset's images over an evaluation (one per rank, gathered).

    ``update(outputs, targets)`` takes the batch's :class:`codetr.models.detector.EvalOutputs`;
    ``summarize()`` (rank 0 after ``synchronize()``) gives ``{"diag/encoder_iof_iob_auc": area}`` and
    :attr:`curve` = (thresholds, IoF, IoB) averaged over the images.
    """

    def __init__(self, image_ids: Sequence[int], max_side: int = 256) -> None:
        self.image_ids = {int(i) for i in image_ids}
        self.max_side = max_side
        self._per_image: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._synchronized = False
        self.curve: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def update(self, outputs, targets: Sequence[dict]) -> None:
        padded = outputs.padded_size
        for i, target in enumerate(targets):
            image_id = int(target["image_id"])
            if image_id not in self.image_ids or not len(target["boxes"]):
                continue
            h, w = outputs.sizes[i]
            scale = min(1.0, self.max_side / max(h, w))
            out_size = (max(1, round(h * scale)), max(1, round(w * scale)))
            d = discriminability_map([m[i] for m in outputs.encoder_maps], (h, w), padded, out_size)
            self._per_image[image_id] = iof_iob(d, foreground_mask(target["boxes"], out_size, scale))

    def synchronize(self) -> None:
        """Gather every rank's images (a collective the first time; idempotent, as the evaluators')."""
        if self._synchronized:
            return
        self._per_image = merge_per_image(all_gather_objects(self._per_image))
        self._synchronized = True

    def summarize(self) -> dict[str, float]:
        if not self._per_image:
            return {}
        iof = np.nanmean(np.stack([v[0] for v in self._per_image.values()]), axis=0)
        iob = np.nanmean(np.stack([v[1] for v in self._per_image.values()]), axis=0)
        self.curve = (THRESHOLDS, iof, iob)
        return {"diag/encoder_iof_iob_auc": curve_area(iof, iob)}
