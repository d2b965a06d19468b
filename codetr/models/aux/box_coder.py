"""Delta (dx, dy, dw, dh) box coder with target means / stds (mmdetection's ``DeltaXYWHBBoxCoder``).

encode: ``d = ((gx - px) / pw, (gy - py) / ph, log(gw / pw), log(gh / ph))``, then
``(d - means) / stds``. With means 0 and stds ``1 / w`` this is torchvision's
``BoxCoder(weights=w)``.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

# exp() of a width / height delta is clamped so a box grows at most 1000 / 16 times.
MAX_RATIO = abs(math.log(16.0 / 1000))


class DeltaXYWHCoder:
    """Encode / decode boxes relative to reference boxes (anchors or proposals), all xyxy."""

    def __init__(self, means: Sequence[float] = (0.0, 0.0, 0.0, 0.0),
                 stds: Sequence[float] = (1.0, 1.0, 1.0, 1.0), max_ratio: float = MAX_RATIO) -> None:
        self.means = tuple(float(m) for m in means)
        self.stds = tuple(float(s) for s in stds)
        self.max_ratio = max_ratio

    def encode(self, refs_xyxy: Tensor, boxes_xyxy: Tensor) -> Tensor:
        """[..., 4] references and target boxes (broadcastable) -> [..., 4] normalised deltas."""
        pw = refs_xyxy[..., 2] - refs_xyxy[..., 0]
        ph = refs_xyxy[..., 3] - refs_xyxy[..., 1]
        px = refs_xyxy[..., 0] + 0.5 * pw
        py = refs_xyxy[..., 1] + 0.5 * ph
        gw = boxes_xyxy[..., 2] - boxes_xyxy[..., 0]
        gh = boxes_xyxy[..., 3] - boxes_xyxy[..., 1]
        gx = boxes_xyxy[..., 0] + 0.5 * gw
        gy = boxes_xyxy[..., 1] + 0.5 * gh
        deltas = torch.stack([(gx - px) / pw, (gy - py) / ph, torch.log(gw / pw), torch.log(gh / ph)], dim=-1)
        means = deltas.new_tensor(self.means)
        stds = deltas.new_tensor(self.stds)
        return (deltas - means) / stds

    def decode(self, refs_xyxy: Tensor, deltas: Tensor, max_hw: Tensor | None = None) -> Tensor:
        """[..., 4] references and deltas (broadcastable) -> [..., 4] boxes_xyxy.

        ``max_hw``: optional [..., 2] (h, w) broadcastable to the boxes' leading dims; boxes are then
        clipped to ``[0, w] x [0, h]``.
        """
        d = deltas * deltas.new_tensor(self.stds) + deltas.new_tensor(self.means)
        dx, dy = d[..., 0], d[..., 1]
        dw = d[..., 2].clamp(min=-self.max_ratio, max=self.max_ratio)
        dh = d[..., 3].clamp(min=-self.max_ratio, max=self.max_ratio)
        pw = refs_xyxy[..., 2] - refs_xyxy[..., 0]
        ph = refs_xyxy[..., 3] - refs_xyxy[..., 1]
        px = refs_xyxy[..., 0] + 0.5 * pw
        py = refs_xyxy[..., 1] + 0.5 * ph
        gx = px + pw * dx
        gy = py + ph * dy
        gw = pw * dw.exp()
        gh = ph * dh.exp()
        boxes = torch.stack([gx - 0.5 * gw, gy - 0.5 * gh, gx + 0.5 * gw, gy + 0.5 * gh], dim=-1)
        if max_hw is not None:
            max_xyxy = torch.cat([max_hw.flip(-1), max_hw.flip(-1)], dim=-1).to(boxes.dtype)
            boxes = torch.minimum(boxes.clamp(min=0), max_xyxy)
        return boxes
