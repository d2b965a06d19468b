"""Writes tests/data/official_zoo.json and the official key lists from the official Co-DETR code.

Builds every official config (Sense-X/Co-DETR projects/configs/, its bundled mmdet 2.25.3, mmcv 1.7.2;
the ViT-L ones left out) on the CPU and records (1) the settings the project's zoo configs are checked
against, read by mmcv's own ``Config.fromfile``, and (2) the model's state_dict names and shapes: a
digest per config and the full lists of the families in KEY_FILES. Not a test: it needs the official
code and an mmcv 1.x environment, e.g. the official-parity harness's venv (``official_env.setup()``
stubs mmcv's compiled ops) with ``timm`` added for the Swin backbones:

    OFFICIAL_SRC=<exported Sense-X/Co-DETR tree> PARITY_HARNESS=<folder of official_env.py> \
      <official venv>/bin/python tests/data/official_zoo_dump.py OUT_DIR
"""
import hashlib
import json
import os
import sys
import time

sys.path.insert(0, os.environ["PARITY_HARNESS"])
import official_env  # noqa: E402

official_env.setup()
import torch  # noqa: E402
from mmcv import Config  # noqa: E402
from mmdet.models import build_detector  # noqa: E402

SRC = os.environ["OFFICIAL_SRC"]
out_dir = sys.argv[1]
os.makedirs(out_dir, exist_ok=True)
COMMIT = "2665352"    # the Sense-X/Co-DETR commit the committed files come from
# official config -> (key list file, the model's words in its header); the R50 / Swin-T / Co-DINO R50 lists
# were in tests/data before and come out identical but for their header line
KEY_FILES = {
    "co_deformable_detr/co_deformable_detr_r50_1x_coco.py": ("official_co_deformable_detr_r50_keys.txt", None),
    "co_deformable_detr/co_deformable_detr_swin_tiny_1x_coco.py": ("official_co_deformable_detr_swin_t_keys.txt", None),
    "co_dino/co_dino_5scale_r50_1x_coco.py": ("official_co_dino_5scale_r50_keys.txt", None),
    "co_deformable_detr/co_deformable_detr_swin_small_1x_coco.py": (
        "official_co_deformable_detr_swin_s_keys.txt", "Co-Deformable-DETR Swin-S 1x model ({config}, K = 2: rpn_head + "
        "roi_head + bbox_head/ATSS)"),
    "co_deformable_detr/co_deformable_detr_swin_base_1x_coco.py": (
        "official_co_deformable_detr_swin_b_keys.txt", "Co-Deformable-DETR Swin-B 1x model ({config}, K = 2: rpn_head + "
        "roi_head + bbox_head/ATSS)"),
    "co_deformable_detr/co_deformable_detr_swin_large_1x_coco.py": (
        "official_co_deformable_detr_swin_l_keys.txt", "Co-Deformable-DETR Swin-L 1x model ({config}, K = 2: rpn_head + "
        "roi_head + bbox_head/ATSS)"),
    "co_dino/co_dino_5scale_swin_large_1x_coco.py": (
        "official_co_dino_5scale_swin_l_keys.txt", "Co-DINO 5-scale Swin-L model ({config}; the same names and shapes for "
        "its 2x / 3x / LSJ / Objects365 -> COCO variants)"),
}
MASK_CONFIG = "co_deformable_detr/co_deformable_detr_mask_r50_1x_coco.py"
MASK_FILE = "official_co_deformable_detr_mask_r50_extra_keys.txt"
ABOUT = ("Every official Co-DETR config of Sense-X/Co-DETR (commit 2665352, projects/configs/) but the ViT-L "
         "ones, read by mmcv's Config.fromfile and built by the official code (its bundled mmdet 2.25.3, "
         "mmcv 1.7.2) on the CPU: 'settings' are the config values the project's zoo configs are checked "
         "against (tests/codetr/config/test_zoo.py); 'params' the model's state_dict: tensor count, value "
         "count and the sha256 of its sorted 'name [shape]' lines, with the full list in 'key_file' where "
         "tests/data has one. Written by tests/data/official_zoo_dump.py in the official-parity harness's "
         "official venv.")

def first(pipeline, kind):
    return [p for p in pipeline if p["type"] == kind]


def pipeline_settings(pipeline):
    out = {}
    aa = first(pipeline, "AutoAugment")
    if aa:
        a, b = aa[0]["policies"]
        out["policy"] = "detr"
        out["scales"] = sorted({min(s) for s in a[0]["img_scale"]})
        out["max_size"] = max(max(s) for s in a[0]["img_scale"])
        out["crop_resize_scales"] = sorted({min(s) for s in b[0]["img_scale"]})
        out["crop_resize_max_size"] = max(max(s) for s in b[0]["img_scale"])
        out["crop_size"] = list(b[1]["crop_size"])
        out["crop_type"] = b[1]["crop_type"]
        out["second_resize"] = sorted({min(s) for s in b[2]["img_scale"]}) == out["scales"]
    rs = [p for p in first(pipeline, "Resize") if p.get("ratio_range")]
    if rs:
        out["policy"] = "lsj"
        out["lsj_image_size"] = list(rs[0]["img_scale"])
        out["lsj_ratio_range"] = list(rs[0]["ratio_range"])
        out["lsj_crop_size"] = list(first(pipeline, "RandomCrop")[0]["crop_size"])
        out["lsj_min_box_wh"] = list(first(pipeline, "FilterAnnotations")[0]["min_gt_bbox_wh"])
        pad = first(pipeline, "Pad")[0]
        out["pad_size"] = list(pad["size"])
        out["pad_value"] = pad["pad_val"]["img"][0]
    flip = first(pipeline, "RandomFlip")
    if flip:
        out["flip_prob"] = flip[0]["flip_ratio"]
    pad = first(pipeline, "Pad")
    if pad and "size_divisor" in pad[0]:
        out["pad_size_divisor"] = pad[0]["size_divisor"]
    out["copy_paste"] = False
    return out


def settings(cfg):
    m = cfg.model
    qh = m.query_head
    tr = qh.transformer
    bb = m.backbone
    s = {"backbone": {k: (list(v) if isinstance(v, tuple) else v) for k, v in bb.items()
                      if k in ("type", "depth", "embed_dim", "depths", "num_heads", "window_size", "drop_path_rate",
                               "out_indices", "frozen_stages", "use_checkpoint", "pretrained")},
         "neck_num_outs": m.neck.num_outs,
         "query_head": qh.type, "num_query": qh.num_query, "num_classes": qh.num_classes,
         "num_feature_levels": tr.get("num_feature_levels", 4),
         "num_encoder_layers": tr.encoder.num_layers, "encoder_with_cp": tr.encoder.get("with_cp", 0),
         "num_decoder_layers": tr.decoder.num_layers,
         "with_coord_feat": tr.get("with_coord_feat", True), "mixed_selection": qh.mixed_selection,
         "num_co_heads": tr.num_co_heads,
         "loss_cls": [qh.loss_cls.type, qh.loss_cls.loss_weight], "loss_bbox": qh.loss_bbox.loss_weight,
         "loss_iou": qh.loss_iou.loss_weight, "lambda_1": qh.get("lambda_1", 1),
         "lambda_2": m.rpn_head.loss_cls.loss_weight / tr.decoder.num_layers,
         "roi_finest_scale": m.roi_head[0].bbox_roi_extractor.finest_scale,
         "roi_strides": list(m.roi_head[0].bbox_roi_extractor.featmap_strides),
         "mask_head": "mask_head" in m.roi_head[0],
         "dn": dict(qh.dn_cfg) if qh.get("dn_cfg") else None,
         "test_max_per_img": m.test_cfg[0].max_per_img,
         "test_nms": dict(m.test_cfg[0].nms) if m.test_cfg[0].get("nms") else None,
         "with_attn_mask": m.get("with_attn_mask", True),
         "optimizer": {"type": cfg.optimizer.type, "lr": cfg.optimizer.lr, "weight_decay": cfg.optimizer.weight_decay,
                       "lr_mult": {k: v["lr_mult"] for k, v in cfg.optimizer.paramwise_cfg.custom_keys.items()}},
         "grad_clip": cfg.optimizer_config.grad_clip.max_norm,
         "lr_steps": list(cfg.lr_config.step), "max_epochs": cfg.runner.max_epochs,
         "samples_per_gpu": cfg.data.samples_per_gpu,
         "auto_scale_lr_base_batch": cfg.get("auto_scale_lr", {}).get("base_batch_size"),
         "load_from": cfg.get("load_from"),
         }
    train = cfg.data.train
    s["train_dataset"] = train.type
    inner = train.get("dataset", train)
    s["train_inner_dataset"] = inner.get("type")
    s["oversample_thr"] = train.get("oversample_thr")
    pipe = train.get("pipeline") if train.type != "MultiImageMixDataset" else inner.pipeline
    if train.type == "MultiImageMixDataset":
        s["train_pipeline"] = pipeline_settings(inner.pipeline)
        s["train_pipeline"]["copy_paste"] = any(p["type"] == "CopyPaste" for p in train.pipeline)
    else:
        s["train_pipeline"] = pipeline_settings(train.pipeline)
    test = cfg.data.test
    msfa = first(test.pipeline, "MultiScaleFlipAug")[0]
    s["test_img_scale"] = list(msfa.img_scale)
    s["test_pad"] = [{k: v for k, v in p.items() if k != "type"} for p in msfa.transforms if p["type"] == "Pad"][0]
    s["val_dataset"] = cfg.data.val.type
    return s


configs = sorted(
    os.path.relpath(os.path.join(d, f), os.path.join(SRC, "projects/configs"))
    for d, _, fs in os.walk(os.path.join(SRC, "projects/configs")) for f in fs
    if f.endswith(".py") and "/_base_" not in d and "co_" in d and "vit" not in d)
result = {"_about": ABOUT}
key_lines = {}
for rel in configs:
    t = time.time()
    cfg = Config.fromfile(os.path.join(SRC, "projects/configs", rel))
    entry = {"settings": settings(cfg)}
    cfg.model.backbone.pop("init_cfg", None)
    if "pretrained" in cfg.model.backbone:
        cfg.model.backbone.pretrained = None
    torch.manual_seed(0)
    model = build_detector(cfg.model)
    sd = model.state_dict()
    lines = [f"{k} {list(v.shape)}" for k, v in sd.items()]
    key_lines[rel] = lines
    digest = hashlib.sha256("\n".join(sorted(lines)).encode()).hexdigest()
    entry["params"] = {"num_tensors": len(lines), "num_values": int(sum(v.numel() for v in sd.values())),
                       "sha256": digest}
    if rel in KEY_FILES:
        name, words = KEY_FILES[rel]
        entry["params"]["key_file"] = name
        header = "" if words is None else (
            f"# Parameter and buffer names with shapes of the official {words.format(config=os.path.basename(rel))}, "
            'as in its state_dict and so in its released checkpoint (under "state_dict"), built by the official code '
            '(tests/data/official_zoo_dump.py). One "name [shape]" a line.\n')
        with open(os.path.join(out_dir, name), "w") as f:
            f.write(header + "\n".join(lines) + "\n")
    result[rel] = entry
    print(rel, len(lines), f"{time.time() - t:.1f}s", flush=True)
    del model, sd
base = set(key_lines["co_deformable_detr/co_deformable_detr_r50_1x_coco.py"])
with open(os.path.join(out_dir, MASK_FILE), "w") as f:
    f.write(f"# The 12 tensors the official mask variant ({os.path.basename(MASK_CONFIG)}) has beyond "
            "official_co_deformable_detr_r50_keys.txt: the FCN mask head of its RoI head (built by the official code, "
            'tests/data/official_zoo_dump.py). One "name [shape]" a line.\n')
    f.write("\n".join(line for line in key_lines[MASK_CONFIG] if line not in base) + "\n")
with open(os.path.join(out_dir, "official_zoo.json"), "w") as f:
    json.dump(result, f, indent=1, sort_keys=True)
