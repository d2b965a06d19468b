"""Shared by the overfit tests: a few images with filled shapes, and COCO AP of a model on them."""
from __future__ import annotations

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

COLORS = [(0.9, 0.1, 0.1), (0.1, 0.8, 0.1), (0.1, 0.2, 0.9)]


def shape_images(num_images: int = 3, size: int = 96, seed: int = 0):
    """Images [3, H, W] (sizes vary around ``size``, so batches are padded) with 1-3 filled
    rectangles each; the class is the colour."""
    g = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for i in range(num_images):
        height, width = size - 16 * (i % 2), size - 16 * (i % 3 == 2)
        img = torch.full((3, height, width), 0.5) + 0.05 * torch.randn(3, height, width, generator=g)
        n = int(torch.randint(1, 4, (1,), generator=g))
        boxes, labels = [], []
        for _ in range(n):
            w, h = (torch.randint(size // 5, size // 2, (2,), generator=g)).tolist()
            x = int(torch.randint(0, width - w, (1,), generator=g))
            y = int(torch.randint(0, height - h, (1,), generator=g))
            c = int(torch.randint(0, len(COLORS), (1,), generator=g))
            img[:, y:y + h, x:x + w] = torch.tensor(COLORS[c])[:, None, None]
            boxes.append([x, y, x + w, y + h])
            labels.append(c)
        images.append(img.clamp(0, 1))
        targets.append({"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels)})
    return images, targets


def coco_ap(model, images, targets, num_classes: int, one_by_one: bool = False, iou: str = "ap") -> float:
    """COCO box AP (``iou="ap50"``: AP50) (pycocotools) of ``model``'s eval-mode detections on the given
    images (all in one padded batch, or each image alone)."""
    gt = {"images": [], "annotations": [], "categories": [{"id": c + 1, "name": str(c)} for c in range(num_classes)]}
    ann_id = 1
    for i, (img, t) in enumerate(zip(images, targets)):
        gt["images"].append({"id": i + 1, "height": img.shape[1], "width": img.shape[2]})
        for box, label in zip(t["boxes"].tolist(), t["labels"].tolist()):
            x1, y1, x2, y2 = box
            gt["annotations"].append({"id": ann_id, "image_id": i + 1, "category_id": label + 1, "iscrowd": 0,
                                      "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1)})
            ann_id += 1
    coco_gt = COCO()
    coco_gt.dataset = gt
    coco_gt.createIndex()
    model.eval()
    with torch.no_grad():
        outputs = [model([img])[0] for img in images] if one_by_one else model(images)
    results = []
    for i, out in enumerate(outputs):
        for box, score, label in zip(out["boxes"].tolist(), out["scores"].tolist(), out["labels"].tolist()):
            x1, y1, x2, y2 = box
            results.append({"image_id": i + 1, "category_id": label + 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
                            "score": score})
    coco_dt = coco_gt.loadRes(results)
    ev = COCOeval(coco_gt, coco_dt, "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return float(ev.stats[1] if iou == "ap50" else ev.stats[0])


def overfit(model, images, targets, steps: int, lr: float = 1e-3) -> list[float]:
    """Train on the same batch ``steps`` times; returns the loss curve."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=1e-4)
    curve = []
    model.train()
    for _ in range(steps):
        loss = sum(model(images, targets).values())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        curve.append(float(loss.detach()))
    return curve
