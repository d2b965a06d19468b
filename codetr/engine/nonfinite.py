"""What a training step does when its loss or gradient is not finite (``train.on_nonfinite``).

The check sits between the backward pass (with gradient clipping) and ``optimizer.step()``, so a
NaN / inf never reaches the parameters:

- ``error`` (default): raise :class:`codetr.errors.NonFiniteLossError` naming the iteration, the
  non-finite loss terms and the batch's image ids and file names. Nothing is written after the
  last good checkpoint, so the run can be resumed from it (e.g. with a lower ``train.lr``).
- ``skip``: drop the step (no parameter update, no loss logged; the lr schedule moves on) and
  count it; more than ``train.max_skipped_steps`` skipped steps in a run raise the error above.

Under torch.distributed every rank takes the same decision: the flag is all-reduced (a rank whose
own loss is finite still skips when another rank's is not, or DDP replicas would drift apart).

Non-finite *predictions* cannot be skipped: they mean the parameters already diverged, and they
surface in the forward pass (the Hungarian matcher refuses a non-finite cost matrix with
:class:`codetr.errors.NonFiniteCostError`); the loop turns that into the error above.
"""
from __future__ import annotations

import math
from typing import Callable, Literal

import torch
import torch.distributed as dist
from torch import Tensor

from codetr.errors import NonFiniteLossError

DIVERGED_HINT = "the model diverged: lower train.lr or keep train.clip_grad_norm > 0, then resume"


def batch_identity(targets: list[dict], image_names: Callable[[int], str] | None) -> tuple[list[int], list[str]]:
    """Image ids of a batch's targets and, when ``image_names`` maps ids to files, their file names."""
    ids = []
    for t in targets:
        value = t.get("image_id", -1)
        ids.append(int(value.item()) if isinstance(value, Tensor) else int(value))
    names = []
    if image_names is not None:
        for i in ids:
            try:
                names.append(str(image_names(i)))
            except (KeyError, IndexError):
                names.append(f"<image id {i}>")
    return ids, names


def all_ranks_finite(values: list[Tensor]) -> bool:
    """True when every value is finite on this rank and, under torch.distributed, on every rank.

    One host sync per call (and one tiny all-reduce when distributed)."""
    flag = torch.isfinite(torch.stack([v.detach().float().reshape(()) for v in values])).all().to(torch.int32)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


class NonFiniteGuard:
    """Decides whether a step's update is applied; raises or counts skips (see the module docstring).

    Args:
        mode: ``"error"`` or ``"skip"``.
        max_skipped: the most steps ``skip`` may drop in a run (the count survives resumes through
            :attr:`skipped`, saved in checkpoints).
        image_names: image id -> file name, for the error message.
    """

    def __init__(self, mode: Literal["error", "skip"] = "error", max_skipped: int = 10,
                 image_names: Callable[[int], str] | None = None, skipped: int = 0):
        if mode not in ("error", "skip"):
            raise ValueError(f"on_nonfinite must be 'error' or 'skip', got {mode!r}")
        self.mode, self.max_skipped, self.image_names = mode, max_skipped, image_names
        self.skipped = skipped

    def error(self, iteration: int, terms: dict[str, float], targets: list[dict], what: str = "loss",
              hint: str = "") -> NonFiniteLossError:
        ids, names = batch_identity(targets, self.image_names)
        return NonFiniteLossError(iteration, terms, ids, names, what=what, hint=hint)

    def allow_step(self, iteration: int, loss: Tensor, weighted: dict[str, Tensor], grad_norm: Tensor,
                   targets: list[dict]) -> bool:
        """True: apply the update. False: skip it (mode ``skip``). Raises NonFiniteLossError otherwise.

        ``iteration`` is the 1-based number of the step being taken.
        """
        if all_ranks_finite([loss, grad_norm]):
            return True
        terms = {name: float(v.detach()) for name, v in weighted.items() if not math.isfinite(float(v.detach()))}
        what = "loss" if terms or not math.isfinite(float(loss)) else "gradient"
        if what == "gradient":
            terms = {"grad_norm": float(grad_norm)}
        elif not terms:   # another rank's loss: this rank's terms are finite, say so
            terms = {"loss (on another rank)": float(loss)}
        if self.mode == "skip" and self.skipped < self.max_skipped:
            self.skipped += 1
            return False
        hint = (f"{self.skipped} step(s) already skipped, train.max_skipped_steps={self.max_skipped}"
                if self.mode == "skip" else "train.on_nonfinite=skip drops such steps instead")
        raise self.error(iteration, terms, targets, what=what, hint=hint)
