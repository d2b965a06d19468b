"""LVIS evaluation: every metric equals the ``lvis`` package's LVISEval (the reference), on hand-made
federated ground truth and on the synthetic LVIS-style set through the distributed-safe evaluator."""
from __future__ import annotations

import copy
import json

import lvis   # the reference implementation: installed with the project's test extra (pyproject.toml)
import numpy as np
import pytest
import torch

from codetr.config import load_config
from codetr.data import build_dataset
from codetr.evaluation import LvisEvaluator, build_evaluator, evaluate_lvis
from codetr.evaluation.lvis_eval import match


def reference(gt: dict, results: list[dict], image_ids: list[int], max_dets: int, tmp_path, monkeypatch) -> dict:
    """The ``lvis`` package on the same inputs. lvis 0.5.3 calls ``np.float``, gone in NumPy 2: the
    alias is restored for the duration of the call."""
    monkeypatch.setattr(np, "float", float, raising=False)
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    lvis_gt = lvis.LVIS(str(path))
    lvis_dt = lvis.LVISResults(lvis_gt, copy.deepcopy(results), max_dets=max_dets)
    evaluator = lvis.LVISEval(lvis_gt, lvis_dt, "bbox")
    evaluator.params.img_ids = list(image_ids)
    evaluator.run()
    out = evaluator.get_results()
    renamed = {"AR@300": "AR", "ARs@300": "ARs", "ARm@300": "ARm", "ARl@300": "ARl"}
    return {renamed.get(k, k): float(v) for k, v in out.items()}


def federated_gt(rng: np.random.Generator) -> dict:
    """12 images, 6 categories (2 each of r / c / f), boxes of every area range, negative and
    not-exhaustive lists, a zero-area annotation (the lvis package leaves it out)."""
    cats = [{"id": 10 + k, "name": f"cat{k}", "frequency": "rcf"[k % 3]} for k in range(6)]
    images, anns = [], []
    for img_id in range(1, 13):
        present = sorted(rng.choice([c["id"] for c in cats], size=int(rng.integers(1, 4)), replace=False).tolist())
        for cat_id in present:
            for _ in range(int(rng.integers(1, 4))):
                side = float(rng.choice([12.0, 50.0, 150.0])) * rng.uniform(0.7, 1.3)
                x, y = rng.uniform(0, 400 - side), rng.uniform(0, 300 - side)
                anns.append({"id": len(anns) + 1, "image_id": img_id, "category_id": cat_id,
                             "bbox": [x, y, side * rng.uniform(0.6, 1.4), side], "area": side * side * 0.8})
        absent = [c["id"] for c in cats if c["id"] not in present]
        images.append({"id": img_id, "width": 400, "height": 300, "coco_url": f"http://x/val/{img_id}.jpg",
                       "neg_category_ids": [c for c in absent if rng.random() < 0.6],
                       "not_exhaustive_category_ids": [c for c in present if rng.random() < 0.3]})
    anns[3]["area"] = 0.0
    return {"images": images, "annotations": anns, "categories": cats}


def noisy_detections(gt: dict, rng: np.random.Generator, per_image_extra: int = 30) -> list[dict]:
    """Jittered copies of the ground truth (some twice), plus random boxes of random categories."""
    results = []
    cat_ids = [c["id"] for c in gt["categories"]]
    for ann in gt["annotations"]:
        for _ in range(int(rng.integers(0, 3))):
            x, y, w, h = ann["bbox"]
            jitter = rng.normal(0, 0.15 * min(w, h), 4)
            results.append({"image_id": ann["image_id"], "category_id": ann["category_id"],
                            "bbox": [x + jitter[0], y + jitter[1], max(w + jitter[2], 1.0), max(h + jitter[3], 1.0)],
                            "score": float(rng.random())})
    for img in gt["images"]:
        for _ in range(per_image_extra):
            w, h = rng.uniform(5, 200, 2)
            results.append({"image_id": img["id"], "category_id": int(rng.choice(cat_ids)),
                            "bbox": [rng.uniform(0, 300), rng.uniform(0, 200), w, h], "score": float(rng.random())})
    results.append({"image_id": 1, "category_id": cat_ids[0], "bbox": [5.0, 5.0, 0.0, 10.0], "score": 0.99})
    return results


@pytest.mark.parametrize("seed,max_dets", [(0, 300), (1, 300), (2, 25)])
def test_metrics_equal_the_lvis_package(seed, max_dets, tmp_path, monkeypatch):
    rng = np.random.default_rng(seed)
    gt = federated_gt(rng)
    results = noisy_detections(gt, rng)
    image_ids = [img["id"] for img in gt["images"]][: 10 if seed == 1 else None]
    ours, per_category = evaluate_lvis(copy.deepcopy(gt), results, image_ids, max_dets)
    theirs = reference(gt, results, image_ids, max_dets, tmp_path, monkeypatch)
    assert set(ours) == set(theirs)
    for name in theirs:
        assert ours[name] == pytest.approx(theirs[name], abs=1e-12), name
    assert 0.05 < ours["AP"] < 0.95 and all(ours[f"AP{f}"] > -1 for f in "rcf")
    assert len(per_category) == 6


def test_federated_rules_change_the_numbers():
    """A detection of a category neither annotated nor listed absent costs nothing; one that misses in
    a not-exhaustive category costs nothing; one that misses in an exhaustive category is a false positive."""
    gt = {"images": [{"id": 1, "width": 100, "height": 100, "neg_category_ids": [2],
                      "not_exhaustive_category_ids": []}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40], "area": 1600.0}],
          "categories": [{"id": c, "name": str(c), "frequency": "f"} for c in (1, 2, 3)]}
    hit = {"image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40], "score": 0.5}
    miss = {"image_id": 1, "category_id": 1, "bbox": [60, 60, 30, 30], "score": 0.9}
    assert evaluate_lvis(gt, [hit], [1])[0]["AP"] == pytest.approx(1.0)
    assert evaluate_lvis(gt, [hit, {**miss, "category_id": 3}], [1])[0]["AP"] == pytest.approx(1.0)  # unverified category
    assert evaluate_lvis(gt, [hit, miss], [1])[0]["AP"] == pytest.approx(0.5, abs=0.01)               # a false positive first
    gt["images"][0]["not_exhaustive_category_ids"] = [1]
    assert evaluate_lvis(gt, [hit, miss], [1])[0]["AP"] == pytest.approx(1.0)                       # ignored


def test_matching_prefers_regular_ground_truth_and_breaks_ties_to_the_later_one():
    ious = np.array([[0.8, 0.8, 0.9]])
    matched = match(ious, np.array([False, False, True]))
    # IoU 0.50-0.80: the regular gts win over the ignored one (0.9); of the tie the later one
    # 0.85-0.90: only the ignored gt qualifies; 0.95: none
    assert matched[:, 0].tolist() == [1] * 7 + [2, 2, -1]
    matched = match(np.array([[0.52, 0.3]]), np.array([False, False]))
    assert matched[0, 0] == 0 and (matched[1:, 0] == -1).all()   # matched at IoU 0.50 only


def test_evaluator_on_the_synthetic_lvis_set_equals_the_lvis_package(tmp_path, monkeypatch):
    cfg = load_config("experiments/codetr_tiny.yaml", [
        f"data.synthetic.root={tmp_path / 'data'}", "data.synthetic.num_train=30", "data.synthetic.num_val=16",
        "data.format=lvis", "data.lvis_max_dets=40"])
    val = build_dataset(cfg, "val")
    evaluator = build_evaluator(val, cfg.data.lvis_max_dets)
    assert isinstance(evaluator, LvisEvaluator) and evaluator.max_dets == 40 and evaluator.primary_metric == "lvis/AP"
    rng = np.random.default_rng(0)
    for index in range(len(val)):
        _, target = val[index]
        boxes = target["boxes"]
        n = len(boxes)
        noise = torch.from_numpy(rng.normal(0, 1.5, (n, 4))).float()
        extra = torch.from_numpy(rng.uniform(0, 60, (8, 2))).float()
        pred_boxes = torch.cat([boxes + noise, torch.cat([extra, extra + 20], 1)])
        scores = np.concatenate([rng.uniform(0.4, 1.0, n), rng.uniform(0.0, 0.6, 8)])
        evaluator.update([{"boxes": pred_boxes, "scores": torch.from_numpy(scores).float(),
                           "labels": torch.cat([target["labels"], torch.from_numpy(rng.integers(0, 5, 8))])}],
                         [target])
    metrics = evaluator.summarize()
    assert set(metrics) == {f"lvis/{k}" for k in ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf",
                                                  "AR", "ARs", "ARm", "ARl")}
    theirs = reference(val.coco.dataset, evaluator.results(), evaluator.image_ids, 40, tmp_path, monkeypatch)
    for name, value in theirs.items():
        assert metrics[f"lvis/{name}"] == pytest.approx(value, abs=1e-12), name
    assert metrics["lvis/AP50"] > 0.5
