"""Model detections -> COCO results entries (dataset category ids, original-image xywh pixels)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import box_convert


def rescale_boxes_to_original(boxes_xyxy: Tensor, size: tuple[int, int], orig_size: tuple[int, int]) -> Tensor:
    """[N, 4] xyxy in the transformed image (``size`` = (h, w)) -> [N, 4] xyxy in the original
    image (``orig_size`` = (h, w)), clipped to it. Exact for the evaluation transform (a resize)."""
    (h, w), (orig_h, orig_w) = size, orig_size
    scale = boxes_xyxy.new_tensor([orig_w / w, orig_h / h, orig_w / w, orig_h / h])
    boxes_xyxy = boxes_xyxy * scale
    limit = boxes_xyxy.new_tensor([orig_w, orig_h, orig_w, orig_h])
    return torch.minimum(boxes_xyxy.clamp(min=0), limit)


def detections_to_arrays(prediction: Mapping[str, Tensor], target: Mapping,
                         label_to_cat_id: Sequence[int] | Mapping[int, int]) -> dict[str, np.ndarray]:
    """One image's detections in COCO terms, as compact arrays.

    ``prediction``: ``{"boxes": [N, 4] xyxy in the transformed input image, "scores": [N],
    "labels": [N] contiguous}``; ``target``: needs ``"size"`` and ``"orig_size"`` ((h, w) each).
    Returns ``{"boxes_xywh": [N, 4] float32 original-image pixels, "scores": [N] float32,
    "category_ids": [N] int64}``.
    """
    boxes_xyxy = prediction["boxes"].detach().float().cpu().reshape(-1, 4)
    boxes_xyxy = rescale_boxes_to_original(boxes_xyxy, tuple(target["size"]), tuple(target["orig_size"]))
    labels = prediction["labels"].detach().cpu().reshape(-1).tolist()
    return {
        "boxes_xywh": box_convert(boxes_xyxy, "xyxy", "xywh").numpy().astype(np.float32),
        "scores": prediction["scores"].detach().float().cpu().reshape(-1).numpy(),
        "category_ids": np.array([label_to_cat_id[int(label)] for label in labels], dtype=np.int64),
    }


def arrays_to_coco_results(image_id: int, arrays: Mapping[str, np.ndarray]) -> list[dict]:
    """Compact arrays of one image -> COCO results ``[{"image_id", "category_id", "bbox" [x, y, w, h], "score"}]``."""
    return [{"image_id": int(image_id), "category_id": int(cat_id), "bbox": [float(v) for v in box_xywh],
             "score": float(score)}
            for box_xywh, score, cat_id in zip(arrays["boxes_xywh"], arrays["scores"], arrays["category_ids"])]


def detections_to_coco_results(predictions: Sequence[Mapping[str, Tensor]], targets: Sequence[Mapping],
                               label_to_cat_id: Sequence[int] | Mapping[int, int]) -> list[dict]:
    """Model eval outputs + their targets -> COCO results JSON entries (what ``COCO.loadRes`` reads).

    ``predictions[i]``: ``{"boxes": [N, 4] xyxy in the transformed input-image pixels, "scores": [N],
    "labels": [N] contiguous}``; ``targets[i]``: ``{"image_id", "size", "orig_size"}``. Boxes are
    rescaled to the original image and written as ``[x, y, w, h]``; labels become category ids.
    """
    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} predictions but {len(targets)} targets")
    results: list[dict] = []
    for prediction, target in zip(predictions, targets):
        results.extend(arrays_to_coco_results(int(target["image_id"]),
                                              detections_to_arrays(prediction, target, label_to_cat_id)))
    return results
