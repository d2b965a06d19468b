"""Evaluation: ``CocoEvaluator`` (distributed-safe COCOeval), ``LvisEvaluator`` (LVIS v1), ``build_evaluator``
(the one of a dataset's format), the detections -> results conversion, and the tie-robust agreement of two
detection sets (``detection_agreement``: paired by label, score and box, not rank by rank)."""
from codetr.evaluation.agreement import (Agreement, SelectionAgreement, batch_agreement, detection_agreement,
                                         max_abs_diff, selection_agreement)
from codetr.evaluation.coco_evaluator import METRIC_NAMES, CocoEvaluator, evaluate_coco_results
from codetr.evaluation.coco_results import (detections_to_coco_results, rescale_boxes_to_original)
from codetr.evaluation.gather import all_gather_objects, merge_per_image
from codetr.evaluation.lvis_eval import evaluate_lvis
from codetr.evaluation.lvis_evaluator import LVIS_METRIC_NAMES, LvisEvaluator, build_evaluator

__all__ = ["Agreement", "CocoEvaluator", "LVIS_METRIC_NAMES", "LvisEvaluator", "METRIC_NAMES", "all_gather_objects",
           "batch_agreement", "build_evaluator", "detection_agreement", "detections_to_coco_results",
           "evaluate_coco_results", "evaluate_lvis", "max_abs_diff", "merge_per_image", "rescale_boxes_to_original",
           "SelectionAgreement", "selection_agreement"]
