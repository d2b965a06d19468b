"""Evaluation: ``CocoEvaluator`` (distributed-safe COCOeval), ``LvisEvaluator`` (LVIS v1), ``build_evaluator``
(the one of a dataset's format) and the detections -> results conversion."""
from codetr.evaluation.coco_evaluator import METRIC_NAMES, CocoEvaluator, evaluate_coco_results
from codetr.evaluation.coco_results import (detections_to_coco_results, rescale_boxes_to_original)
from codetr.evaluation.gather import all_gather_objects, merge_per_image
from codetr.evaluation.lvis_eval import evaluate_lvis
from codetr.evaluation.lvis_evaluator import LVIS_METRIC_NAMES, LvisEvaluator, build_evaluator

__all__ = ["CocoEvaluator", "LVIS_METRIC_NAMES", "LvisEvaluator", "METRIC_NAMES", "all_gather_objects",
           "build_evaluator", "detections_to_coco_results", "evaluate_coco_results", "evaluate_lvis",
           "merge_per_image", "rescale_boxes_to_original"]
