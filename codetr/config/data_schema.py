"""Config of the datasets, augmentation and loaders."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from codetr.config.loader import check_range

# The menu of shapes the synthetic generator can draw (``data.synthetic.classes`` picks from it).
SYNTHETIC_SHAPES = ("rectangle", "ellipse", "triangle", "cross", "ring", "star")


@dataclass
class SplitConfig:
    ann_file: str = ""                 # COCO-format annotation JSON
    img_dir: str = ""                  # folder the annotation file's file_name entries are relative to


@dataclass
class SyntheticConfig:
    root: str = "data/synthetic"       # cache folder, generated on first use (a sub-folder per settings hash)
    num_train: int = 1000              # training images
    num_val: int = 200                 # validation images
    image_size: int = 256              # longer image side in pixels (the shorter one is 75-100% of it)
    seed: int = 0                      # same seed + settings = byte-identical dataset
    classes: list[str] = field(default_factory=lambda: ["rectangle", "ellipse", "triangle", "cross", "ring"])
    max_objects: int = 6               # objects per image: 1..max_objects (uniform)
    empty_fraction: float = 0.04       # fraction of images with no object at all
    min_object_frac: float = 0.12      # usual object size (longer box side) as a fraction of the image, lower end
    max_object_frac: float = 0.5       # ... upper end (sizes are log-uniform in between)
    small_fraction: float = 0.1        # fraction of objects drawn smaller, 5% up to min_object_frac
    max_occlusion: float = 0.4         # an earlier object may lose at most this fraction of its pixels
    noise_std: float = 8.0             # Gaussian pixel noise (0-255 scale) over the whole image

    def validate(self, prefix: str) -> None:
        p = prefix
        check_range(self.num_train >= 1, f"{p}.num_train", "must be >= 1")
        check_range(self.num_val >= 1, f"{p}.num_val", "must be >= 1")
        check_range(self.image_size >= 32, f"{p}.image_size", "must be >= 32")
        check_range(len(self.classes) >= 1, f"{p}.classes", "needs at least one shape")
        check_range(len(set(self.classes)) == len(self.classes), f"{p}.classes", "shapes must be distinct")
        for i, name in enumerate(self.classes):
            check_range(name in SYNTHETIC_SHAPES, f"{p}.classes[{i}]",
                        f"unknown shape {name!r}; choose from {list(SYNTHETIC_SHAPES)}")
        check_range(self.max_objects >= 1, f"{p}.max_objects", "must be >= 1")
        check_range(0.0 <= self.empty_fraction < 1.0, f"{p}.empty_fraction", "must be in [0, 1)")
        check_range(0.05 <= self.min_object_frac <= self.max_object_frac <= 0.9, f"{p}.min_object_frac",
                    "need 0.05 <= min_object_frac <= max_object_frac <= 0.9")
        check_range(0.0 <= self.small_fraction <= 1.0, f"{p}.small_fraction", "must be in [0, 1]")
        check_range(0.0 <= self.max_occlusion < 1.0, f"{p}.max_occlusion", "must be in [0, 1)")
        check_range(self.noise_std >= 0, f"{p}.noise_std", "must be >= 0")


@dataclass
class LSJConfig:
    image_size: int = 1024             # large-scale jitter: target square side (official R50 1024, Swin-L 1280 / 1536)
    ratio_range: list[float] = field(default_factory=lambda: [0.1, 2.0])  # longer side -> int(image_size x r), r uniform in [lo, hi)
    min_box_size: float = 0.01         # boxes no wider or taller than this (pixels) after the crop are dropped (official FilterAnnotations)

    def validate(self, prefix: str) -> None:
        p = prefix
        check_range(self.image_size >= 1, f"{p}.image_size", "must be >= 1")
        check_range(len(self.ratio_range) == 2 and 0 < self.ratio_range[0] <= self.ratio_range[1],
                    f"{p}.ratio_range", f"must be [lo, hi] with 0 < lo <= hi, got {self.ratio_range}")
        check_range(self.min_box_size >= 0, f"{p}.min_box_size", "must be >= 0")


@dataclass
class AugmentConfig:
    # training policy: detr = the flip + multi-scale / resize-crop-resize pipeline below (Co-Deformable-DETR,
    # Co-DINO without LSJ); lsj = large-scale jitter (data.augment.lsj; pair it with model.input_padding)
    policy: Literal["detr", "lsj"] = "detr"
    flip_prob: float = 0.5             # horizontal flip probability (training, both policies)
    # (a) multi-scale resize: shorter side chosen from these, longer side <= max_size
    scales: list[int] = field(default_factory=lambda: list(range(480, 801, 32)))
    max_size: int = 1333               # longer-side cap of the multi-scale resize
    # (b) resize to one of crop_resize_scales, random absolute crop in crop_size range, then (a)
    crop_resize_scales: list[int] = field(default_factory=lambda: [400, 500, 600])
    crop_resize_max_size: int = 4200   # longer-side cap of (b)'s first resize (official: 4200, i.e. none)
    crop_size: list[int] = field(default_factory=lambda: [384, 600])   # [min, max] crop height and width
    crop_prob: float = 0.5             # probability of policy (b) instead of (a) (official: 0.5)
    # evaluation: single-scale resize
    eval_scale: int = 800              # shorter side at evaluation
    eval_max_size: int = 1333          # longer-side cap at evaluation
    lsj: LSJConfig = field(default_factory=LSJConfig)   # policy lsj: resize by a random factor, crop, filter, flip

    def validate(self, prefix: str) -> None:
        p = prefix
        check_range(0.0 <= self.flip_prob <= 1.0, f"{p}.flip_prob", "must be in [0, 1]")
        check_range(0.0 <= self.crop_prob <= 1.0, f"{p}.crop_prob", "must be in [0, 1]")
        for name in ("scales", "crop_resize_scales"):
            values = getattr(self, name)
            check_range(len(values) >= 1 and all(v >= 1 for v in values), f"{p}.{name}",
                        "needs at least one positive size")
        check_range(all(s <= self.max_size for s in self.scales), f"{p}.max_size",
                    f"must be >= every scale (max scale {max(self.scales)})")
        check_range(len(self.crop_size) == 2 and 1 <= self.crop_size[0] <= self.crop_size[1],
                    f"{p}.crop_size", f"must be [min, max] with 1 <= min <= max, got {self.crop_size}")
        check_range(self.crop_resize_max_size >= 1, f"{p}.crop_resize_max_size", "must be >= 1")
        check_range(self.eval_scale >= 1, f"{p}.eval_scale", "must be >= 1")
        check_range(self.eval_max_size >= self.eval_scale, f"{p}.eval_max_size", "must be >= eval_scale")


@dataclass
class DataConfig:
    dataset: Literal["synthetic", "coco"] = "synthetic"   # the embedded generated set, or COCO-format files
    # annotation format and evaluation: coco (COCOeval) or lvis (LVIS v1 files: federated neg / not-exhaustive
    # category lists per image, category frequencies r / c / f; LVIS AP with APr / APc / APf); the synthetic set
    # is written in either
    format: Literal["coco", "lvis"] = "coco"
    # repeat-factor sampling of the training images (official LVIS: ClassBalancedDataset, threshold 1e-3): an image
    # appears ceil(max over its categories of max(1, sqrt(t / f_c))) times per epoch, f_c = fraction of images with c
    repeat_factor_threshold: float | None = None
    lvis_max_dets: int = 300           # format lvis: detections per image scored (LVIS standard 300; Co-DETR's own evaluation 1000)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    train: SplitConfig = field(default_factory=SplitConfig)
    val: SplitConfig = field(default_factory=SplitConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    batch_size: int = 2                # training images per worker
    eval_batch_size: int = 1           # evaluation images per worker (official: 1; a batch pads its images)
    group_by_aspect_ratio: bool = True  # training batches of one orientation (official GroupSampler)
    num_workers: int = 2               # data-loader processes per worker
    on_bad_image: Literal["skip", "error"] = "skip"   # a missing / corrupt image: skip and count, or stop

    def validate(self, prefix: str) -> None:
        p = prefix
        check_range(self.batch_size >= 1, f"{p}.batch_size", "must be >= 1")
        check_range(self.eval_batch_size >= 1, f"{p}.eval_batch_size", "must be >= 1")
        check_range(self.num_workers >= 0, f"{p}.num_workers", "must be >= 0")
        if self.repeat_factor_threshold is not None:
            check_range(0 < self.repeat_factor_threshold <= 1, f"{p}.repeat_factor_threshold",
                        f"must be in (0, 1] or null, got {self.repeat_factor_threshold}")
        check_range(self.lvis_max_dets >= 1, f"{p}.lvis_max_dets", "must be >= 1")
        if self.dataset == "coco":
            for split in ("train", "val"):
                for key in ("ann_file", "img_dir"):
                    check_range(bool(getattr(getattr(self, split), key)), f"{p}.{split}.{key}",
                                "must be set when data.dataset is 'coco'")
        else:
            # a path the user set for files that this dataset would not read is a mistake, not a no-op
            for split in ("train", "val"):
                for key in ("ann_file", "img_dir"):
                    value = getattr(getattr(self, split), key)
                    check_range(not value, f"{p}.{split}.{key}",
                                f"is set to {value!r} but {p}.dataset is {self.dataset!r} (the embedded generated "
                                f"set): set {p}.dataset=coco to train on your files, or remove the path")
