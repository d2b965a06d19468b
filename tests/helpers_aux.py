"""Shared fixtures for the auxiliary-head tests: a small random pyramid and targets."""
import math

import torch

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
