"""COCO evaluation: ``CocoEvaluator`` (distributed-safe COCOeval) and the detections -> results conversion."""
from codetr.evaluation.coco_evaluator import METRIC_NAMES, CocoEvaluator, evaluate_coco_results
from codetr.evaluation.coco_results import (detections_to_coco_results, rescale_boxes_to_original)
from codetr.evaluation.gather import all_gather_objects, merge_per_image

__all__ = ["CocoEvaluator", "METRIC_NAMES", "all_gather_objects", "detections_to_coco_results",
           "evaluate_coco_results", "merge_per_image", "rescale_boxes_to_original"]
