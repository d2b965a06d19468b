"""Shared by the codetr tests: a small random pyramid and targets for the auxiliary heads, images with
filled shapes and COCO AP for the overfit tests, and a toy detector for the engine tests."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import nn

from codetr.models.aux.base import PYRAMID_STRIDES

C = 32
NUM_CLASSES = 5
PADDED_HW = (128, 160)
IMAGE_SIZES = [(128, 160), (96, 120)]    # second image padded at the bottom / right


def pyramid(batch: int = 2, channels: int = C, requires_grad: bool = True) -> list[torch.Tensor]:
    h, w = PADDED_HW
    feats = [torch.randn(batch, channels, math.ceil(h / s), math.ceil(w / s)) for s in PYRAMID_STRIDES]
    for f in feats:
        f.requires_grad_(requires_grad)
    return feats


def targets_with_empty_image() -> list[dict]:
    return [
        {"boxes": torch.tensor([[10.0, 12.0, 60.0, 70.0], [80.0, 20.0, 150.0, 120.0], [30.0, 80.0, 46.0, 96.0]]),
         "labels": torch.tensor([1, 3, 4])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
    ]


def check_losses_and_positives(losses, candidates, feats, targets, image_sizes, keys):
    """Finite losses with the expected keys, a working backward, well-formed candidates: every positive's
    target is one of its image's gt boxes with that box's label; an image without boxes has none."""
    assert set(losses) == set(keys)
    for k, v in losses.items():
        assert v.dim() == 0 and torch.isfinite(v), k
    sum(losses.values()).backward()
    assert all(f.grad is not None and torch.isfinite(f.grad).all() for f in feats[:4])
    b = len(targets)
    labels = candidates.labels
    n = labels.shape[1]
    assert labels.shape == (b, n) and labels.dtype == torch.long
    assert candidates.targets_xyxy.shape == (b, n, 4)
    assert candidates.boxes_xyxy.shape in ((b, n, 4), (n, 4))
    assert ((labels >= -1) & (labels <= NUM_CLASSES)).all()
    assert (labels == NUM_CLASSES).any(), "no negative candidate to pad the positive queries with"
    for i, t in enumerate(targets):
        pos = (labels[i] >= 0) & (labels[i] < NUM_CLASSES)
        if len(t["boxes"]) == 0:
            assert not pos.any()
            continue
        assert pos.any()
        tgt = candidates.targets_xyxy[i][pos]
        dist, nearest = (tgt[:, None, :] - t["boxes"][None]).abs().sum(-1).min(1)
        assert (dist < 1e-4).all()
        assert torch.equal(labels[i][pos], t["labels"][nearest])


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


class ToyDetector(nn.Module):
    """Test fixture only: a torchvision-convention detector small enough for unit tests.

    It predicts one box and class per image; losses are named like Co-DETR's (head/term)."""

    def __init__(self, num_classes: int = 3):
        super().__init__()
        self.num_classes = num_classes
        self.backbone = nn.Conv2d(3, 8, 3, stride=2)
        self.sampling_offsets = nn.Linear(8, 8)
        self.head = nn.Linear(8, num_classes + 4)

    def _features(self, images):
        feats = torch.stack([self.backbone(img).mean((1, 2)) for img in images])   # [B, 8]
        return self.head(torch.relu(self.sampling_offsets(feats)))                  # [B, C + 4]

    def forward(self, images, targets=None, return_unweighted=False):
        out = self._features(images)
        logits, boxes = out[:, : self.num_classes], out[:, self.num_classes:].sigmoid()
        if not self.training:
            size = torch.tensor([images[0].shape[2], images[0].shape[1]] * 2, dtype=torch.float32)
            return [{"boxes": b[None] * size, "scores": l.softmax(0).max()[None], "labels": l.argmax()[None]}
                    for b, l in zip(boxes, logits)]
        labels = torch.stack([t["labels"][0] for t in targets])
        true_boxes = torch.stack([t["boxes"][0] for t in targets])
        unweighted = {"query/loss_cls": F.cross_entropy(logits, labels),
                      "query/loss_bbox": F.l1_loss(boxes, true_boxes),
                      "atss/pos.loss_cls": F.cross_entropy(logits, labels) * 0.5}
        weighted = {k: 2.0 * v for k, v in unweighted.items()}
        return (weighted, unweighted) if return_unweighted else weighted
