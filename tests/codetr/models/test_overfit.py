"""The tiny model memorises a few images: the loss falls and COCO AP (pycocotools) on them reaches 0.9."""
import contextlib
import io

import torch

from codetr import build_model, load_config
from tests.codetr.helpers import coco_ap, overfit, shape_images

FAST = ["model.num_classes=3", "model.num_queries=20", "model.embed_dims=64", "model.ffn_dims=128",
        "model.num_encoder_layers=1", "model.num_decoder_layers=2"]


def test_overfit_k0_finds_the_boxes():
    torch.manual_seed(0)
    model = build_model(load_config("experiments/codetr_tiny.yaml", FAST + ["model.aux_heads=[]"]))
    images, targets = shape_images(3, 96)
    curve = overfit(model, images, targets, steps=150)
    assert curve[-1] < 0.1 * curve[0]
    with contextlib.redirect_stdout(io.StringIO()):
        ap = coco_ap(model, images, targets, num_classes=3)
        assert ap >= 0.9, f"AP {ap:.3f} after overfitting (losses {curve[0]:.2f} -> {curve[-1]:.2f})"
        # the same model finds the same boxes when every image is run alone (no padding)
        ap_alone = coco_ap(model, images, targets, num_classes=3, one_by_one=True)
    assert ap_alone >= 0.9, f"AP {ap_alone:.3f} with images alone, {ap:.3f} in a padded batch"


def test_overfit_k2_finds_the_boxes():
    torch.manual_seed(0)
    model = build_model(load_config("experiments/codetr_tiny.yaml", FAST + [
        "model.aux_heads=[atss, faster_rcnn]", "model.aux.faster_rcnn.fc_dims=128",
        "model.aux.faster_rcnn.roi_batch_size=64", "model.max_pos_queries=50"]))
    images, targets = shape_images(3, 96)
    curve = overfit(model, images, targets, steps=150)
    assert curve[-1] < 0.1 * curve[0]
    with contextlib.redirect_stdout(io.StringIO()):
        ap = coco_ap(model, images, targets, num_classes=3)
    assert ap >= 0.9, f"AP {ap:.3f} after overfitting with K=2 (losses {curve[0]:.2f} -> {curve[-1]:.2f})"
    # the deployed model (auxiliary heads dropped) is the one that found them
    with contextlib.redirect_stdout(io.StringIO()):
        assert coco_ap(model.for_inference(), images, targets, num_classes=3) == ap
