"""Large-scale jitter against hand-computed boxes, the model's LSJ padding, and the official DETR pipeline values."""
from __future__ import annotations

import pytest
import torch
from torchvision import tv_tensors

from codetr import build_model, load_config
from codetr.config import ConfigError
from codetr.config.data_schema import AugmentConfig, LSJConfig
from codetr.data import RemoveSmallBoxes, build_train_transforms


def sample(height: int, width: int, boxes_xyxy: list[list[float]]):
    image = tv_tensors.Image(torch.zeros((3, height, width), dtype=torch.uint8))
    boxes = tv_tensors.BoundingBoxes(torch.tensor(boxes_xyxy, dtype=torch.float64), format="XYXY",
                                     canvas_size=(height, width))
    return image, {"boxes": boxes, "labels": torch.arange(len(boxes_xyxy))}


def lsj(ratio: float, flip: float, size: int = 1024) -> AugmentConfig:
    return AugmentConfig(policy="lsj", flip_prob=flip, lsj=LSJConfig(image_size=size, ratio_range=[ratio, ratio]))


def test_lsj_shrink_flip_and_thin_box_filter_by_hand():
    # 300 x 400 at r = 0.5: longer side int(1024 x 0.5) = 512, factor 512 / 400 = 1.28, new size
    # int(300 x 1.28 + 0.5) = 384 x 512; the 384 x 512 image fits the 1024 crop whole (no shift)
    boxes = [[40, 30, 120, 90],
             [100, 100, 100.005, 150],     # 0.0064 px wide after the resize: <= 0.01, dropped
             [200, 100, 200.01, 150]]      # 0.0128 px wide: kept
    image, target = sample(300, 400, boxes)
    out_image, out = build_train_transforms(lsj(0.5, flip=1.0))(image, target)
    assert tuple(out_image.shape) == (3, 384, 512) and out_image.dtype == torch.float32
    assert out["labels"].tolist() == [0, 2]
    # flipped in the 512-wide image: x -> 512 - x
    expected = torch.tensor([[512 - 120 * 1.28, 30 * 1.28, 512 - 40 * 1.28, 90 * 1.28],
                             [512 - 200.01 * 1.28, 100 * 1.28, 512 - 200 * 1.28, 150 * 1.28]], dtype=torch.float64)
    torch.testing.assert_close(out["boxes"].as_subclass(torch.Tensor), expected, rtol=0, atol=1e-4)
    assert out["boxes"].canvas_size == (384, 512)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lsj_enlarge_and_crop_by_hand(seed):
    # 300 x 400 at r = 2: longer side 2048, factor 5.12, 1536 x 2048, then a 1024 x 1024 window
    boxes = [[40, 30, 120, 90], [10, 250, 390, 299], [380, 5, 399, 20]]
    torch.manual_seed(seed)
    # the draws the pipeline makes, in its order: the ratio, the crop height and width (fixed at
    # 1024 here), the window's top and left
    torch.rand((), dtype=torch.float64)
    torch.randint(1024, 1025, ()), torch.randint(1024, 1025, ())
    top, left = int(torch.randint(0, 1536 - 1024 + 1, ())), int(torch.randint(0, 2048 - 1024 + 1, ()))
    torch.manual_seed(seed)
    out_image, out = build_train_transforms(lsj(2.0, flip=0.0))(*sample(300, 400, boxes))
    assert tuple(out_image.shape) == (3, 1024, 1024)
    expected, labels = [], []
    for label, (x1, y1, x2, y2) in enumerate(boxes):
        b = [min(max(v * 5.12 - off, 0.0), 1024.0) for v, off in ((x1, left), (y1, top), (x2, left), (y2, top))]
        if b[2] - b[0] > 0.01 and b[3] - b[1] > 0.01:
            expected.append(b)
            labels.append(label)
    assert out["labels"].tolist() == labels
    torch.testing.assert_close(out["boxes"].as_subclass(torch.Tensor).reshape(-1, 4),
                               torch.tensor(expected, dtype=torch.float64).reshape(-1, 4), rtol=0, atol=1e-4)


def test_lsj_sizes_cover_the_ratio_range():
    torch.manual_seed(0)
    transform = build_train_transforms(AugmentConfig(policy="lsj", lsj=LSJConfig(image_size=64)))
    longer = []
    for _ in range(200):
        out_image, _ = transform(*sample(30, 40, [[5, 5, 20, 20]]))
        h, w = out_image.shape[-2:]
        assert h <= 64 and w <= 64
        longer.append(max(h, w))
    # below 64 (r < 1) the whole image: longer side int(64 r) in [6, 63]; above it the crop is 64 wide
    assert min(longer) <= 10 and max(longer) == 64 and sum(v == 64 for v in longer) > 60


def test_remove_small_boxes_is_strict():
    image, target = sample(10, 10, [[1, 1, 1, 5], [1, 1, 2, 5], [0, 0, 0.5, 0.5]])
    _, out = RemoveSmallBoxes(0.0)(image, target)
    assert out["labels"].tolist() == [1, 2]          # zero width dropped, sub-pixel kept (mmdet x2 > x1)
    _, out = RemoveSmallBoxes(0.5)(image, target)
    assert out["labels"].tolist() == [1]


def test_model_pads_lsj_batches_like_the_official_pipeline():
    cfg = load_config("experiments/codetr_tiny.yaml", [
        "model.num_classes=3", "model.input_padding.size=96", "model.input_padding.pixel_value=114",
        "model.input_padding.mask=false", "data.augment.eval_scale=96", "data.augment.eval_max_size=96",
        "data.augment.max_size=96", "data.augment.scales=[64]"])
    model = build_model(cfg)
    images = [torch.rand(3, 64, 80), torch.rand(3, 96, 50)]
    batch, mask, sizes = model.preprocess(images)
    assert tuple(batch.shape) == (2, 3, 96, 96) and not mask.any() and sizes == [(96, 96), (96, 96)]
    # official: pad the 0-255 image with 114, then normalise with mean 123.675 / std 58.395 (red)
    official = (114 - torch.tensor([123.675, 116.28, 103.53])) / torch.tensor([58.395, 57.12, 57.375])
    torch.testing.assert_close(batch[0, :, 70, 90], official, rtol=0, atol=1e-6)
    torch.testing.assert_close(batch[1, :, 50, 60], official, rtol=0, atol=1e-6)
    torch.testing.assert_close(batch[0, :, :64, :80], (images[0] - model.pixel_mean) / model.pixel_std)
    with pytest.raises(ValueError, match="does not fit model.input_padding.size 96"):
        model.preprocess([torch.rand(3, 97, 10)])
    # the default: batch max, zeros after normalisation, padding masked, each image its own size
    plain = build_model(load_config("experiments/codetr_tiny.yaml", ["model.num_classes=3"]))
    batch, mask, sizes = plain.preprocess(images)
    assert tuple(batch.shape) == (2, 3, 96, 80) and sizes == [(64, 80), (96, 50)]
    assert batch[1, :, :, 50:].abs().sum() == 0 and mask[1, :, 50:].all() and not mask[1, :, :50].any()


def test_size_divisor_rounds_the_padded_batch_up():
    model = build_model(load_config("experiments/codetr_tiny.yaml", ["model.num_classes=3",
                                                                     "model.input_padding.size_divisor=32"]))
    batch, mask, sizes = model.preprocess([torch.rand(3, 100, 70)])
    assert tuple(batch.shape) == (1, 3, 128, 96) and sizes == [(100, 70)]
    assert mask[0, 100:].all() and mask[0, :, 70:].all() and not mask[0, :100, :70].any()


def test_a_padding_size_too_small_for_the_pipeline_is_a_config_error():
    with pytest.raises(ConfigError, match="model.input_padding.size: 512 is smaller than data.augment.lsj.image_size"):
        load_config(None, ["data.augment.policy=lsj", "model.input_padding.size=512", "data.augment.eval_scale=512",
                            "data.augment.eval_max_size=512"])
    with pytest.raises(ConfigError, match="data.augment.max_size"):
        load_config(None, ["model.input_padding.size=1024", "data.augment.eval_max_size=1024"])


def test_detr_pipeline_defaults_are_the_official_values():
    # co_deformable_detr_r50_1x_coco.py / co_dino_5scale_r50_1x_coco.py: RandomFlip 0.5; AutoAugment of
    # (a) Resize img_scale (480..800 step 32, 1333), (b) Resize (400 / 500 / 600, 4200) + RandomCrop
    # absolute_range (384, 600) + the (a) resize; test (1333, 800)
    aug = AugmentConfig()
    assert aug.policy == "detr" and aug.flip_prob == 0.5 and aug.crop_prob == 0.5
    assert aug.scales == [480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800] and aug.max_size == 1333
    assert aug.crop_resize_scales == [400, 500, 600] and aug.crop_resize_max_size == 4200
    assert aug.crop_size == [384, 600] and (aug.eval_scale, aug.eval_max_size) == (800, 1333)
    for name in ("codetr_r50_coco", "codino_r50_coco", "codetr_swin_t_coco", "codetr_swin_l_coco"):
        assert load_config(f"experiments/{name}.yaml").data.augment == aug, name
    # the official LSJ values: image 1024, ratio [0.1, 2.0], FilterAnnotations min_gt_bbox_wh 0.01
    assert LSJConfig() == LSJConfig(image_size=1024, ratio_range=[0.1, 2.0], min_box_size=0.01)
