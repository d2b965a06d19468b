"""Training and evaluation transforms (torchvision.transforms.v2, boxes as ``tv_tensors.BoundingBoxes``).

A transform takes and returns ``(image, target)`` with ``image`` a ``tv_tensors.Image``
(``[3, H, W]`` uint8 or float) and ``target["boxes"]`` a ``tv_tensors.BoundingBoxes`` in
XYXY pixels, ``target["labels"]`` ``[N]`` int64. v2 moves the boxes with the pixels.

Training, ``policy: detr`` (the official Co-Deformable-DETR / Co-DINO pipeline; sizes from :class:`AugmentConfig`):

    horizontal flip (flip_prob), then one of
      (a) multi-scale resize: shorter side from ``scales``, longer side <= ``max_size``
      (b) resize shorter side to one of ``crop_resize_scales`` (longer <= ``crop_resize_max_size``),
          random absolute crop with height and width in ``crop_size`` (boxes clipped to it, those left
          with no width or height dropped), then (a)
    (b) is chosen with probability ``crop_prob``; then uint8 -> float32 in [0, 1].

Training, ``policy: lsj`` (large-scale jitter, the official Co-DINO LSJ configs without copy-paste, which
needs masks; ``lsj.image_size`` = S):

    resize keeping the aspect ratio so that the longer side is int(S x r), r uniform in ``lsj.ratio_range``;
    crop a random min(h, S) x min(w, S) window (boxes clipped to it); drop boxes no wider or taller
    than ``lsj.min_box_size``; horizontal flip (flip_prob); float32 in [0, 1]. The padding to S x S
    (pixel 114, not masked) is the model's ``model.input_padding``.

Evaluation: shorter side ``eval_scale``, longer side <= ``eval_max_size``, float32 in [0, 1].
"""
from __future__ import annotations

from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from codetr.config.data_schema import AugmentConfig


class RandomAbsoluteCrop(v2.Transform):
    """Crop a random window whose height and width are each drawn from ``[min_size, max_size]``.

    Like mmdetection's ``RandomCrop(crop_type="absolute_range")``: a side shorter than
    ``min_size`` is kept whole, the window's position is uniform, crops without any box are
    allowed. Boxes are clipped to the window (they may become empty: follow with
    :class:`RemoveSmallBoxes`).
    """

    def __init__(self, min_size: int, max_size: int):
        super().__init__()
        if not 1 <= min_size <= max_size:
            raise ValueError(f"need 1 <= min_size <= max_size, got {min_size}, {max_size}")
        self.min_size = min_size
        self.max_size = max_size

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        crop_h = int(torch.randint(min(height, self.min_size), min(height, self.max_size) + 1, ()))
        crop_w = int(torch.randint(min(width, self.min_size), min(width, self.max_size) + 1, ()))
        top = int(torch.randint(0, height - crop_h + 1, ()))
        left = int(torch.randint(0, width - crop_w + 1, ()))
        return dict(top=top, left=left, height=crop_h, width=crop_w)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(F.crop, inpt, **params)


class RandomShorterSideResize(v2.Transform):
    """Resize keeping the aspect ratio: shorter side a random choice of ``scales``, longer side <= ``max_size``.

    Like ``v2.RandomShortestSize`` but the new sizes are rounded, not truncated, so the shorter
    side is exactly the chosen scale (mmdetection's ``Resize(keep_ratio=True)`` rounds too).
    """

    def __init__(self, scales: list[int], max_size: int | None = None, antialias: bool = True):
        super().__init__()
        self.scales = list(scales)
        self.max_size = max_size
        self.antialias = antialias

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        scale = self.scales[int(torch.randint(len(self.scales), ()))]
        ratio = scale / min(height, width)
        if self.max_size is not None:
            ratio = min(ratio, self.max_size / max(height, width))
        return dict(size=[max(1, int(height * ratio + 0.5)), max(1, int(width * ratio + 0.5))])

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(F.resize, inpt, size=params["size"], antialias=self.antialias)


class ScaleJitterResize(v2.Transform):
    """Large-scale jitter's resize: the longer side becomes ``int(size x r)``, r uniform in ``ratio_range``.

    As mmdetection's ``Resize(img_scale=(size, size), ratio_range=..., keep_ratio=True)``: the scale
    factor is ``int(size x r) / max(h, w)`` and the new sides are rounded (``int(x + 0.5)``).
    """

    def __init__(self, size: int, ratio_range: tuple[float, float] | list[float], antialias: bool = True):
        super().__init__()
        lo, hi = ratio_range
        if not 0 < lo <= hi:
            raise ValueError(f"need 0 < ratio_range[0] <= ratio_range[1], got {ratio_range}")
        self.size = size
        self.ratio_range = (float(lo), float(hi))
        self.antialias = antialias

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        lo, hi = self.ratio_range
        ratio = lo + (hi - lo) * float(torch.rand((), dtype=torch.float64))
        factor = int(self.size * ratio) / max(height, width)
        return dict(size=[max(1, int(height * factor + 0.5)), max(1, int(width * factor + 0.5))])

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(F.resize, inpt, size=params["size"], antialias=self.antialias)


class RemoveSmallBoxes(torch.nn.Module):
    """Drop the boxes (and their labels) whose width or height is not above ``min_size`` pixels.

    Strictly above, as mmdetection: its crop keeps ``x2 > x1 and y2 > y1`` (``min_size`` 0) and LSJ's
    ``FilterAnnotations`` keeps ``w > 0.01 and h > 0.01``. Takes and returns ``(image, target)``;
    ``target["boxes"]`` XYXY ``BoundingBoxes`` [N, 4], ``target["labels"]`` [N].
    """

    def __init__(self, min_size: float = 0.0):
        super().__init__()
        self.min_size = float(min_size)

    def forward(self, image: Any, target: dict) -> tuple[Any, dict]:
        boxes = target["boxes"]
        keep = ((boxes[:, 2] - boxes[:, 0]) > self.min_size) & ((boxes[:, 3] - boxes[:, 1]) > self.min_size)
        out = dict(target)
        out["boxes"] = tv_tensors.wrap(boxes[keep], like=boxes)
        out["labels"] = target["labels"][keep]
        return image, out


def build_lsj_transforms(aug: AugmentConfig) -> v2.Compose:
    """The ``policy: lsj`` training pipeline of the module docstring (no padding: the model pads)."""
    size = aug.lsj.image_size
    return v2.Compose([
        ScaleJitterResize(size, aug.lsj.ratio_range),
        RandomAbsoluteCrop(size, size),          # min(h, size) x min(w, size) at a uniform position
        RemoveSmallBoxes(aug.lsj.min_box_size),
        v2.RandomHorizontalFlip(p=aug.flip_prob),
        v2.ToDtype(torch.float32, scale=True),
    ])


def build_train_transforms(aug: AugmentConfig) -> v2.Compose:
    """The training pipeline of ``aug.policy`` (module docstring)."""
    if aug.policy == "lsj":
        return build_lsj_transforms(aug)
    multi_scale = RandomShorterSideResize(aug.scales, aug.max_size)
    resize_crop_resize = v2.Compose([
        RandomShorterSideResize(aug.crop_resize_scales, aug.crop_resize_max_size),
        RandomAbsoluteCrop(aug.crop_size[0], aug.crop_size[1]),
        # boxes cut off by the crop have no width or height left: drop them with their labels
        RemoveSmallBoxes(0.0),
        RandomShorterSideResize(aug.scales, aug.max_size),
    ])
    if aug.crop_prob <= 0.0:
        policy: v2.Transform = multi_scale
    elif aug.crop_prob >= 1.0:
        policy = resize_crop_resize
    else:
        policy = v2.RandomChoice([multi_scale, resize_crop_resize], p=[1.0 - aug.crop_prob, aug.crop_prob])
    return v2.Compose([
        v2.RandomHorizontalFlip(p=aug.flip_prob),
        policy,
        v2.ToDtype(torch.float32, scale=True),
    ])


def build_eval_transforms(aug: AugmentConfig) -> v2.Compose:
    """Single-scale resize (shorter side ``eval_scale``, longer <= ``eval_max_size``), float32 in [0, 1]."""
    return v2.Compose([
        RandomShorterSideResize([aug.eval_scale], aug.eval_max_size),
        v2.ToDtype(torch.float32, scale=True),
    ])
