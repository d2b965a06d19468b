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


def check_losses_and_positives(losses, positives, feats, targets, image_sizes, max_pos, keys):
    """Finite losses with the expected keys, a working backward, well-formed positives."""
    assert set(losses) == set(keys)
    for k, v in losses.items():
        assert v.dim() == 0 and torch.isfinite(v), k
    sum(losses.values()).backward()
    assert all(f.grad is not None and torch.isfinite(f.grad).all() for f in feats[:4])
    b = len(targets)
    p = positives.mask.shape[1]
    assert positives.boxes_cxcywh_norm.shape == (b, p, 4)
    assert positives.targets_cxcywh_norm.shape == (b, p, 4)
    assert positives.labels.shape == (b, p) and positives.labels.dtype == torch.long
    assert p <= max_pos
    assert not positives.boxes_cxcywh_norm.requires_grad
    for i, t in enumerate(targets):
        m = positives.mask[i]
        if len(t["boxes"]) == 0:
            assert not m.any()
            continue
        assert m.any()
        tgt = positives.targets_cxcywh_norm[i][m]
        assert (tgt > 0).all() and (tgt <= 1).all()
        assert set(positives.labels[i][m].tolist()) <= set(t["labels"].tolist())
        box = positives.boxes_cxcywh_norm[i][m]
        assert (box >= 0).all() and (box <= 1).all()
        # every positive's target is one of the image's gt boxes
        h, w = image_sizes[i]
        gt = t["boxes"] / torch.tensor([w, h, w, h])
        gt_cxcywh = torch.cat([(gt[:, :2] + gt[:, 2:]) / 2, gt[:, 2:] - gt[:, :2]], dim=1)
        dist, nearest = (tgt[:, None, :] - gt_cxcywh[None]).abs().sum(-1).min(1)
        assert (dist < 1e-5).all()
        assert torch.equal(positives.labels[i][m], t["labels"][nearest])
