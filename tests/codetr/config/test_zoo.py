"""The config zoo: one project config per official Co-DETR config, checked against the official ones.

``tests/data/official_zoo.json`` holds, for every official config (but ViT-L), the values mmcv's own
config parser reads from it and the digest of the official model's state_dict (names and shapes), both
produced by the official code (``tests/data/official_zoo_dump.py``). Each project config names its
official file in its header (``# official: ...``); these tests check that every official config has
exactly one counterpart, that its settings are the official ones (but the differences its header
states), that the model it builds has the official checkpoint layout tensor for tensor, that the
official key lists convert onto it, and that each backbone / query-head family trains a step on the CPU.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path

import pytest
import torch

from codetr import build_model, load_config
from codetr.convert import config_for_official, from_official, to_official
from codetr.convert.backbone_names import relative_position_index
from codetr.data import build_dataset, collate_fn

ROOT = Path(__file__).resolve().parents[3]
DATA = ROOT / "tests" / "data"
OFFICIAL = {k: v for k, v in json.loads((DATA / "official_zoo.json").read_text()).items() if not k.startswith("_")}
ZOO = sorted([*(ROOT / "experiments").glob("*.yaml"), *(ROOT / "experiments" / "zoo").glob("*.yaml")])


def header(path: Path) -> dict[str, str]:
    """``official``, ``ap`` and ``differs`` from a config's header comment (empty when it names no official file)."""
    text = path.read_text()
    found = re.search(r"^# official: (\S+)$", text, re.M)
    if found is None:
        return {}
    ap = re.search(r"^# official AP: (.+)$", text, re.M)
    differs = re.search(r"^# differs: (.+?)(?=^[^#]|\Z)", text, re.M | re.S)
    return {"official": found.group(1), "ap": ap.group(1) if ap else "",
            "differs": " ".join(differs.group(1).replace("#", " ").split()) if differs else ""}


RECIPES = {path: header(path) for path in ZOO if header(path)}
BY_OFFICIAL = {h["official"]: path for path, h in RECIPES.items()}
IDS = [str(p.relative_to(ROOT / "experiments")) for p in RECIPES]
NO_WEIGHTS = ["model.backbone.pretrained=false"]


def test_every_official_config_has_exactly_one_project_config():
    named = [h["official"] for h in RECIPES.values()]
    assert len(named) == len(set(named)), "two project configs name the same official file"
    assert set(named) == set(OFFICIAL), (sorted(set(OFFICIAL) - set(named)), sorted(set(named) - set(OFFICIAL)))
    for path, h in RECIPES.items():
        assert re.fullmatch(r"\d\d\.\d box AP \((COCO val2017|LVIS v1 val)\)|none published.*", h["ap"]), path
        assert h["differs"], f"{path}: the header must say what differs from the official config"


# ----------------------------------------------------------------------------- settings

def project_view(cfg) -> dict:
    """The project config in the terms of :func:`official_zoo_dump.settings` (same keys, same units)."""
    m, d, t, aug, pad = cfg.model, cfg.data, cfg.train, cfg.data.augment, cfg.model.input_padding
    bb = m.backbone
    if bb.type == "resnet":
        backbone = {"type": "ResNet", "depth": bb.depth, "frozen_stages": bb.frozen(), "out_indices": bb.out_indices}
    else:
        arch = bb.swin_arch()
        backbone = {"type": "SwinTransformerV1", "embed_dim": arch.embed_dim, "depths": list(arch.depths),
                    "num_heads": list(arch.num_heads), "window_size": arch.window_size,
                    "drop_path_rate": arch.drop_path_rate, "out_indices": bb.out_indices,
                    "use_checkpoint": bb.with_cp}
    dino = m.query_head == "dino"
    view = {
        "backbone": backbone, "neck_num_outs": m.num_levels, "num_feature_levels": m.num_levels,
        "query_head": "CoDINOHead" if dino else "CoDeformDETRHead", "num_query": m.num_queries,
        "num_classes": m.num_classes, "num_encoder_layers": m.num_encoder_layers,
        "encoder_with_cp": m.encoder_checkpoint_layers, "num_decoder_layers": m.num_decoder_layers,
        "with_coord_feat": m.with_coord_feat, "mixed_selection": m.mixed_selection,
        "num_co_heads": len(m.aux_heads),
        "loss_cls": ["QualityFocalLoss" if dino else "FocalLoss", m.cls_loss_weight()],
        "loss_bbox": m.loss.bbox, "loss_iou": m.loss.giou, "lambda_1": m.lambda1, "lambda_2": m.lambda2,
        "roi_finest_scale": m.aux.faster_rcnn.roi_finest_scale,
        "roi_strides": [4, 8, 16, 32, 64] if m.num_levels == 5 else [8, 16, 32, 64],
        "mask_head": False,
        "dn": {"group_cfg": {"dynamic": True, "num_dn_queries": m.dn.num_queries, "num_groups": None},
               "noise_scale": {"box": m.dn.box_noise, "label": m.dn.label_noise},
               "type": "CdnQueryGenerator"} if dino else None,
        "test_max_per_img": m.num_detections,
        "test_nms": {"iou_threshold": m.nms_iou, "type": "soft_nms"} if m.eval_nms() == "soft" else None,
        "with_attn_mask": pad.mask,
        "optimizer": {"type": "AdamW", "lr": t.lr, "weight_decay": t.weight_decay,
                      "lr_mult": {k: t.lr_mult_value for k in t.lr_mult_keys}},
        "grad_clip": t.clip_grad_norm, "lr_steps": t.lr_steps, "max_epochs": t.epochs,
        "samples_per_gpu": d.batch_size,
        "auto_scale_lr_base_batch": d.batch_size * cfg.platform.num_workers,
        "oversample_thr": d.repeat_factor_threshold,
        "train_inner_dataset": "LVISV1Dataset" if d.format == "lvis" else "CocoDataset",
        "val_dataset": "LVISV1Dataset" if d.format == "lvis" else "CocoDataset",
        "test_img_scale": [aug.eval_max_size, aug.eval_scale],
        "test_pad": ({"pad_val": {"img": [pad.pixel_value] * 3}, "size": [pad.size, pad.size]}
                     if pad.size is not None else {"size_divisor": pad.size_divisor}),
    }
    if aug.policy == "lsj":
        s = aug.lsj.image_size
        view["train_pipeline"] = {
            "policy": "lsj", "flip_prob": aug.flip_prob, "lsj_image_size": [s, s], "lsj_crop_size": [s, s],
            "lsj_ratio_range": aug.lsj.ratio_range, "lsj_min_box_wh": [aug.lsj.min_box_size] * 2,
            "pad_size": [pad.size, pad.size], "pad_value": pad.pixel_value, "copy_paste": False}
    else:
        assert aug.crop_prob == 0.5   # the official AutoAugment picks one of its two policies uniformly
        view["train_pipeline"] = {
            "policy": "detr", "flip_prob": aug.flip_prob, "scales": aug.scales, "max_size": aug.max_size,
            "crop_resize_scales": aug.crop_resize_scales, "crop_resize_max_size": aug.crop_resize_max_size,
            "crop_size": aug.crop_size, "crop_type": "absolute_range", "second_resize": True,
            "pad_size_divisor": pad.size_divisor, "copy_paste": False}
    return view


# official values a project config may differ in, and the word its header must then use to say so
STATED = {"train_pipeline.copy_paste": "copy-paste", "mask_head": "mask"}
NOT_COMPARED = ("train_dataset",)   # mmdet's dataset wrappers: their effect is compared (pipeline, oversample_thr)


def flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k in ("backbone", "train_pipeline", "optimizer"):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


@pytest.mark.parametrize("path", list(RECIPES), ids=IDS)
def test_settings_are_the_official_ones(path):
    h = RECIPES[path]
    official = flat(OFFICIAL[h["official"]]["settings"])
    cfg = load_config(path)
    ours = flat(project_view(cfg))
    # weights: ImageNet backbone weights (official pretrained=...) or a whole-detector start (load_from)
    if official.pop("load_from") is not None:
        assert cfg.model.init_from and not cfg.model.backbone.pretrained, path
    else:
        assert cfg.model.init_from is None and cfg.model.backbone.pretrained, path
    if official.pop("backbone.pretrained", None) is None and "backbone.depth" not in official:
        assert not cfg.model.backbone.pretrained
    if official["backbone.type"] == "SwinTransformerV1":
        assert cfg.model.backbone.frozen() == 0   # official frozen_stages -1 (its default)
    differences = {}
    for key, value in official.items():
        if key in NOT_COMPARED:
            continue
        assert key in ours, f"{key} has no project counterpart in the comparison"
        mine = ours[key]
        same = mine == pytest.approx(value) if isinstance(value, float) else mine == value
        if not same:
            differences[key] = (value, mine)
    unstated = {k: v for k, v in differences.items() if k not in STATED or STATED[k] not in h["differs"]}
    assert not unstated, f"{path.name} differs from {h['official']} (official, project): {unstated}"


# ----------------------------------------------------------------------------- parameters

def official_layout(path: Path) -> tuple[list[str], object]:
    """``name [shape]`` lines of the model ``path`` builds, in the official names (built on the meta device)."""
    cfg = load_config(path, NO_WEIGHTS)
    with torch.device("meta"):
        model = build_model(cfg)
    sd, _ = to_official(model.state_dict(), cfg)
    return [f"{k} {list(v.shape)}" for k, v in sd.items()], cfg


def key_lines(name: str) -> list[str]:
    return [line for line in (DATA / name).read_text().splitlines() if line.strip() and not line.startswith("#")]


MASK_EXTRA = "official_co_deformable_detr_mask_r50_extra_keys.txt"


@pytest.mark.parametrize("path", list(RECIPES), ids=IDS)
def test_parameters_have_the_official_names_and_shapes(path):
    entry = OFFICIAL[RECIPES[path]["official"]]["params"]
    lines, _ = official_layout(path)
    if "mask_head" in RECIPES[path]["differs"] or "mask branch" in RECIPES[path]["differs"]:
        lines = lines + key_lines(MASK_EXTRA)   # the mask variant: the box part is checked, the mask head stated
    digest = hashlib.sha256("\n".join(sorted(lines)).encode()).hexdigest()
    if digest != entry["sha256"]:
        message = f"{path.name}: {len(lines)} tensors, official {entry['num_tensors']}"
        if entry.get("key_file"):
            theirs = set(key_lines(entry["key_file"]))
            message += f"; missing {sorted(theirs - set(lines))[:5]}, extra {sorted(set(lines) - theirs)[:5]}"
        pytest.fail(message)
    assert len(lines) == entry["num_tensors"]


def zero_tensors(lines: list[str], window: int) -> dict[str, torch.Tensor]:
    """An official state dict of zero-stride zeros (no memory) with these names and shapes; Swin's
    relative position indices hold their real values."""
    sd = {}
    for line in lines:
        name, shape = line.split(" ", 1)
        shape = [int(x) for x in shape.strip("[]").split(",") if x.strip()]
        if name.endswith("relative_position_index"):
            sd[name] = relative_position_index(window)
        elif name.endswith("num_batches_tracked"):
            sd[name] = torch.zeros((), dtype=torch.long)
        else:
            sd[name] = torch.zeros(()).expand(shape)
    return sd


@pytest.mark.parametrize("key_file,config,window", [
    ("official_co_deformable_detr_swin_s_keys.txt", "zoo/codetr_swin_s_1x_coco.yaml", 7),
    ("official_co_deformable_detr_swin_b_keys.txt", "zoo/codetr_swin_b_1x_coco.yaml", 12),
    ("official_co_deformable_detr_swin_l_keys.txt", "codetr_swin_l_coco.yaml", 12),
    ("official_co_dino_5scale_swin_l_keys.txt", "zoo/codino_swin_l_1x_coco.yaml", 12),
    ("official_co_deformable_detr_r50_keys.txt+mask", "zoo/codetr_mask_r50_1x_coco.yaml", 0),
])
def test_official_key_lists_convert_onto_the_zoo_model(key_file, config, window):
    """The converter reads each family's size off its key list and maps every tensor (strictly)."""
    lines = key_lines(key_file.removesuffix("+mask")) + (key_lines(MASK_EXTRA) if key_file.endswith("+mask") else [])
    official = zero_tensors(lines, window)
    path = ROOT / "experiments" / config
    cfg, inferred = config_for_official(official, str(path))
    zoo = load_config(path, NO_WEIGHTS)
    # the sizes read off the checkpoint are the zoo config's (stochastic depth is not in a checkpoint)
    assert dataclasses.replace(cfg.model, backbone=zoo.model.backbone) == zoo.model, inferred
    ours, theirs = cfg.model.backbone, zoo.model.backbone
    assert ours.out_indices == theirs.out_indices and ours.type == theirs.type
    if ours.type == "swin":
        assert dataclasses.replace(ours.swin_arch(), drop_path_rate=0) == dataclasses.replace(theirs.swin_arch(),
                                                                                              drop_path_rate=0)
    with torch.device("meta"):
        model_sd = build_model(cfg).state_dict()
    converted, report = from_official(official, cfg, model_sd)
    assert set(converted) == set(model_sd) and not report.transformed
    reasons = {why.split(" (")[0] for _, why in report.ignored}
    expected = {"Swin relative position index"} if window else {"BatchNorm step counter"}
    if key_file.endswith("+mask"):
        expected.add("mask branch of the RoI head")
        assert sum("mask branch" in why for _, why in report.ignored) == 12
    assert reasons == expected


# ----------------------------------------------------------------------------- one training step per family

SMALL = ["data.dataset=synthetic", "data.train.ann_file=''", "data.train.img_dir=''", "data.val.ann_file=''",
         "data.val.img_dir=''", "model.num_classes=null", "data.synthetic.num_train=8", "data.synthetic.num_val=2",
         "data.synthetic.image_size=64", "data.num_workers=0", "data.augment.scales=[56, 64]",
         "data.augment.max_size=96", "data.augment.crop_resize_scales=[48]", "data.augment.crop_size=[32, 48]",
         "data.augment.eval_scale=64", "data.augment.eval_max_size=96", "model.init_from=null", *NO_WEIGHTS]
# the transformer and the auxiliary heads' sampling cut down to CPU size; widths, backbone, heads and
# the data path stay the config's
SHRINK = ["model.num_encoder_layers=1", "model.num_decoder_layers=2", "model.num_queries=30", "model.ffn_dims=256",
          "model.dn.num_queries=10", "model.max_pos_queries=20", "model.aux.faster_rcnn.rpn_pre_nms_top_n=200",
          "model.aux.faster_rcnn.rpn_post_nms_top_n=100", "model.aux.faster_rcnn.roi_batch_size=16"]
LSJ_SMALL = ["data.augment.lsj.image_size=96", "model.input_padding.size=96"]


@pytest.mark.parametrize("config,extra", [
    ("zoo/codetr_mask_r50_1x_coco.yaml", []),                     # ResNet x Co-Deformable-DETR
    ("zoo/codetr_swin_s_1x_coco.yaml", []),                       # Swin x Co-Deformable-DETR
    ("zoo/codino_lsj_r50_1x_lvis.yaml", LSJ_SMALL),               # ResNet x Co-DINO, LSJ, LVIS, repeat factors
    ("zoo/codino_swin_l_16e_o365tococo.yaml", ["model.backbone.depths=[2, 2, 2, 2]"]),   # Swin-L x Co-DINO,
])                                                                # with_cp, size divisor 32
def test_one_training_step_per_backbone_and_query_head(config, extra, tmp_path):
    torch.manual_seed(0)
    cfg = load_config(ROOT / "experiments" / config, [*SMALL, *SHRINK, f"data.synthetic.root={tmp_path}", *extra])
    dataset = build_dataset(cfg, "train")
    images, targets = collate_fn([dataset[0], dataset[1]])
    model = build_model(cfg, num_classes=dataset.num_classes).train()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    losses = model(images, targets)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    # every trainable parameter is in the graph (DDP needs it); at the official initialisation some
    # gradients are exactly zero (zero-initialised last box layers and attention offsets, levels without
    # positives, a block dropped by stochastic depth), most are not
    no_grad = [n for n, p in named if p.grad is None]
    assert not no_grad, f"{config}: trainable parameters outside the graph: {no_grad[:5]}"
    assert sum(bool(p.grad.any()) for _, p in named) > 0.8 * len(named)
    name, param = next((n, p) for n, p in reversed(named) if p.grad.any())
    before = param.detach().clone()
    torch.optim.SGD([p for _, p in named], lr=1.0).step()
    assert not torch.equal(before, param.detach()), name
    if cfg.data.augment.policy == "lsj":
        batch, mask, sizes = model.preprocess(images)
        assert tuple(batch.shape[-2:]) == (96, 96) and not mask.any()
