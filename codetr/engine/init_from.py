"""Fine-tuning start: weights from a checkpoint into a freshly built model (``model.init_from``).

Weights only: no optimizer, scheduler or step, so the run starts its own schedule. When the
dataset's classes differ from the checkpoint's, the class-specific tensors (the query head's class
branches, the two-stage scorer, the ATSS / RetinaNet / FCOS classifiers, the RoI classifier and box
regressor) keep their fresh initialisation except for the rows of classes whose names match, which
are carried over (and the RoI background row, and the Deformable-DETR two-stage scorer's ranking
channel 0, which are class-agnostic; Co-DINO's scorer has real classes).

Two more differences are bridged, each reported:

- **Query count** (``model.num_queries``, e.g. the official 900 against 300 or 1500): the content
  queries ``query_head.query_embedding`` keep the checkpoint's first min(old, new) rows and the
  rest their fresh initialisation. With two-stage mixed selection, query i is the content of the
  i-th best proposal, so the first rows are the ones every query count uses. (The official code
  has no rule: mmcv's non-strict load skips a tensor of another shape, i.e. all queries start fresh.)
- **Feature levels** (``model.num_levels`` 4: strides 8-64, against 5: strides 4-64): levels are
  matched by stride. The level embeddings, every deformable attention's sampling offsets and
  attention weights (per head, level and point), the neck's per-level convolutions and the
  auxiliary heads' per-level scales of a stride both models have are copied; a stride the
  checkpoint lacks (4 when going from 4 to 5 levels) keeps its fresh initialisation, one the model
  lacks is dropped.

Everything else must have the same shape; tensors the checkpoint lacks (e.g. auxiliary heads under
a deployed model) keep their initialisation, tensors the model lacks are ignored. A file in the
official (mmdetection) layout is refused with the command that converts it. The returned report
lists each group.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from codetr.convert.safe_load import load_untrusted
from codetr.engine.checkpoint import load_checkpoint, resolve_checkpoint_file
from codetr.errors import CheckpointError


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
    remapped: dict[str, str] = field(default_factory=dict)            # tensor -> what was copied (queries, levels)
    queries: list[int] = field(default_factory=list)                   # [checkpoint's, model's] when they differ
    levels: list[int] = field(default_factory=list)                    # [checkpoint's, model's] feature levels

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        parts = [f"{len(self.loaded)} tensors loaded"]
        if self.carried_over and self.matched_classes:
            parts.append(f"{len(self.carried_over)} class-specific tensors carried over for "
                         f"{len(self.matched_classes)} matching classes")
        elif self.carried_over:
            parts.append(f"{len(self.carried_over)} class-specific tensors keep only their class-agnostic rows "
                         f"(no class name matches)")
        if self.reinitialised:
            parts.append(f"{len(self.reinitialised)} re-initialised")
        if self.kept_init:
            parts.append(f"{len(self.kept_init)} not in the checkpoint (initialised)")
        if self.ignored:
            parts.append(f"{len(self.ignored)} in the checkpoint but not in this model (ignored)")
        if self.queries:
            old, new = self.queries
            parts.append(f"queries {old} -> {new} (the first {min(old, new)} copied{', the rest fresh' if new > old else ''})")
        if self.levels:
            parts.append(f"feature levels {self.levels[0]} -> {self.levels[1]} (matched by stride)")
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
    (r"^query_head\.label_embedding\.weight$", "plain"),       # Co-DINO's denoising label embedding
)

QUERY_TENSOR = "query_head.query_embedding.weight"     # [num_queries, embed_dims]
LEVEL_EMBEDS = "query_head.level_embeds"              # [num_levels, embed_dims]
# tensors whose rows are laid out [num_heads, num_levels, ...] (one deformable attention each)
_LEVEL_ROWS = re.compile(r"^(?P<module>.+)\.(sampling_offsets|attention_weights)\.(weight|bias)$")
# tensors named by a level index: the neck's convolutions per backbone level, the heads' per-level scales
_LEVEL_NAMES = re.compile(r"^(?P<head>neck\.lateral(?:_norm)?\.|aux_heads\.\d+\.scales\.)(?P<level>\d+)(?P<tail>\..+)$")


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


def _level_source_name(name: str, shift: int) -> str | None:
    """The checkpoint's name of a level-indexed tensor when the model has ``shift`` more levels than the
    checkpoint (levels aligned at the coarsest stride); "" for a level the checkpoint lacks, None for
    any other tensor."""
    match = _LEVEL_NAMES.match(name)
    if match is None:
        return None
    level = int(match["level"]) - shift
    return f"{match['head']}{level}{match['tail']}" if level >= 0 else ""


def _copy_levels(fresh: Tensor, old: Tensor, heads: int, levels: int, shift: int) -> Tensor:
    """A [heads * levels * per level, (embed_dims)] tensor (a deformable attention's offsets or weights,
    the level embeddings with ``heads`` 1): the levels both models have copied from ``old`` (``shift`` =
    new levels - old levels, aligned at the coarsest), the rest as in ``fresh``."""
    new = fresh.detach().clone().view(heads, levels, -1, *fresh.shape[1:])      # [heads, levels, per level, ...]
    old_levels = levels - shift
    src = old.reshape(heads, old_levels, -1, *old.shape[1:])
    first_new, first_old = max(shift, 0), max(-shift, 0)
    count = min(levels - first_new, old_levels - first_old)
    new[:, first_new:first_new + count] = src[:, first_old:first_old + count].to(new.dtype)
    return new.view_as(fresh)


def _is_official(state: object) -> bool:
    return isinstance(state, dict) and isinstance(state.get("state_dict"), dict) and "model" not in state


def apply_init_from(model: nn.Module, path: str | Path, category_names: list[str]) -> InitFromReport:
    """Load ``path``'s weights into ``model`` for a dataset with ``category_names`` (see the module doc)."""
    try:
        state = load_checkpoint(path)
    except CheckpointError as e:
        if _is_official(_peek(path)):
            raise ValueError(f"model.init_from {path}: an official (mmdetection) checkpoint; convert it first: "
                             f"python -m platform.convert_checkpoint {path} -o checkpoints/converted.pt "
                             f"(then model.init_from=checkpoints/converted.pt)") from None
        raise e
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
    dino = getattr(getattr(model, "cfg", None), "query_head", None) == "dino"
    shift = 0
    if LEVEL_EMBEDS in src and LEVEL_EMBEDS in dst and src[LEVEL_EMBEDS].shape[1:] == dst[LEVEL_EMBEDS].shape[1:]:
        shift = dst[LEVEL_EMBEDS].shape[0] - src[LEVEL_EMBEDS].shape[0]
        if shift:
            report.levels = [src[LEVEL_EMBEDS].shape[0], dst[LEVEL_EMBEDS].shape[0]]
    out: dict[str, Tensor] = {}
    used: set[str] = set()
    bad_shapes = []
    for name, fresh in dst.items():
        source_name = _level_source_name(name, shift) if shift else None
        if source_name == "":           # a level the checkpoint does not have
            report.kept_init.append(name)
            continue
        source_name = source_name or name
        if source_name not in src:
            report.kept_init.append(name)
            continue
        used.add(source_name)
        old = src[source_name]
        if source_name != name:
            report.remapped[name] = f"from {source_name} (the same stride)"
        kind = class_layout(name)
        if kind == "scorer" and dino:   # Co-DINO's two-stage scorer has real classes: no ranking channel
            kind = "plain"
        level_rows = _LEVEL_ROWS.match(name)
        if shift and (name == LEVEL_EMBEDS or level_rows):
            heads, levels = 1, fresh.shape[0]
            if level_rows:
                attention = model.get_submodule(level_rows["module"])
                heads, levels = attention.num_heads, attention.num_levels
            # the same heads and points per level: only the level count differs
            if old.shape[1:] == fresh.shape[1:] and old.shape[0] * levels == fresh.shape[0] * (levels - shift):
                out[name] = _copy_levels(fresh, old, heads, levels, shift)
                report.remapped[name] = f"levels matched by stride ({report.levels[0]} -> {report.levels[1]})"
                continue
        if name == QUERY_TENSOR and old.shape[1:] == fresh.shape[1:] and old.shape[0] != fresh.shape[0]:
            new = fresh.detach().clone()
            count = min(old.shape[0], new.shape[0])
            new[:count] = old[:count].to(new.dtype)
            out[name] = new
            report.queries = [old.shape[0], new.shape[0]]
            report.remapped[name] = f"first {count} of {old.shape[0]} queries copied" + (
                f", {new.shape[0] - count} fresh" if new.shape[0] > count else "")
            continue
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
    report.ignored = [n for n in src if n not in used]
    with torch.no_grad():
        for name, tensor in out.items():
            dst[name].copy_(tensor)
    return report


def _peek(path: str | Path) -> object:
    """The file's top level when it loads as plain data (to recognise an official checkpoint), else None."""
    try:
        return load_untrusted(resolve_checkpoint_file(path))
    except Exception:   # not readable as plain data: load_checkpoint's error says why
        return None
