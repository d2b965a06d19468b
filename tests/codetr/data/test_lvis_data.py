"""LVIS v1 files: reading (coco_url paths, federated fields), the synthetic LVIS-style set, repeat-factor sampling."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from codetr.config import load_config
from codetr.data import AnnotationError, build_dataset
from codetr.data.annotations import validate_lvis_dict
from codetr.data.build import group_sampler
from codetr.data.repeat_factor import RepeatFactorDataset, repeat_factors


def lvis_cfg(root: Path, *extra: str):
    return load_config("experiments/codetr_tiny.yaml", [
        f"data.synthetic.root={root}", "data.synthetic.num_train=60", "data.synthetic.num_val=10",
        "data.format=lvis", *extra])


def test_synthetic_lvis_set_is_federated_and_long_tailed(tmp_path):
    train = build_dataset(lvis_cfg(tmp_path), "train")
    data = train.coco.dataset
    assert train.annotation_format == "lvis" and Path(data["images"][0]["file_name"]) == Path("train/000000.jpg")
    assert all("iscrowd" not in a or a["iscrowd"] == 0 for a in data["annotations"])
    raw = json.loads(Path(train.ann_file).read_text())
    assert "file_name" not in raw["images"][0] and raw["images"][0]["coco_url"].endswith("/train/000000.jpg")
    cats = sorted(data["categories"], key=lambda c: -c["image_count"])
    assert [c["frequency"] for c in cats] == ["f", "c", "c", "c", "r"]
    assert cats[0]["image_count"] > 4 * cats[-1]["image_count"]          # drawn long-tailed
    present = {img["id"]: {a["category_id"] for a in data["annotations"] if a["image_id"] == img["id"]}
               for img in data["images"]}
    negatives = not_exhaustive = 0
    for img in data["images"]:
        assert not set(img["neg_category_ids"]) & present[img["id"]]          # negatives are absent
        assert set(img["not_exhaustive_category_ids"]) <= present[img["id"]]
        negatives += len(img["neg_category_ids"])
        not_exhaustive += len(img["not_exhaustive_category_ids"])
    assert negatives > 20 and not_exhaustive >= 1
    image, target = train[0]
    assert image.shape[0] == 3 and len(target["boxes"]) == len(target["labels"])


def test_lvis_files_are_checked_with_messages_naming_the_field(tmp_path):
    good = {"images": [{"id": 4, "width": 10, "height": 10, "coco_url": "http://images.cocodataset.org/val2017/4.jpg",
                        "neg_category_ids": [2], "not_exhaustive_category_ids": []}],
            "annotations": [{"id": 1, "image_id": 4, "category_id": 1, "bbox": [1, 1, 3, 3], "area": 9}],
            "categories": [{"id": 1, "name": "a", "frequency": "r"}, {"id": 2, "name": "b", "frequency": "f"}]}
    checked = validate_lvis_dict(json.loads(json.dumps(good)))
    assert checked["images"][0]["file_name"] == "val2017/4.jpg" and checked["annotations"][0]["iscrowd"] == 0
    bad = json.loads(json.dumps(good))
    bad["images"][0]["neg_category_ids"] = [7]
    with pytest.raises(AnnotationError, match="image id 4: neg_category_ids names unknown category ids \\[7\\]"):
        validate_lvis_dict(bad)
    bad = json.loads(json.dumps(good))
    del bad["images"][0]["not_exhaustive_category_ids"]
    with pytest.raises(AnnotationError, match="image id 4: LVIS field 'not_exhaustive_category_ids'"):
        validate_lvis_dict(bad)
    bad = json.loads(json.dumps(good))
    bad["categories"][1]["frequency"] = "x"
    with pytest.raises(AnnotationError, match="category id 2: LVIS field 'frequency'"):
        validate_lvis_dict(bad)


def test_repeat_factors_by_hand():
    # 10 images; category 1 in 8 of them (f = 0.8), 2 in 2 (0.2), 3 in 1 (0.1); one image has none
    cats = [{1}] * 6 + [{1, 2}, {1, 3}, {2}, set()]
    factors = repeat_factors(cats, threshold=0.4)
    r2, r3 = math.sqrt(0.4 / 0.2), math.sqrt(0.4 / 0.1)       # 1.414, 2.0; category 1: max(1, 0.707) = 1
    assert factors == pytest.approx([1.0] * 6 + [r2, r3, r2, 1.0])
    with pytest.raises(ValueError, match="threshold"):
        repeat_factors(cats, 0.0)


def test_repeat_factor_dataset_repeats_rare_images_ceil_times(tmp_path):
    cfg = lvis_cfg(tmp_path, "data.repeat_factor_threshold=0.3")
    train = build_dataset(cfg, "train")
    assert isinstance(train, RepeatFactorDataset)
    base = train.dataset
    counts = {i: train.indices.count(i) for i in range(len(base))}
    assert all(counts[i] == math.ceil(r) for i, r in enumerate(train.repeat_factors))
    assert len(train) == sum(counts.values()) > len(base)
    # the rarest category's images are repeated, the images of only the commonest category are not
    rarest = min(base.coco.dataset["categories"], key=lambda c: c["image_count"])["id"]
    with_rarest = [i for i, img_id in enumerate(base.image_ids)
                   if any(a["category_id"] == rarest for a in base.coco.imgToAnns.get(img_id, []))]
    assert with_rarest and all(counts[i] >= 2 for i in with_rarest)
    assert train.indexed_image_ids[:3] == [base.image_ids[i] for i in train.indices[:3]]
    assert train.num_classes == base.num_classes and train.category_names == base.category_names
    assert train[1][1]["image_id"] == train.indexed_image_ids[1]
    sampler = group_sampler(train, batch_size=2)            # one entry per repeated position
    assert len(sampler.groups) == len(train) and sorted(set(sampler)) == list(range(len(train)))
    # the validation split is never repeated
    assert not isinstance(build_dataset(cfg, "val"), RepeatFactorDataset)
