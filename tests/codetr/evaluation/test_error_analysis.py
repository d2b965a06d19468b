"""The COCO error analysis on a prediction set with one known mistake of each kind."""
import pytest
from pycocotools.coco import COCO

from codetr.evaluation.diagnostics.errors import ERROR_KINDS, analyze_errors

GTS = [  # (category, xywh)
    (1, [0, 0, 20, 20]),      # A: found, and found twice (duplicate)
    (1, [40, 0, 20, 20]),     # B: boxed right, called category 2 (cls)
    (2, [0, 40, 20, 20]),     # C: category right, box off (loc)
    (2, [40, 40, 20, 20]),    # D: category wrong and box off (both)
    (1, [80, 80, 10, 10]),    # E: nothing near it (missed)
    (2, [70, 0, 20, 20]),     # F: found
    (1, [0, 80, 20, 20]),     # G: found, below the duplicate
]
DETS = [  # (category, xywh, score, kind)
    (2, [40, 0, 20, 20], 0.99, "cls"),
    (2, [10, 40, 20, 20], 0.98, "loc"),
    (1, [50, 40, 20, 20], 0.97, "both"),
    (2, [100, 0, 10, 10], 0.96, "bkg"),
    (1, [0, 0, 20, 20], 0.90, "tp"),
    (1, [1, 0, 20, 20], 0.85, "dupl"),
    (2, [70, 0, 20, 20], 0.80, "tp"),
    (1, [0, 80, 20, 20], 0.50, "tp"),
]


def _coco():
    coco = COCO()
    coco.dataset = {"images": [{"id": 1, "width": 120, "height": 120}],
                    "categories": [{"id": 1, "name": "one"}, {"id": 2, "name": "two"}],
                    "annotations": [{"id": i + 1, "image_id": 1, "category_id": c, "bbox": b, "area": b[2] * b[3],
                                     "iscrowd": 0} for i, (c, b) in enumerate(GTS)]}
    coco.createIndex()
    return coco


def test_one_mistake_of_each_kind():
    results = [{"image_id": 1, "category_id": c, "bbox": b, "score": s} for c, b, s, _ in DETS]
    analysis = analyze_errors(_coco(), results, [1])
    assert analysis.per_image[1].kinds == [kind for *_, kind in DETS]
    assert analysis.counts == {"tp": 3, "cls": 1, "loc": 1, "both": 1, "dupl": 1, "bkg": 1, "missed": 1}
    assert analysis.per_image[1].missed == [4]
    for kind in ERROR_KINDS:
        assert analysis.dap[kind] > 0.0, kind
    assert 0.0 < analysis.ap50 < 1.0
    metrics = analysis.metrics()
    assert metrics["errors/dAP_cls"] == analysis.dap["cls"] and metrics["errors/count_missed"] == 1.0
    # confusion: rows gt (one, two, background), columns predicted (one, two, missed)
    assert analysis.confusion.tolist() == [[2, 1, 1],     # A, G found; B called two; E missed
                                           [0, 1, 2],     # F found; C (loc) and D (both) missed at IoU 0.5
                                           [2, 2, 0]]     # both + dupl as one; loc + bkg as two
    assert set(analysis.pr_curves) == {"all", "one", "two"} and len(analysis.pr_curves["all"]) == 101


def test_perfect_detections_have_no_error():
    results = [{"image_id": 1, "category_id": c, "bbox": b, "score": 0.9} for c, b in GTS]
    analysis = analyze_errors(_coco(), results, [1])
    assert analysis.ap50 == pytest.approx(1.0)
    assert analysis.counts["tp"] == len(GTS) and all(analysis.counts[k] == 0 for k in ERROR_KINDS)
    assert all(v == pytest.approx(0.0) for v in analysis.dap.values())
