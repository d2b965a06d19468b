"""COCO-format dataset: id mapping, crowd / empty / degenerate boxes, decoding, bad input."""
from __future__ import annotations

import copy
import json
import logging

import pytest
import torch

from codetr.config import ConfigError, load_config
from codetr.data import (AnnotationError, BadImageError, CocoDetection, MissingImagesError, build_dataset,
                         collate_fn, validate_coco_dict)
from tests.datasets import IMAGE_IDS, coco_dict, write_dataset


@pytest.fixture
def coco_files(tmp_path):
    return write_dataset(tmp_path)


def test_category_mapping_crowd_empty_and_degenerate(coco_files, caplog):
    ann_file, img_dir = coco_files
    with caplog.at_level(logging.INFO, logger="codetr.data.coco"):
        ds = CocoDetection(ann_file, img_dir)
    assert ds.num_classes == 3
    assert ds.label_to_cat_id == [3, 7, 90]
    assert ds.category_names == ["cat", "dog", "toothbrush"]
    assert len(ds) == 4 and sorted(ds.image_ids) == sorted(IMAGE_IDS)   # the empty image is kept
    assert ds.num_degenerate_boxes == 1 and "dropped 1 degenerate" in caplog.text

    items = {t["image_id"]: (img, t) for img, t in (ds[i] for i in range(len(ds)))}
    img, t = items[11]
    assert img.shape == (3, 60, 80) and img.dtype == torch.float32 and 0 <= img.min() and img.max() <= 1
    assert t["labels"].tolist() == [0, 1] and t["labels"].dtype == torch.int64
    assert t["boxes"].tolist() == [[10, 10, 30, 25], [40, 20, 70, 50]]
    assert t["orig_size"] == (60, 80) and t["size"] == (60, 80)
    _, t = items[5]                         # grayscale PNG; the crowd box is not a target
    assert t["labels"].tolist() == [2] and t["boxes"].shape == (1, 4)
    img, t = items[42]                      # RGBA PNG, no annotation
    assert img.shape == (3, 50, 50) and t["boxes"].shape == (0, 4) and t["labels"].shape == (0,)
    _, t = items[17]                        # clipped to the 96x72 image, zero-width box dropped
    assert t["boxes"].tolist() == [[70, 50, 96, 72], [10, 40, 35, 60]]
    assert t["labels"].tolist() == [1, 2]
    # COCOeval still sees the crowd box, and the same clipped boxes (the degenerate one is gone)
    assert any(a["iscrowd"] for a in ds.coco.dataset["annotations"])
    assert ds.coco.anns[104]["bbox"] == [70, 50, 26, 22] and 105 not in ds.coco.anns

    images, targets = collate_fn([ds[0], ds[1]])
    assert isinstance(images, list) and len(images) == 2 and len(targets) == 2


@pytest.mark.parametrize("mutate, expected", [
    (lambda d: d.pop("categories"), "missing top-level field 'categories'"),
    (lambda d: d["images"][1].pop("file_name"), "image id 5 has no 'file_name'"),
    (lambda d: d["images"][0].update(height="60"), "image id 11: field 'height' must be int"),
    (lambda d: d["annotations"][2].pop("bbox"), "annotation id 102 has no 'bbox'"),
    (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), "annotation id 100: field 'bbox'"),
    (lambda d: d["annotations"][1].update(category_id="7"), "annotation id 101: field 'category_id' must be int"),
    (lambda d: d["annotations"][1].update(category_id=8), "annotation id 101: category_id 8 is not in"),
    (lambda d: d["annotations"][0].update(image_id=999), "annotation id 100: image_id 999"),
    (lambda d: d["annotations"][0].update(iscrowd=True), "annotation id 100: field 'iscrowd'"),
    (lambda d: d["annotations"][3].update(id=100), "duplicate annotation id 100"),
    (lambda d: d["categories"][0].pop("name"), "category id 7 has no 'name'"),
])
def test_bad_annotation_file_names_field_and_id(tmp_path, mutate, expected):
    data = coco_dict()
    mutate(data)
    ann_file, img_dir = write_dataset(tmp_path, data)
    with pytest.raises(AnnotationError, match=expected.replace("(", r"\(").replace("[", r"\[")):
        CocoDetection(ann_file, img_dir)


def test_optional_fields_get_defaults():
    data = coco_dict()
    for ann in data["annotations"]:
        ann.pop("area"), ann.pop("iscrowd")
    validate_coco_dict(data)
    assert data["annotations"][0]["area"] == 300.0 and data["annotations"][0]["iscrowd"] == 0


def test_missing_images_reported_together(coco_files, caplog):
    ann_file, img_dir = coco_files
    (img_dir / "a.jpg").unlink()
    (img_dir / "c.png").unlink()
    with pytest.raises(MissingImagesError) as err:
        CocoDetection(ann_file, img_dir, on_bad_image="error")
    assert "2 image(s)" in str(err.value) and "a.jpg" in str(err.value) and "c.png" in str(err.value)
    with caplog.at_level(logging.WARNING, logger="codetr.data.coco"):
        ds = CocoDetection(ann_file, img_dir, on_bad_image="skip")
    assert len(ds) == 2 and ds.num_skipped_images == 2
    assert "a.jpg" in caplog.text and "c.png" in caplog.text


def test_corrupt_image_skip_or_error(coco_files, caplog):
    ann_file, img_dir = coco_files
    (img_dir / "d.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    strict = CocoDetection(ann_file, img_dir, on_bad_image="error")
    index = strict.image_ids.index(17)
    with pytest.raises(BadImageError, match="d.jpg"):
        strict[index]
    ds = CocoDetection(ann_file, img_dir, on_bad_image="skip")
    with caplog.at_level(logging.WARNING, logger="codetr.data.coco"):
        _, target = ds[index]
    assert target["image_id"] != 17 and ds.num_skipped_images == 1 and "d.jpg" in caplog.text
    ds[index]                                  # the same bad image is counted once
    assert ds.num_skipped_images == 1


def test_skip_count_is_shared_with_loader_workers(coco_files):
    ann_file, img_dir = coco_files
    (img_dir / "a.jpg").write_bytes(b"")
    ds = CocoDetection(ann_file, img_dir)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=1, collate_fn=collate_fn)
    seen = [t["image_id"] for _, targets in loader for t in targets]
    assert 11 not in seen and len(seen) == 4
    assert ds.num_skipped_images == 1


def _coco_config(ann_file, img_dir, *extra):
    return load_config(None, ["data.dataset=coco", f"data.train.ann_file={ann_file}",
                              f"data.train.img_dir={img_dir}", f"data.val.ann_file={ann_file}",
                              f"data.val.img_dir={img_dir}", *extra])


def test_build_dataset_num_classes_and_transforms(coco_files):
    ann_file, img_dir = coco_files
    cfg = _coco_config(ann_file, img_dir, "data.augment.scales=[96]", "data.augment.max_size=200",
                       "data.augment.eval_scale=120", "data.augment.eval_max_size=200")
    train, val = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    assert train.num_classes == val.num_classes == 3
    img, t = val[val.image_ids.index(11)]   # 60x80 -> shorter side 120
    assert t["size"] == (120, 160) == tuple(img.shape[-2:]) and t["orig_size"] == (60, 80)
    assert torch.allclose(t["boxes"], torch.tensor([[20.0, 20, 60, 50], [80, 40, 140, 100]]))
    with pytest.raises(ConfigError, match="model.num_classes.*3 categories"):
        build_dataset(_coco_config(ann_file, img_dir, "model.num_classes=80"), "train")
    assert build_dataset(_coco_config(ann_file, img_dir, "model.num_classes=3"), "val").num_classes == 3


def test_coco_config_requires_files():
    with pytest.raises(ConfigError, match="data.train.ann_file"):
        load_config(None, ["data.dataset=coco"])


def test_dataset_pickles_for_spawned_workers(coco_files):
    import pickle
    ds = CocoDetection(*coco_files)
    clone = pickle.loads(pickle.dumps(ds))
    assert len(clone) == len(ds) and clone.num_skipped_images == 0
    assert torch.equal(clone[0][0], ds[0][0])
    json.dumps(copy.deepcopy(ds.coco.dataset))   # still plain JSON


def test_build_loader_shards_and_batches(coco_files):
    from codetr.data import build_loader
    ds = CocoDetection(*coco_files)
    shards = []
    for rank in range(2):
        loader = build_loader(ds, batch_size=2, num_workers=0, train=False, num_replicas=2, rank=rank)
        shards.append([t["image_id"] for _, targets in loader for t in targets])
    assert sorted(shards[0] + shards[1]) == sorted(IMAGE_IDS)
    train_loader = build_loader(ds, batch_size=3, num_workers=0, train=True, seed=1)
    assert [len(images) for images, _ in train_loader] == [3]      # the incomplete batch is dropped
