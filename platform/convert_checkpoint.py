"""Convert checkpoints between the official Co-DETR (mmdetection 2.x) layout and this project's.

    python -m platform.convert_checkpoint OFFICIAL.pth -o OUT.pt [--config NAME] [key=value ...]
    python -m platform.convert_checkpoint --to-official PROJECT.pt -o OUT.pth

In: an mmcv / mmdetection checkpoint (a dict with ``state_dict`` and a ``meta`` that may hold
``CLASSES``; released Co-DETR files are such). Every tensor is mapped to the project's names and
checked against a model built from ``--config`` (default: the R50 recipe of its query head) with the
dimensions the checkpoint fixes (backbone: ResNet depth or Swin size and window; widths, layers,
queries, classes, auxiliary heads). The result is
a project checkpoint that ``platform.evaluate --checkpoint``, ``platform.predict --checkpoint`` and
``model.init_from`` accept. A coverage table says what was mapped, transformed and ignored;
anything unexpected is an error. Files are read with ``torch.load(weights_only=True)``: no code in
them runs (``--allow-global module.name`` admits more Python objects, deliberately).

Out (``--to-official``): a project checkpoint (training folder or ``checkpoint.pt``) in the official
layout, ``{"state_dict", "meta": {"CLASSES"}}``, for the OpenMMLab tooling (deployment, TensorRT).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from codetr import build_model
from codetr.config import ConfigError, config_from_dict, to_dict
from codetr.convert import (ConversionError, UnsafeCheckpointError, class_names, config_for_official, from_official,
                            infer_overrides, load_untrusted, to_official)
from codetr.engine import load_checkpoint, save_checkpoint
from platform.core.config_files import resolve_config_path

# the base config per official query head (the checkpoint fixes the dimensions on top of it)
DEFAULT_CONFIGS = {"deformable_detr": "experiments/codetr_r50_coco.yaml", "dino": "experiments/codino_r50_coco.yaml"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m platform.convert_checkpoint", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("source", metavar="CHECKPOINT", help="official .pth (or, with --to-official, a project checkpoint)")
    parser.add_argument("-o", "--output", required=True, help="file to write")
    parser.add_argument("--to-official", action="store_true", help="project -> official layout")
    parser.add_argument("--config", default=None,
                        help="base config of the converted model, a path or a name in experiments/ (default: the R50 "
                             "recipe of the checkpoint's query head: codetr_r50_coco or codino_r50_coco)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    parser.add_argument("--allow-global", action="append", default=[], metavar="MODULE.NAME",
                        help="also unpickle this Python global (only for files you trust)")
    return parser.parse_args(argv)


def official_state_dict(ck: object, path: str) -> tuple[dict, dict]:
    """(state dict, meta) of a loaded mmcv checkpoint (also a bare state dict)."""
    if isinstance(ck, dict) and isinstance(ck.get("state_dict"), dict):
        sd, meta = ck["state_dict"], ck.get("meta") or {}
    elif isinstance(ck, dict) and ck and all(isinstance(v, torch.Tensor) for v in ck.values()):
        sd, meta = ck, {}
    else:
        keys = list(ck)[:8] if isinstance(ck, dict) else type(ck).__name__
        raise ConversionError(f"{path}: no 'state_dict' in this file (top level: {keys})")
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
    return sd, meta if isinstance(meta, dict) else {}


def convert_in(args: argparse.Namespace) -> int:
    ck = load_untrusted(args.source, args.allow_global)
    official_sd, meta = official_state_dict(ck, args.source)
    config = args.config or DEFAULT_CONFIGS[str(infer_overrides(official_sd)["model.query_head"])]
    cfg, inferred = config_for_official(official_sd, resolve_config_path(config), args.overrides)
    model = build_model(cfg)
    state_dict, report = from_official(official_sd, cfg, model.state_dict())
    model.load_state_dict(state_dict, strict=True)
    names, names_from = class_names(meta, cfg.model.num_classes)
    save_checkpoint(args.output, {
        "model": state_dict, "config": to_dict(cfg), "num_classes": cfg.model.num_classes,
        "category_names": names, "epoch": 0, "iteration": 0, "metrics": {}, "best": None,
        "source": {"kind": "official", "file": str(Path(args.source).resolve()),
                   "mmdet_version": str(meta.get("mmdet_version", "")), "classes_from": names_from},
    })
    n = sum(t.numel() for t in state_dict.values() if t.is_floating_point())
    print(f"{args.source}: {len(official_sd)} official entries -> {len(state_dict)} project tensors "
          f"({n / 1e6:.2f} M values)")
    print("model read off the checkpoint: " + ", ".join(f"{k.split('.', 1)[1]}={v}" for k, v in inferred.items()))
    print(report.table())
    print(f"classes: {len(names)} ({names_from})")
    print(f"wrote {args.output} (strict load into the project model: ok)")
    return 0


def convert_out(args: argparse.Namespace) -> int:
    state = load_checkpoint(args.source)
    cfg = config_from_dict(state["config"])
    official_sd, report = to_official(state["model"], cfg)
    names = list(state.get("category_names") or [])
    meta = {"CLASSES": tuple(names), "converted_from": str(Path(args.source).resolve()),
            "epoch": int(state.get("epoch") or 0), "iter": int(state.get("iteration") or 0)}
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": official_sd, "meta": meta}, out)
    print(f"{args.source}: {len(state['model'])} project tensors -> {len(official_sd)} official entries")
    print(report.table())
    print(f"wrote {out} (official layout: state_dict + meta['CLASSES'], {len(names)} classes)")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    try:
        return convert_out(args) if args.to_official else convert_in(args)
    except (ConversionError, UnsafeCheckpointError, ConfigError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
