"""The embedded synthetic dataset: deterministic, cached, race-safe, a valid COCO-format set."""
from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path

import numpy as np
import pytest
import torch

from codetr.config import load_config
from codetr.config.data_schema import SyntheticConfig
from codetr.data import build_dataset, ensure_synthetic_dataset
from codetr.data.synthetic import dataset_dir, draw_image
from codetr.evaluation import CocoEvaluator


def small_config(root: Path, **overrides) -> SyntheticConfig:
    settings = dict(root=str(root), num_train=12, num_val=6, image_size=96, seed=3)
    settings.update(overrides)
    return SyntheticConfig(**settings)


def folder_contents(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != "meta.json"}      # meta.json records the generation time


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = ensure_synthetic_dataset(small_config(tmp_path / "a"))
    b = ensure_synthetic_dataset(small_config(tmp_path / "b"))
    c = ensure_synthetic_dataset(small_config(tmp_path / "c", seed=4))
    folder_a, folder_b = Path(a["train"][1]).parent, Path(b["train"][1]).parent
    assert folder_a.name == folder_b.name                 # the settings hash ignores the root
    contents_a = folder_contents(folder_a)
    assert contents_a == folder_contents(folder_b) and len(contents_a) == 12 + 6 + 2
    assert json.loads(Path(a["val"][0]).read_text()) != json.loads(Path(c["val"][0]).read_text())


def test_annotations_are_valid_and_varied(tmp_path):
    cfg = small_config(tmp_path, num_train=40, empty_fraction=0.2, classes=["ring", "star", "cross"])
    paths = ensure_synthetic_dataset(cfg)
    data = json.loads(Path(paths["train"][0]).read_text())
    assert [c["id"] for c in data["categories"]] == [1, 3, 5]     # non-contiguous on purpose
    sizes = {img["id"]: (img["width"], img["height"]) for img in data["images"]}
    assert max(max(s) for s in sizes.values()) == 96 and min(min(s) for s in sizes.values()) >= 72
    for ann in data["annotations"]:
        x, y, w, h = ann["bbox"]
        width, height = sizes[ann["image_id"]]
        assert 0 <= x and 0 <= y and x + w <= width and y + h <= height and w >= 1 and h >= 1
        assert 0 < ann["area"] <= w * h and ann["iscrowd"] == 0
    per_image = np.bincount([a["image_id"] for a in data["annotations"]], minlength=41)[1:]
    assert (per_image == 0).sum() >= 2 and per_image.max() <= cfg.max_objects
    assert len({a["category_id"] for a in data["annotations"]}) == 3
    side = np.array([max(a["bbox"][2:]) for a in data["annotations"]]) / 96
    assert side.min() < 0.15 and side.max() > 0.35               # small to large objects


def test_boxes_match_drawn_pixels():
    cfg = SyntheticConfig(image_size=128, seed=7, noise_std=0.0)
    for index in range(5):
        pixels, objects = draw_image(cfg, "train", index)
        again, same = draw_image(cfg, "train", index)
        assert np.array_equal(pixels, again) and objects == same
        for obj in objects:
            x, y, w, h = (int(v) for v in obj["bbox"])
            assert obj["area"] <= w * h and 0 <= obj["label"] < len(cfg.classes)


def test_cached_after_first_use(tmp_path):
    cfg = small_config(tmp_path)
    first = ensure_synthetic_dataset(cfg)
    stamp = (dataset_dir(cfg) / "meta.json").stat().st_mtime_ns
    assert ensure_synthetic_dataset(cfg) == first
    assert (dataset_dir(cfg) / "meta.json").stat().st_mtime_ns == stamp


def _generate(root: str, queue) -> None:
    queue.put(ensure_synthetic_dataset(small_config(Path(root))))


def test_racing_processes_share_one_complete_set(tmp_path):
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_generate, args=(str(tmp_path), queue)) for _ in range(3)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert all(r == results[0] for r in results)
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".generate")] == \
        [dataset_dir(small_config(tmp_path)).name]                # no temporary folder left behind


def test_build_dataset_synthetic_end_to_end(tmp_path):
    cfg = load_config(None, [f"data.synthetic.root={tmp_path}", "data.synthetic.num_train=8",
                             "data.synthetic.num_val=5", "data.synthetic.image_size=96",
                             "data.augment.scales=[64,80]", "data.augment.max_size=100",
                             "data.augment.crop_resize_scales=[60]", "data.augment.crop_size=[40,60]",
                             "data.augment.eval_scale=72", "data.augment.eval_max_size=100"])
    train, val = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    assert train.num_classes == 5 and train.category_names[0] == "rectangle" and len(train) == 8
    image, target = train[0]
    assert image.dtype == torch.float32 and max(image.shape[-2:]) <= 100
    assert target["labels"].max() < 5 if len(target["labels"]) else True
    evaluator = CocoEvaluator(val)
    for i in range(len(val)):
        _, t = val[i]
        evaluator.update([{"boxes": t["boxes"], "scores": torch.ones(len(t["labels"])), "labels": t["labels"]}], [t])
    assert evaluator.summarize()["coco/AP"] == pytest.approx(1.0)
    with pytest.raises(Exception, match="model.num_classes"):
        build_dataset(load_config(None, [f"data.synthetic.root={tmp_path}", "data.synthetic.num_train=8",
                                         "data.synthetic.num_val=5", "data.synthetic.image_size=96",
                                         "model.num_classes=4"]), "train")
