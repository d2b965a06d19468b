"""Optimizer and learning-rate schedule of the Co-DETR recipe.

AdamW with two parameter groups: parameters whose name contains one of
``train.lr_mult_keys`` (official: backbone, sampling_offsets, reference_points) train at
``lr x train.lr_mult_value``; the rest at ``lr``. The schedule is per iteration: a linear
warm-up from ``warmup_ratio x lr`` over ``warmup_iters``, then ``lr x gamma^k`` where k counts
the epochs of ``train.lr_steps`` already reached.
"""
from __future__ import annotations

import bisect

import torch
from torch import nn

from codetr.config.run_schema import TrainConfig


def build_param_groups(model: nn.Module, lr: float, weight_decay: float, mult_keys: list[str],
                       mult_value: float) -> list[dict]:
    """Split the trainable parameters of ``model`` into the base group and the lr-multiplied group.

    Returns AdamW parameter groups (empty groups dropped), each with a ``name``
    ("base" or "lr_mult") used for logging their learning rates.
    """
    base, mult = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (mult if any(key in name for key in mult_keys) else base).append(param)
    groups = [
        {"name": "base", "params": base, "lr": lr, "weight_decay": weight_decay},
        {"name": "lr_mult", "params": mult, "lr": lr * mult_value, "weight_decay": weight_decay},
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over :func:`build_param_groups` of ``model`` with the settings of ``cfg``."""
    groups = build_param_groups(model, cfg.lr, cfg.weight_decay, cfg.lr_mult_keys, cfg.lr_mult_value)
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_factor(iteration: int, *, warmup_iters: int, warmup_ratio: float, step_iters: list[int],
              gamma: float) -> float:
    """Multiplier of the base lr at ``iteration`` (0-based): linear warm-up, then step decay.

    ``step_iters`` are sorted iteration indices at which the lr is multiplied by ``gamma``.
    """
    factor = gamma ** bisect.bisect_right(step_iters, iteration)
    if warmup_iters > 0 and iteration < warmup_iters:
        alpha = iteration / warmup_iters
        factor *= warmup_ratio + (1.0 - warmup_ratio) * alpha
    return factor


def build_lr_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig,
                       iters_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-iteration LambdaLR: warm-up over ``cfg.warmup_iters``, x ``cfg.lr_gamma`` at each epoch of ``cfg.lr_steps``.

    Call ``scheduler.step()`` once after every optimizer step.
    """
    step_iters = sorted(epoch * iters_per_epoch for epoch in cfg.lr_steps)

    def factor(iteration: int) -> float:
        return lr_factor(iteration, warmup_iters=cfg.warmup_iters, warmup_ratio=cfg.warmup_ratio,
                         step_iters=step_iters, gamma=cfg.lr_gamma)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
