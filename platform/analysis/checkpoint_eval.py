"""COCO metrics of a checkpoint on a validation set, in this process (no Ray): ``python -m platform.evaluate``
(the query head's, and with ``branches`` those of auxiliary heads evaluated on their own)."""
from __future__ import annotations

import functools
import os

import torch
from torch.utils.data import DataLoader

from codetr.data import build_dataset, collate_fn
from codetr.engine import evaluate
from codetr.evaluation import build_evaluator
from codetr.evaluation.suite import EvaluationSuite
from platform.core.checkpoints import model_from_checkpoint


def evaluate_checkpoint(checkpoint: str, config: str | None = None, overrides: list[str] | None = None,
                        device: str = "cpu", batch_size: int | None = None,
                        branches: list[str] | None = None) -> tuple[dict[str, float], dict]:
    """``(coco metrics, checkpoint dict)`` of ``checkpoint`` on the config's validation set.

    ``branches``: auxiliary head keys (``atss``, ``faster_rcnn``, ``atss_2``, ...; ``all``: every one)
    evaluated on their own in the same pass, as ``branch/<key>/coco/*``; an unknown key is a ValueError
    naming the checkpoint's heads."""
    torch.set_num_threads(os.cpu_count() or 1)
    model, cfg, state = model_from_checkpoint(checkpoint, config, overrides)
    if branches:
        if branches == ["all"]:
            branches = list(model.aux_keys)
        unknown = [b for b in branches if b not in model.aux_keys]
        if unknown:
            raise ValueError(f"--branch {', '.join(unknown)}: this checkpoint's auxiliary heads are "
                             f"{', '.join(model.aux_keys) or 'none'} (or all)")
        model = model.eval().to(device)
    else:
        model = model.for_inference().to(device)
    val_ds = build_dataset(cfg, "val")
    loader = DataLoader(val_ds, batch_size=batch_size or cfg.data.eval_batch_size, shuffle=False,
                        num_workers=cfg.data.num_workers, collate_fn=collate_fn)
    make = functools.partial(build_evaluator, val_ds, cfg.data.lvis_max_dets)
    evaluator = EvaluationSuite(make, branches) if branches else make()
    metrics, _ = evaluate(model, loader, evaluator, torch.device(device), amp=cfg.train.amp, tta=cfg.eval)
    return metrics, state
