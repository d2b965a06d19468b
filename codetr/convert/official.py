"""Official Co-DETR checkpoints (mmdetection 2.x layout) to and from this project's checkpoints.

``from_official`` maps every tensor of an official ``state_dict`` onto the project's names (see
:mod:`codetr.convert.names`), checks the result against a model built from the config (every
project tensor filled, every shape equal), and reports what it did: tensors mapped, mapped with a
transform (the per-head embedding rows when the project orders its auxiliary heads differently),
ignored (BatchNorm step counters, which a frozen BatchNorm does not keep; a Swin backbone's relative
position indices, which the project recomputes from the window size; the mask variant's mask head, as the
project detects boxes only) and anything unexpected,
which is an error. ``to_official`` is the inverse: project -> official is exact, and
project -> official -> project is the identity.

The model dimensions are read off the checkpoint (backbone type and size: ResNet depth, Swin embed
dim / depths / heads / window; widths, layer counts, queries, classes, which auxiliary heads), so
one base config serves every official model of a family.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from torch import Tensor

from codetr.config import Config, load_config
from codetr.convert.backbone_names import BackboneInferenceError, infer_backbone, swin_fixed_buffers
from codetr.convert.names import OFFICIAL_AUX_ORDER, Layout, NameMap

# the 80 COCO class names in the order of the official checkpoints (meta["CLASSES"])
COCO_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush")

HEAD_POS_EMBED = "query_head.head_pos_embed.weight"
MASK_BRANCH = "roi_head.0.mask_head."   # co_deformable_detr_mask_r50_1x_coco.py's FCN mask head (boxes only here)


class ConversionError(ValueError):
    """A checkpoint that does not fit the project's model; the message lists the offending names."""


@dataclass
class ConversionReport:
    mapped: list[tuple[str, str]] = field(default_factory=list)        # (source, target) copied as is
    transformed: list[tuple[str, str, str]] = field(default_factory=list)  # (source, target, how)
    ignored: list[tuple[str, str]] = field(default_factory=list)       # (source, why)
    added: list[tuple[str, str]] = field(default_factory=list)         # (target, why): written, not in the source
    inferred: dict[str, object] = field(default_factory=dict)          # config values read off the checkpoint

    def table(self) -> str:
        rows = [("mapped (same name rule, same shape)", len(self.mapped)),
                ("mapped with a transform", len(self.transformed)),
                ("ignored", len(self.ignored)),
                ("added (not in the source)", len(self.added)),
                ("unexpected", 0)]
        width = max(len(r[0]) for r in rows)
        lines = [f"{'tensors':<{width}}  count", f"{'-' * width}  -----"]
        lines += [f"{name:<{width}}  {n}" for name, n in rows]
        for src, dst, how in self.transformed:
            lines.append(f"  transform: {src} -> {dst}: {how}")
        reasons: dict[str, int] = {}
        for _, why in self.ignored:
            reasons[why] = reasons.get(why, 0) + 1
        lines += [f"  ignored: {n} x {why}" for why, n in reasons.items()]
        reasons = {}
        for _, why in self.added:
            reasons[why] = reasons.get(why, 0) + 1
        lines += [f"  added: {n} x {why}" for why, n in reasons.items()]
        return "\n".join(lines)


# ------------------------------------------------------------------------------------ reading the layout

def _count(sd: dict, pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for name in sd for m in [rx.match(name)] if m})


def infer_overrides(official_sd: dict[str, Tensor]) -> dict[str, object]:
    """Config values (dotted keys) that an official state dict fixes."""
    sd = official_sd
    try:
        out: dict[str, object] = infer_backbone(sd)
    except BackboneInferenceError as e:
        raise ConversionError(str(e)) from e
    lvl = sd.get("query_head.transformer.level_embeds")
    if lvl is None:
        raise ConversionError("no query_head.transformer.level_embeds: not a Co-DETR (Co-Deformable-DETR / Co-DINO) "
                              "checkpoint")
    out["model.num_levels"], out["model.embed_dims"] = int(lvl.shape[0]), int(lvl.shape[1])
    out["model.num_encoder_layers"] = _count(sd, r"^query_head\.transformer\.encoder\.layers\.(\d+)\.")
    out["model.num_decoder_layers"] = _count(sd, r"^query_head\.transformer\.decoder\.layers\.(\d+)\.")
    out["model.ffn_dims"] = int(sd["query_head.transformer.encoder.layers.0.ffns.0.layers.0.0.weight"].shape[0])
    dino = "query_head.label_embedding.weight" in sd
    out["model.query_head"] = "dino" if dino else "deformable_detr"
    queries = "query_head.transformer.query_embed.weight" if dino else "query_head.query_embedding.weight"
    out["model.num_queries"] = int(sd[queries].shape[0])
    num_inputs = _count(sd, r"^neck\.convs\.(\d+)\.conv\.weight$")
    if num_inputs not in (3, 4) or num_inputs + 1 != out["model.num_levels"]:
        raise ConversionError(f"neck with {num_inputs} inputs and {out['model.num_levels']} levels: expected 3 + 1 "
                              f"(Co-Deformable-DETR) or 4 + 1 (Co-DINO 5-scale)")
    out["model.backbone.out_indices"] = [1, 2, 3] if num_inputs == 3 else [0, 1, 2, 3]
    out["model.num_classes"] = int(sd["query_head.cls_branches.0.weight"].shape[0])
    heads = []
    if any(n.startswith("roi_head.0.") for n in sd):
        heads.append("faster_rcnn")
    if "bbox_head.0.atss_cls.weight" in sd:
        heads.append("atss")
    unknown = sorted({n.split(".")[0] + "." + n.split(".")[1] for n in sd
                      if n.startswith(("bbox_head.", "roi_head.")) and not n.startswith(("bbox_head.0.", "roi_head.0."))})
    if unknown or (any(n.startswith("bbox_head.0.") for n in sd) and "atss" not in heads):
        raise ConversionError(f"auxiliary heads other than one Faster R-CNN and one ATSS head are not supported "
                              f"({unknown or 'bbox_head.0 is not ATSS'})")
    out["model.aux_heads"] = heads
    out["model.with_coord_feat"] = "query_head.transformer.pos_feats_trans.0.weight" in sd
    if "faster_rcnn" in heads:
        out["model.aux.faster_rcnn.fc_dims"] = int(sd["roi_head.0.bbox_head.shared_fcs.0.weight"].shape[0])
    if "atss" in heads:
        out["model.aux.atss.stacked_convs"] = _count(sd, r"^bbox_head\.0\.cls_convs\.(\d+)\.conv\.weight$")
    return out


def _order_heads(inferred: list[str], configured: list[str]) -> list[str]:
    """The configured order when it names the same heads, else the official order."""
    if sorted(inferred) == sorted(configured):
        return list(configured)
    return [h for h in OFFICIAL_AUX_ORDER if h in inferred]


def config_for_official(official_sd: dict[str, Tensor], config_path: str | None,
                        overrides: list[str] | tuple[str, ...] = ()) -> tuple[Config, dict[str, object]]:
    """The project config of an official checkpoint: ``config_path`` (+ ``overrides``) with the values
    the checkpoint fixes; ImageNet weights off (the checkpoint holds the backbone)."""
    inferred = infer_overrides(official_sd)
    base = load_config(config_path, list(overrides))
    inferred["model.aux_heads"] = _order_heads(inferred["model.aux_heads"], list(base.model.aux_heads))
    values = [f"{k}={_yaml(v)}" for k, v in inferred.items()] + ["model.backbone.pretrained=false"]
    if base.model.backbone.type != inferred["model.backbone.type"]:
        values.append("model.backbone.frozen_stages=null")   # the base config's value is for the other type
    return load_config(config_path, list(overrides) + values), inferred


def _yaml(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return "[" + ", ".join(map(str, v)) + "]"
    return str(v)


def layout_of(cfg: Config) -> Layout:
    m = cfg.model
    unsupported = [h for h in m.aux_heads if h not in OFFICIAL_AUX_ORDER]
    if unsupported:
        raise ConversionError(f"model.aux_heads has {unsupported}: the official layout has no such head "
                              f"(only {list(OFFICIAL_AUX_ORDER)})")
    if len(set(m.aux_heads)) != len(m.aux_heads):
        raise ConversionError(f"model.aux_heads {m.aux_heads} repeats a head: the official layout has one of each")
    return Layout(m.num_encoder_layers, m.num_decoder_layers, tuple(m.aux_heads),
                  with_coord_feat=m.with_coord_feat and bool(m.aux_heads), query_head=m.query_head,
                  backbone=m.backbone)


def _check_against(model_sd: dict[str, Tensor], converted: dict[str, Tensor], what: str) -> None:
    missing = [k for k in model_sd if k not in converted]
    extra = [k for k in converted if k not in model_sd]
    shapes = [f"{k} {list(converted[k].shape)} (model {list(model_sd[k].shape)})" for k in converted
              if k in model_sd and converted[k].shape != model_sd[k].shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} model tensors not filled: {missing[:8]}")
    if extra:
        problems.append(f"{len(extra)} tensors the model does not have: {extra[:8]}")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatches: {shapes[:8]}")
    if problems:
        raise ConversionError(f"{what}: " + "; ".join(problems))


# ------------------------------------------------------------------------------------ official -> project

def from_official(official_sd: dict[str, Tensor], cfg: Config, model_sd: dict[str, Tensor]
                  ) -> tuple[dict[str, Tensor], ConversionReport]:
    """Official state dict -> project state dict for the model whose ``state_dict()`` is ``model_sd``."""
    names = NameMap(layout_of(cfg))
    report = ConversionReport()
    out: dict[str, Tensor] = {}
    unexpected = []
    fixed = swin_fixed_buffers(cfg.model.backbone)
    for src, tensor in official_sd.items():
        dst = names.to_project(src)
        if src.endswith(".num_batches_tracked") and (dst is None or dst not in model_sd):
            report.ignored.append((src, "BatchNorm step counter (the project's frozen BatchNorm keeps none)"))
            continue
        if src in fixed:
            if not torch.equal(tensor.to(torch.long), fixed[src]):
                raise ConversionError(f"{src}: not the relative position index of a {fixed[src].shape[0]}-token "
                                      f"window (the project computes it; this checkpoint's differs)")
            report.ignored.append((src, "Swin relative position index (fixed by the window size; recomputed)"))
            continue
        if dst is None and src.startswith(MASK_BRANCH) and "faster_rcnn" in cfg.model.aux_heads:
            report.ignored.append((src, "mask branch of the RoI head (the project detects boxes only)"))
            continue
        if dst is None:
            unexpected.append(src)
            continue
        if dst == HEAD_POS_EMBED and names.head_rows() != list(range(len(names.head_rows()))):
            out[dst] = tensor[names.head_rows()].clone()
            report.transformed.append((src, dst, f"rows reordered to the project's head order {list(cfg.model.aux_heads)}"))
            continue
        out[dst] = tensor
        report.mapped.append((src, dst))
    if unexpected:
        raise ConversionError(f"{len(unexpected)} official tensors have no place in the project's model "
                              f"(aux_heads {list(cfg.model.aux_heads)}, with_coord_feat {cfg.model.with_coord_feat}): "
                              f"{unexpected[:10]}")
    for dst in model_sd:   # BatchNorm counters of a trainable-BN project backbone that the source lacks
        if dst not in out and dst.endswith(".num_batches_tracked"):
            out[dst] = torch.zeros((), dtype=torch.long)
            report.added.append((dst, "BatchNorm step counter, 0"))
    _check_against(model_sd, out, "official checkpoint -> project model")
    return {k: out[k].to(model_sd[k].dtype) for k in model_sd}, report


# ------------------------------------------------------------------------------------ project -> official

def to_official(project_sd: dict[str, Tensor], cfg: Config) -> tuple[dict[str, Tensor], ConversionReport]:
    """Project state dict -> official state dict (every backbone BatchNorm gets a zero step counter,
    as the official BatchNorm keeps one; a Swin block its relative position index)."""
    names = NameMap(layout_of(cfg))
    report = ConversionReport()
    out: dict[str, Tensor] = {}
    unexpected = []
    for src, tensor in project_sd.items():
        dst = names.to_official(src)
        if dst is None:
            unexpected.append(src)
            continue
        if src == HEAD_POS_EMBED and names.head_rows() != list(range(len(names.head_rows()))):
            inverse = [0] * len(names.head_rows())
            for p_idx, o_idx in enumerate(names.head_rows()):
                inverse[o_idx] = p_idx
            out[dst] = tensor[inverse].clone()
            report.transformed.append((src, dst, "rows reordered to the official head order (Faster R-CNN, ATSS)"))
            continue
        out[dst] = tensor
        report.mapped.append((src, dst))
    if unexpected:
        raise ConversionError(f"{len(unexpected)} project tensors have no official name: {unexpected[:10]}")
    for name, index in swin_fixed_buffers(cfg.model.backbone).items():
        out[name] = index
        report.added.append((name, "Swin relative position index (fixed by the window size)"))
    for name in list(out):
        if name.startswith("backbone.") and name.endswith(".running_var"):
            counter = name[: -len("running_var")] + "num_batches_tracked"
            if counter not in out:
                out[counter] = torch.zeros((), dtype=torch.long)
                report.added.append((counter, "BatchNorm step counter, 0"))
    return out, report


def class_names(meta: dict | None, num_classes: int) -> tuple[list[str], str]:
    """Class names from an mmcv ``meta`` (``CLASSES``), else COCO's for 80 classes, else ``class_i``."""
    names = (meta or {}).get("CLASSES")
    if names is not None:
        names = [str(n) for n in names]
        if len(names) != num_classes:
            raise ConversionError(f"meta['CLASSES'] has {len(names)} names but the model has {num_classes} classes")
        return names, "meta['CLASSES']"
    if num_classes == len(COCO_CLASSES):
        return list(COCO_CLASSES), "no meta['CLASSES']: the 80 COCO names assumed"
    return [f"class_{i}" for i in range(num_classes)], "no meta['CLASSES']: class_<i> names"
