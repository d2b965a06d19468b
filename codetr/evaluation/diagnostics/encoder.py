"""Encoder discriminability: how well the encoder's feature norms separate objects from background.

The paper's Eq. 7 (Sec. 3.4): for each encoder level, the per-pixel L2 norm over channels divided by
that map's maximum, resized to the image and averaged over the levels, gives a score map D in [0, 1].
With the foreground = the union of the ground-truth boxes, a threshold S gives

    IoF(S) = share of foreground pixels with D > S,    IoB(S) = share of background pixels with D > S.

Sweeping S over [0, 1] traces a curve of IoF against IoB (a ROC curve of D as a foreground detector);
its area is 1 for a map that is high exactly on the objects and 0.5 for one that ignores them. The metric
is the exact area of the curve over every threshold (``rank_area``: the probability that a foreground
pixel scores above a background pixel, ties counting half), per image, averaged over a fixed validation
subset: a fixed grid of thresholds cannot resolve maps whose values crowd near 1 (a post-LayerNorm
encoder's norms vary by a few per cent). For the same reason the figure's curve is sampled at 101
thresholds placed at the quantiles of each image's D (level q: S = the q-quantile of D), then averaged
over the images at equal levels (``curve_area`` gives its trapezoid area). The maps are computed on each image's
unpadded area, at most ``max_side`` pixels on its long side (boxes scaled alike).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import rankdata
from torch import Tensor

from codetr.evaluation.gather import PerImageGather

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


def rank_area(score_map: Tensor, fg: Tensor) -> float:
    """The exact area under IoF(IoB) over all thresholds: P(a foreground pixel > a background pixel), ties
    counting half (the Mann-Whitney statistic); NaN without foreground or background."""
    d = score_map.flatten().cpu().double().numpy()
    f = fg.flatten().cpu().numpy()
    n_fg, n_bg = int(f.sum()), int((~f).sum())
    if n_fg == 0 or n_bg == 0:
        return float("nan")
    ranks = rankdata(d)
    return float((ranks[f].sum() - n_fg * (n_fg + 1) / 2) / (n_fg * n_bg))


def attention_maps(locations: Tensor, weights: Tensor, query_weights: Tensor,
                   shapes: Sequence[tuple[int, int]]) -> list[Tensor]:
    """The decoder's attention as maps: one image's sampling ``locations`` [Q, heads, levels, points, 2] (x, y
    in [0, 1] of each level's padded map) and ``weights`` [Q, heads, levels, points], each query's weights
    scaled by ``query_weights`` [Q] and splatted (summed) into the cell of each sampling point; per level
    [1, H_l, W_l] (``shapes``: the levels' (H_l, W_l))."""
    maps = []
    for level, (h, w) in enumerate(shapes):
        loc = locations[:, :, level].reshape(-1, 2).float()
        wt = (weights[:, :, level].float() * query_weights.float()[:, None, None]).reshape(-1)
        x = (loc[:, 0] * w).floor().long().clamp(0, w - 1)
        y = (loc[:, 1] * h).floor().long().clamp(0, h - 1)
        grid = torch.zeros(h * w, dtype=torch.float32, device=wt.device).index_add_(0, y * w + x, wt)
        maps.append(grid.view(1, h, w))
    return maps


class EncoderDiscriminability(PerImageGather[tuple[np.ndarray, np.ndarray, float]]):
    """Accumulates the IoF / IoB curves of the subset's images over an evaluation (one per rank, gathered).

    ``update(outputs, targets)`` takes the batch's :class:`codetr.models.detector.EvalOutputs`;
    ``summarize()`` (rank 0 after ``synchronize()``) gives ``{"diag/encoder_iof_iob_auc": area}`` (the mean
    exact area) and :attr:`curve` = (quantile levels, IoF, IoB) averaged over the images.
    """

    metric = "diag/encoder_iof_iob_auc"

    def __init__(self, image_ids: Sequence[int], max_side: int = 256) -> None:
        self.image_ids = {int(i) for i in image_ids}
        self.max_side = max_side
        self._start_gather()
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
            maps = self.score_maps(outputs, i)
            if maps is None:
                continue
            d = discriminability_map(maps, (h, w), padded, out_size)
            fg = foreground_mask(target["boxes"], out_size, scale)
            thresholds = np.quantile(d.flatten().double().cpu().numpy(), THRESHOLDS)   # level q -> S
            self._per_image[image_id] = (*iof_iob(d, fg, thresholds), rank_area(d, fg))

    def summarize(self) -> dict[str, float]:
        if not self._per_image:
            return {}
        iof = np.nanmean(np.stack([v[0] for v in self._per_image.values()]), axis=0)
        iob = np.nanmean(np.stack([v[1] for v in self._per_image.values()]), axis=0)
        self.curve = (THRESHOLDS, iof, iob)
        areas = [v[2] for v in self._per_image.values() if not np.isnan(v[2])]
        return {self.metric: float(np.mean(areas))} if areas else {}

    def score_maps(self, outputs, i: int) -> list[Tensor] | None:
        """Image ``i``'s per-level maps [C, H_l, W_l] whose channel norm makes D: the encoder's features."""
        return [m[i] for m in outputs.encoder_maps]


class DecoderDiscriminability(EncoderDiscriminability):
    """The same curve and area for the decoder's attention (the paper's Fig. 2 right), ``diag/decoder_iof_iob_auc``.

    The paper does not say how its attention map is made; here: the last decoder layer's cross-attention
    weights of every query, scaled by the query's best class probability, summed into the cells of their
    sampling points on each level (:func:`attention_maps`), then normalised, resized and averaged over the
    levels as the encoder's maps are.
    """

    metric = "diag/decoder_iof_iob_auc"

    def score_maps(self, outputs, i: int) -> list[Tensor] | None:
        if getattr(outputs, "decoder_sampling", None) is None:
            return None
        locations, weights = outputs.decoder_sampling
        shapes = [tuple(m.shape[-2:]) for m in outputs.encoder_maps]
        return attention_maps(locations[i], weights[i], outputs.logits[i].float().sigmoid().max(-1).values, shapes)
