"""The training and validation sets as MLflow dataset inputs of a run.

Each split becomes one MLflow ``Dataset`` logged with ``client.log_inputs`` (context tag
``mlflow.data.context`` = ``training`` / ``validation``), which fills the runs table's Dataset column
and the run page's Datasets box:

    name     synthetic-shapes-train, or the annotation file's stem (instances_train2017)
    digest   16 hex digits of sha256: of the annotation file's bytes, or for the synthetic set of the
             generator's parameters (seed, sizes, classes, ...: the same parameters make the same images)
    source   {"uri": the annotation file}, source type ``local``
    profile  images, annotations, classes (names), the image folder, the generator's parameters
    schema   what one record holds: the image, its boxes (xyxy pixels) and their class names

The COCO metrics a model gets on the validation set are logged with that set's name and digest
(:mod:`platform.mlflow_model`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.entities import Dataset, DatasetInput, InputTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec, DataType, Schema
from mlflow.types.schema import Array

CONTEXT_TAG = "mlflow.data.context"
CONTEXTS = {"train": "training", "val": "validation"}
DIGEST_LENGTH = 16


@dataclass
class DatasetInfo:
    """What a run records about one split of its data."""

    split: str                      # train | val
    name: str
    digest: str
    source: str                     # the annotation file
    img_dir: str
    num_images: int                 # images the run uses (listed and present on disk)
    num_annotations: int
    classes: list[str]
    generator: dict[str, Any] | None = None   # the synthetic generator's parameters
    example_file: str | None = None           # the first image file (an MLflow model's input example)

    def profile(self) -> dict[str, Any]:
        out = {"num_images": self.num_images, "num_annotations": self.num_annotations,
               "num_classes": len(self.classes), "classes": self.classes, "img_dir": self.img_dir}
        if self.generator is not None:
            out["generator"] = self.generator
        return out

    def to_entity(self):
        return Dataset(name=self.name, digest=self.digest, source_type="local",
                       source=json.dumps({"uri": self.source}), schema=record_schema(),
                       profile=json.dumps(self.profile()))


def record_schema() -> str:
    """The MLflow column schema of one detection record (JSON, as MLflow's own datasets write it)."""
    schema = Schema([ColSpec(DataType.binary, "image"),
                     ColSpec(Array(Array(DataType.double)), "boxes_xyxy"),
                     ColSpec(Array(DataType.string), "labels")])
    return json.dumps({"mlflow_colspec": schema.to_dict()})


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes (read in 1 MiB blocks), first DIGEST_LENGTH hex digits."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:DIGEST_LENGTH]


def generator_digest(parameters: dict[str, Any], split: str) -> str:
    text = json.dumps({"generator": "codetr.data.synthetic", "split": split, **parameters}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:DIGEST_LENGTH]


def describe(cfg, split: str, dataset) -> DatasetInfo:
    """The :class:`DatasetInfo` of ``split`` (``train`` / ``val``) of ``cfg``, from its built
    ``CocoDetection`` (``codetr.data.build_dataset``)."""
    if split not in CONTEXTS:
        raise ValueError(f"split must be one of {sorted(CONTEXTS)}, got {split!r}")
    wanted = set(dataset.image_ids)
    annotations = sum(1 for a in dataset.coco.dataset.get("annotations", []) if a["image_id"] in wanted)
    first = dataset.coco.imgs[dataset.image_ids[0]]["file_name"] if dataset.image_ids else None
    common = dict(split=split, source=str(dataset.ann_file), img_dir=str(dataset.img_dir),
                  num_images=len(dataset.image_ids), num_annotations=annotations,
                  classes=list(dataset.category_names),
                  example_file=str(Path(dataset.img_dir) / first) if first else None)
    if cfg.data.dataset == "synthetic":
        parameters = {k: v for k, v in dataclasses.asdict(cfg.data.synthetic).items() if k != "root"}
        return DatasetInfo(name=f"synthetic-shapes-{split}", digest=generator_digest(parameters, split),
                           generator=parameters, **common)
    return DatasetInfo(name=Path(dataset.ann_file).stem, digest=file_digest(dataset.ann_file), **common)


def log_datasets(tracking_uri: str, run_id: str, infos: list[DatasetInfo]) -> None:
    """Log ``infos`` as dataset inputs of the run (logging the same set again changes nothing).

    MLflow keeps one input per dataset (name and digest) and run: a file used for both splits becomes
    one input with the context ``training+validation``."""
    contexts: dict[tuple[str, str], list[str]] = {}
    first: dict[tuple[str, str], DatasetInfo] = {}
    for info in infos:
        key = (info.name, info.digest)
        first.setdefault(key, info)
        contexts.setdefault(key, []).append(CONTEXTS[info.split])
    inputs = [DatasetInput(first[key].to_entity(), tags=[InputTag(CONTEXT_TAG, "+".join(names))])
              for key, names in contexts.items()]
    if not inputs:
        return
    client = MlflowClient(tracking_uri)
    for attempt in range(3):
        try:
            client.log_inputs(run_id, datasets=inputs)
            return
        except MlflowException as e:
            # two runs of one experiment logging the same new dataset at the same moment: the sqlite store
            # looks it up, finds none, and both insert it; the second insert fails. Again, it finds the row.
            if "UNIQUE constraint failed: datasets." not in str(e) or attempt == 2:
                raise
            time.sleep(0.2 * (attempt + 1))
