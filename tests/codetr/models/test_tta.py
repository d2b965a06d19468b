"""Test-time augmentation (``eval.tta``): views, boxes back in the image's pixels, the merge, the evaluation."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from codetr import build_model, load_config
from codetr.config.loader import ConfigError
from codetr.engine.evaluate import evaluate
from codetr.evaluation.coco_evaluator import CocoEvaluator
from codetr.models.tta import boxes_to_image, tta_detections, tta_views, view_of
from tests.codetr.models.test_detector import SMALL


class _Fixed(nn.Module):
    """A detector that finds one box at the same place of every image it sees (a fraction of its size),
    with a score that depends on the view's width, so that the merge's choice is visible."""

    def forward(self, images):
        out = []
        for img in images:
            h, w = img.shape[-2:]
            box = torch.tensor([[0.1 * w, 0.2 * h, 0.4 * w, 0.6 * h]])
            out.append({"boxes": box, "scores": torch.tensor([w / 1000.0]), "labels": torch.tensor([2])})
        return out


def _mirror(boxes: torch.Tensor, w: int) -> torch.Tensor:
    return torch.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], dim=-1)


def test_the_views_of_each_mode():
    assert tta_views("none", [0.5]) == [(1.0, False)]
    assert tta_views("flip", [0.5]) == [(1.0, False), (1.0, True)]
    assert tta_views("multiscale", [1.2, 0.8, 1.0]) == [(1.0, False), (1.0, True), (0.8, False), (0.8, True),
                                                          (1.2, False), (1.2, True)]
    with pytest.raises(ValueError, match="flop.*none, flip, multiscale"):
        tta_views("flop", [1.0])


def test_a_box_found_in_a_resized_flipped_view_comes_back_to_its_place_in_the_image():
    image = torch.rand(3, 60, 100)
    view = view_of(image, 0.5, True)
    assert view.shape == (3, 30, 50)
    box_in_view = torch.tensor([[5.0, 6.0, 20.0, 18.0]])      # x1, y1, x2, y2 in the flipped half-size view
    back = boxes_to_image(box_in_view, (30, 50), (60, 100), flip=True)
    torch.testing.assert_close(back, torch.tensor([[60.0, 12.0, 90.0, 36.0]]))
    # out of the image after scaling: clipped to it
    far = boxes_to_image(torch.tensor([[-5.0, 0.0, 60.0, 40.0]]), (30, 50), (60, 100), flip=False)
    torch.testing.assert_close(far, torch.tensor([[0.0, 0.0, 100.0, 60.0]]))


def test_every_view_of_the_same_object_merges_into_one_detection_at_its_place():
    image = torch.rand(3, 80, 120)
    for mode in ("flip", "multiscale"):
        (det,) = tta_detections(_Fixed(), [image], mode, scales=[0.5, 1.0, 1.5], nms_iou=0.5, max_per_img=10)
        # the flipped views see the box mirrored: two places in the image, each kept once
        expected = torch.tensor([[12.0, 16.0, 48.0, 48.0]])
        places = sorted(det["boxes"].tolist())
        assert len(places) == 2, (mode, places)
        torch.testing.assert_close(torch.tensor([places[0]]), expected, atol=0.6, rtol=0)   # rounding of view sizes
        torch.testing.assert_close(torch.tensor([places[1]]), _mirror(expected, 120), atol=0.6, rtol=0)
        assert det["labels"].tolist() == [2, 2]
        # the kept one of each place is its best-scoring view: the largest
        assert det["scores"].max().item() == pytest.approx((180 if mode == "multiscale" else 120) / 1000.0)


def _model(*extra):
    torch.manual_seed(0)
    return build_model(load_config("experiments/codetr_tiny.yaml", SMALL + list(extra))).eval()


def test_flip_tta_of_a_mirrored_image_is_the_mirror_of_flip_tta_of_the_image():
    """{image, its mirror} are the views of both: the merged detections are each other's mirror."""
    model = _model()
    torch.manual_seed(1)
    image = torch.rand(3, 64, 96)
    (a,) = tta_detections(model, [image], "flip", nms_iou=0.6)
    (b,) = tta_detections(model, [image.flip(-1)], "flip", nms_iou=0.6)
    assert len(a["scores"]) == len(model([image])[0]["scores"])          # as many as the plain pass gives
    order_a, order_b = a["scores"].argsort(descending=True), b["scores"].argsort(descending=True)
    torch.testing.assert_close(a["scores"][order_a], b["scores"][order_b], atol=1e-5, rtol=0)
    torch.testing.assert_close(a["boxes"][order_a][:20], _mirror(b["boxes"][order_b], 96)[:20], atol=1e-3, rtol=0)


def test_none_is_the_plain_pass():
    model = _model()
    images = [torch.rand(3, 64, 96), torch.rand(3, 48, 64)]
    for got, want in zip(tta_detections(model, images, "none"), model(images)):
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(got[key], want[key])


def test_the_evaluation_uses_the_augmented_detections_and_bad_settings_are_named(tmp_path):
    from codetr.data.build import build_dataset, collate_fn

    cfg = load_config("experiments/codetr_tiny.yaml", SMALL + [
        "model.num_classes=null", f"data.synthetic.root={tmp_path}/data", "data.synthetic.num_train=2", "data.synthetic.num_val=3",
        "data.synthetic.image_size=128", "data.augment.eval_scale=128", "data.augment.eval_max_size=128",
        "eval.tta=flip"])
    val = build_dataset(cfg, "val")
    loader = torch.utils.data.DataLoader(val, batch_size=1, collate_fn=collate_fn)   # one image: no padding
    model = build_model(cfg, num_classes=val.num_classes)
    plain, _ = evaluate(model, loader, CocoEvaluator(val), torch.device("cpu"))
    flipped, samples = evaluate(model, loader, CocoEvaluator(val), torch.device("cpu"), tta=cfg.eval, num_samples=1)
    assert set(plain) == set(flipped) and "coco/AP" in flipped
    (sample,) = samples
    want = tta_detections(model.eval(), [sample.image], "flip", nms_iou=cfg.eval.tta_nms_iou)[0]
    torch.testing.assert_close(sample.prediction["boxes"], want["boxes"])
    for bad, key in (("eval.tta_scales=[]", "eval.tta_scales"), ("eval.tta_nms_iou=0", "eval.tta_nms_iou"),
                     ("eval.tta=flop", "eval.tta")):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            load_config("experiments/codetr_tiny.yaml", [bad])


class _Counting(_Fixed):
    def __init__(self) -> None:
        super().__init__()
        self.widths: list[int] = []

    def forward(self, images):
        self.widths += [int(img.shape[-1]) for img in images]
        return super().forward(images)


def test_the_plain_views_detections_in_hand_are_used_not_run_again():
    image = torch.rand(3, 80, 120)
    counting = _Counting()
    plain = _Fixed()([image])
    given = tta_detections(counting, [image], "multiscale", scales=[0.5, 1.0], nms_iou=0.5, plain=plain)
    assert sorted(counting.widths) == [60, 60, 120]         # 0.5 as is and flipped, 1.0 flipped: not 1.0 as is
    computed = tta_detections(_Fixed(), [image], "multiscale", scales=[0.5, 1.0], nms_iou=0.5)
    for key in ("boxes", "scores", "labels"):
        assert torch.equal(given[0][key], computed[0][key])
    assert tta_detections(counting, [image], "none", plain=plain) is plain


def test_multiscale_without_the_plain_scale_keeps_every_views_top_k():
    """The default limit is the detections a view gives, with or without the factor 1 among the scales."""
    model = _model()
    torch.manual_seed(2)
    image = torch.rand(3, 64, 96)
    (det,) = tta_detections(model, [image], "multiscale", scales=[0.9, 1.1], nms_iou=0.6)
    assert len(det["scores"]) == len(model([image])[0]["scores"])
