"""COCO metrics of a checkpoint on a validation set, in this process (no Ray): ``python -m platform.evaluate``."""
from __future__ import annotations

import os

import torch
from torch.utils.data import DataLoader

from codetr.data import build_dataset, collate_fn
from codetr.engine import evaluate
from codetr.evaluation import build_evaluator
from platform.core.checkpoints import model_from_checkpoint


def evaluate_checkpoint(checkpoint: str, config: str | None = None, overrides: list[str] | None = None,
                        device: str = "cpu", batch_size: int | None = None) -> tuple[dict[str, float], dict]:
    """``(coco metrics, checkpoint dict)`` of ``checkpoint`` on the config's validation set."""
    torch.set_num_threads(os.cpu_count() or 1)
    model, cfg, state = model_from_checkpoint(checkpoint, config, overrides)
    model = model.for_inference().to(device)
    val_ds = build_dataset(cfg, "val")
    loader = DataLoader(val_ds, batch_size=batch_size or cfg.data.eval_batch_size, shuffle=False,
                        num_workers=cfg.data.num_workers, collate_fn=collate_fn)
    evaluator = build_evaluator(val_ds, cfg.data.lvis_max_dets)
    metrics, _ = evaluate(model, loader, evaluator, torch.device(device), amp=cfg.train.amp)
    return metrics, state
