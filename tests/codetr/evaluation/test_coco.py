"""COCO evaluation: perfect predictions score 1.0 through the whole conversion path."""
from __future__ import annotations

import json

import pytest
import torch

from codetr.config.data_schema import AugmentConfig
from codetr.data import CocoDetection, build_eval_transforms
from codetr.evaluation import METRIC_NAMES, CocoEvaluator, detections_to_coco_results, rescale_boxes_to_original
from tests.datasets import IMAGE_IDS, write_dataset

EVAL_RESIZE = AugmentConfig(eval_scale=100, eval_max_size=150)


@pytest.fixture
def val_set(tmp_path):
    ann_file, img_dir = write_dataset(tmp_path)
    return CocoDetection(ann_file, img_dir, transforms=build_eval_transforms(EVAL_RESIZE))


def perfect_predictions(dataset):
    """Ground truth of every image as detections, in the resized input image's pixels."""
    predictions, targets = [], []
    for i in range(len(dataset)):
        _, target = dataset[i]
        assert target["size"] != target["orig_size"]      # the boxes really are rescaled back
        n = len(target["labels"])
        predictions.append({"boxes": target["boxes"], "scores": torch.linspace(0.9, 0.5, n),
                            "labels": target["labels"]})
        targets.append(target)
    return predictions, targets


def test_perfect_predictions_give_ap_one(val_set):
    predictions, targets = perfect_predictions(val_set)
    evaluator = CocoEvaluator(val_set)
    evaluator.update(predictions[:2], targets[:2])
    evaluator.update(predictions[2:], targets[2:])
    metrics = evaluator.summarize()
    assert set(METRIC_NAMES) <= set(metrics) and len(METRIC_NAMES) == 12
    for name in ("coco/AP", "coco/AP50", "coco/AP75", "coco/AR100"):
        assert metrics[name] == pytest.approx(1.0), name
    for name in ("cat", "dog", "toothbrush"):
        assert metrics[f"coco/AP/{name}"] == pytest.approx(1.0)
    assert "Average Precision" in evaluator.summary_text
    assert evaluator.image_ids == sorted(IMAGE_IDS)


def test_results_use_category_ids_and_original_coordinates(val_set):
    predictions, targets = perfect_predictions(val_set)
    results = detections_to_coco_results(predictions, targets, val_set.label_to_cat_id)
    json.dumps(results)
    by_image = {}
    for r in results:
        by_image.setdefault(r["image_id"], []).append(r)
    assert {r["category_id"] for r in results} == {3, 7, 90}
    assert [r["bbox"] for r in by_image[11]] == [pytest.approx([10, 10, 20, 15], abs=1e-3),
                                                 pytest.approx([40, 20, 30, 30], abs=1e-3)]
    assert [r["category_id"] for r in by_image[11]] == [3, 7]
    assert 42 not in by_image                                   # the empty image has no detection
    # works with a dict label map too
    as_dict = detections_to_coco_results(predictions, targets, dict(enumerate(val_set.label_to_cat_id)))
    assert as_dict == results


def test_imperfect_predictions_score_lower(val_set):
    predictions, targets = perfect_predictions(val_set)
    shifted = [{**p, "boxes": p["boxes"] + 6.0} for p in predictions]
    wrong_class = [{**p, "labels": (p["labels"] + 1) % 3} for p in predictions]
    for bad in (shifted, wrong_class):
        evaluator = CocoEvaluator(val_set.coco, val_set.label_to_cat_id)
        evaluator.update(bad, targets)
        assert evaluator.summarize()["coco/AP"] < 0.8


def test_no_detections_and_no_images(val_set):
    _, targets = perfect_predictions(val_set)
    empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}
    evaluator = CocoEvaluator(val_set)
    evaluator.update([empty] * len(targets), targets)
    metrics = evaluator.summarize()
    assert metrics["coco/AP"] == 0.0 and metrics["coco/AP/dog"] == 0.0
    metrics = CocoEvaluator(val_set).summarize()
    assert metrics["coco/AP"] == -1.0 and "coco/AP/cat" in metrics


def test_only_seen_images_are_scored(val_set):
    predictions, targets = perfect_predictions(val_set)
    evaluator = CocoEvaluator(val_set)
    evaluator.update(predictions[:1], targets[:1])     # a subset, e.g. a limited validation pass
    assert evaluator.summarize()["coco/AP"] == pytest.approx(1.0)


def test_rescale_boxes_to_original():
    boxes_xyxy = torch.tensor([[10.0, 20.0, 50.0, 60.0], [-5.0, 0.0, 300.0, 90.0]])
    out = rescale_boxes_to_original(boxes_xyxy, size=(100, 200), orig_size=(50, 100))
    assert out.tolist() == [[5, 10, 25, 30], [0, 0, 100, 45]]
