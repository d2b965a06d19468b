"""Fine-tuning start: weights from a checkpoint into a freshly built model (``model.init_from``).

Weights only: no optimizer, scheduler or step, so the run starts its own schedule. When the
dataset's classes differ from the checkpoint's, the class-specific tensors (the query head's class
branches, the two-stage scorer, the ATSS / RetinaNet / FCOS classifiers, the RoI classifier and box
regressor) keep their fresh initialisation except for the rows of classes whose names match, which
are carried over (and the RoI background row, and the two-stage scorer's ranking channel 0, which
are class-agnostic). Everything else must have the same shape; tensors the checkpoint lacks (e.g.
auxiliary heads under a deployed model) keep their initialisation, tensors the model lacks are
ignored. The returned report lists each group.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from codetr.engine.checkpoint import load_checkpoint


@dataclass
class InitFromReport:
    source: str
    classes_same: bool
    loaded: list[str] = field(default_factory=list)
    carried_over: dict[str, list[int]] = field(default_factory=dict)   # tensor -> new rows filled from the checkpoint
    reinitialised: list[str] = field(default_factory=list)             # class-specific, no matching class
    kept_init: list[str] = field(default_factory=list)                 # not in the checkpoint
    ignored: list[str] = field(default_factory=list)                   # in the checkpoint, not in the model
    matched_classes: list[str] = field(default_factory=list)
    new_classes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        parts = [f"{len(self.loaded)} tensors loaded"]
        if self.carried_over:
            parts.append(f"{len(self.carried_over)} class-specific tensors carried over for "
                         f"{len(self.matched_classes)} matching classes")
        if self.reinitialised:
            parts.append(f"{len(self.reinitialised)} re-initialised")
        if self.kept_init:
            parts.append(f"{len(self.kept_init)} not in the checkpoint (initialised)")
        if self.ignored:
            parts.append(f"{len(self.ignored)} in the checkpoint but not in this model (ignored)")
        return f"init_from {self.source}: " + ", ".join(parts)


# class-specific tensors: name pattern -> how their rows map to classes
_CLASS_TENSORS = (
    (r"^query_head\.cls_branches\.\d+\.(weight|bias)$", "plain"),
    (r"^query_head\.enc_cls_branch\.(weight|bias)$", "scorer"),
    (r"^aux_heads\.\d+\.atss_cls\.(weight|bias)$", "plain"),
    (r"^aux_heads\.\d+\.conv_cls\.(weight|bias)$", "plain"),
    (r"^aux_heads\.\d+\.retina_cls\.(weight|bias)$", "anchor_major"),
    (r"^aux_heads\.\d+\.roi_head\.fc_cls\.(weight|bias)$", "with_background"),
    (r"^aux_heads\.\d+\.roi_head\.fc_reg\.(weight|bias)$", "four_per_class"),
)


def class_layout(name: str) -> str | None:
    """How a class-specific tensor's rows map to classes, or None for any other tensor."""
    return next((kind for pattern, kind in _CLASS_TENSORS if re.match(pattern, name)), None)


def _rows(kind: str, cls: int, num_classes: int, num_rows: int) -> list[int]:
    """Rows of class ``cls`` in a tensor of ``num_rows`` rows laid out as ``kind``."""
    if kind in ("plain", "scorer", "with_background"):
        return [cls]
    if kind == "four_per_class":
        return list(range(4 * cls, 4 * cls + 4))
    anchors = num_rows // num_classes   # anchor_major: row a * num_classes + k
    return [a * num_classes + cls for a in range(anchors)]


def _carry(kind: str, new: Tensor, old: Tensor, pairs: list[tuple[int, int]], n_new: int, n_old: int) -> list[int]:
    """Copy the rows of each (new class, old class) pair into ``new`` (in place); returns the rows filled."""
    filled = []
    for k_new, k_old in pairs:
        rows_new, rows_old = _rows(kind, k_new, n_new, new.shape[0]), _rows(kind, k_old, n_old, old.shape[0])
        new[rows_new] = old[rows_old]
        filled += rows_new
    if kind == "with_background":   # the last row is background in both
        new[-1] = old[-1]
        filled.append(new.shape[0] - 1)
    if kind == "scorer" and 0 not in filled:   # channel 0 ranks proposals class-agnostically
        new[0] = old[0]
        filled.append(0)
    return sorted(filled)


def apply_init_from(model: nn.Module, path: str | Path, category_names: list[str]) -> InitFromReport:
    """Load ``path``'s weights into ``model`` for a dataset with ``category_names`` (see the module doc)."""
    state = load_checkpoint(path)
    src: dict[str, Tensor] = state["model"]
    old_names = list(state.get("category_names") or [])
    n_old = int(state.get("num_classes") or len(old_names) or 0)
    new_names = list(category_names)
    n_new = len(new_names)
    if not old_names and n_old == n_new:
        same = True
    else:
        same = old_names == new_names
    pairs = [] if same else [(i, old_names.index(n)) for i, n in enumerate(new_names) if n in old_names]
    report = InitFromReport(str(path), same, matched_classes=[new_names[i] for i, _ in pairs] if not same else new_names,
                            new_classes=[] if same else [n for n in new_names if n not in old_names])
    dst = model.state_dict()
    out: dict[str, Tensor] = {}
    bad_shapes = []
    for name, fresh in dst.items():
        if name not in src:
            report.kept_init.append(name)
            continue
        old = src[name]
        kind = class_layout(name)
        if kind is not None and not same:
            new = fresh.detach().clone()
            if n_old == 0 or old.shape[1:] != new.shape[1:]:
                bad_shapes.append(f"{name} {list(old.shape)} vs {list(new.shape)}")
                continue
            filled = _carry(kind, new, old.to(new.dtype), pairs, n_new, n_old)
            out[name] = new
            if filled:
                report.carried_over[name] = filled
            else:
                report.reinitialised.append(name)
            continue
        if old.shape != fresh.shape:
            bad_shapes.append(f"{name} {list(old.shape)} vs {list(fresh.shape)}")
            continue
        out[name] = old.to(fresh.dtype)
        report.loaded.append(name)
    if bad_shapes:
        raise ValueError(f"model.init_from {path}: {len(bad_shapes)} tensors do not fit this model "
                         f"(checkpoint vs model): {bad_shapes[:6]}. Build the model with the checkpoint's "
                         f"dimensions (its config is stored in the checkpoint).")
    report.ignored = [n for n in src if n not in dst]
    with torch.no_grad():
        for name, tensor in out.items():
            dst[name].copy_(tensor)
    return report
