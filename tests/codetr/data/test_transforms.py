"""Transforms keep boxes on their pixels: images whose boxes are drawn as filled rectangles."""
from __future__ import annotations

import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from codetr.config.data_schema import AugmentConfig
from codetr.data import RandomAbsoluteCrop, build_eval_transforms, build_train_transforms
from tests.datasets import foreground_box

SMALL = AugmentConfig(scales=[64, 80, 96], max_size=128, crop_resize_scales=[50, 60, 70],
                      crop_size=[40, 60], eval_scale=80, eval_max_size=128)


def sample(height: int, width: int, box_xyxy: list[int]):
    """A dark uint8 image with one white filled rectangle, and its target."""
    image = torch.full((3, height, width), 20, dtype=torch.uint8)
    x1, y1, x2, y2 = box_xyxy
    image[:, y1:y2, x1:x2] = 250
    target = {"boxes": tv_tensors.BoundingBoxes(torch.tensor([box_xyxy], dtype=torch.float32), format="XYXY",
                                                canvas_size=(height, width)),
              "labels": torch.tensor([3])}
    return tv_tensors.Image(image), target


def as_float(image):
    return image.float() / 255 if image.dtype == torch.uint8 else image


def test_flip_is_exact():
    image, target = sample(40, 60, [5, 10, 25, 30])
    out_image, out_target = v2.RandomHorizontalFlip(p=1.0)(image, target)
    assert out_target["boxes"].tolist() == [[35, 10, 55, 30]]
    assert foreground_box(as_float(out_image)) == [35, 10, 55, 30]


def test_crop_is_exact_and_drops_boxes_outside():
    torch.manual_seed(0)
    crop = v2.Compose([RandomAbsoluteCrop(20, 30), v2.SanitizeBoundingBoxes(min_size=1.0)])
    kept = dropped = 0
    for _ in range(40):
        image, target = sample(50, 70, [30, 20, 45, 35])
        out_image, out_target = crop(image, target)
        h, w = out_image.shape[-2:]
        assert 20 <= h <= 30 and 20 <= w <= 30 and out_target["boxes"].canvas_size == (h, w)
        pixels = foreground_box(as_float(out_image))
        if len(out_target["boxes"]):
            kept += 1
            assert out_target["boxes"].tolist() == [pixels] and out_target["labels"].tolist() == [3]
        else:
            dropped += 1
            assert pixels is None and out_target["labels"].shape == (0,)
    assert kept and dropped


def test_crop_keeps_short_sides_whole():
    image, target = sample(15, 100, [1, 1, 5, 5])
    out_image, _ = RandomAbsoluteCrop(20, 30)(image, target)
    assert out_image.shape[-2] == 15 and 20 <= out_image.shape[-1] <= 30


def test_eval_resize_scales_boxes_with_pixels():
    image, target = sample(40, 60, [6, 10, 30, 34])
    out_image, out_target = build_eval_transforms(SMALL)(image, target)
    assert out_image.shape == (3, 80, 120) and out_image.dtype == torch.float32
    assert out_target["boxes"].tolist() == [[12, 20, 60, 68]]
    assert foreground_box(out_image, threshold=0.5) == [12, 20, 60, 68]
    # the longer side is capped
    image, target = sample(20, 100, [0, 0, 10, 10])
    out_image, _ = build_eval_transforms(SMALL)(image, target)
    assert out_image.shape[-1] == 128 and out_image.shape[-2] == 26   # 20 * 1.28 = 25.6, rounded


@pytest.mark.parametrize("seed", range(3))
def test_train_pipeline_keeps_boxes_on_pixels(seed):
    torch.manual_seed(seed)
    transform = build_train_transforms(SMALL)
    sizes = set()
    for _ in range(25):
        image, target = sample(48, 64, [10, 8, 34, 30])
        out_image, out_target = transform(image, target)
        assert out_image.dtype == torch.float32 and 0 <= out_image.min() and out_image.max() <= 1
        h, w = out_image.shape[-2:]
        # shorter side one of the scales, unless the longer side hit its cap
        assert min(h, w) in SMALL.scales or max(h, w) == SMALL.max_size, (h, w)
        sizes.add((h, w))
        pixels = foreground_box(out_image, threshold=0.5)
        if len(out_target["boxes"]):
            box = out_target["boxes"][0].tolist()
            assert pixels is not None
            assert max(abs(a - b) for a, b in zip(box, pixels)) <= 1.5, (box, pixels)
        else:   # cropped away: at most a sub-pixel sliver, blurred by the resize
            assert pixels is None or min(pixels[2] - pixels[0], pixels[3] - pixels[1]) <= 3
    assert len(sizes) > 2     # multi-scale and crops give varied sizes


def test_train_pipeline_uses_both_policies():
    torch.manual_seed(0)
    transform = build_train_transforms(SMALL)
    aspect_ratios = set()
    for _ in range(30):
        out_image, _ = transform(*sample(48, 64, [10, 8, 34, 30]))
        aspect_ratios.add(round(out_image.shape[-1] / out_image.shape[-2], 2))
    # policy (a) keeps the 4:3 aspect, the crops of (b) change it
    assert 1.33 in aspect_ratios and len(aspect_ratios) > 1
