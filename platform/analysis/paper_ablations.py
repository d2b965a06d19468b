"""The Co-DETR paper's ablation tables (box AP on COCO val, in %), as config settings of this platform.

Zong, Song, Liu: "DETRs with Collaborative Hybrid Assignments Training", ICCV 2023 (arXiv 2211.12860);
the same numbers are in /work/shared/DESIGN.md. Each table names the row every other row is compared
with (``reference``) and the settings the paper held fixed while it varied one thing (``fixed``);
a swept key that neither names keeps the sweep's base-config value.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

HEADS = "model.aux_heads"
LAMBDA1 = "model.lambda1"
LAMBDA2 = "model.lambda2"


@dataclass(frozen=True)
class PaperRow:
    label: str                     # as the paper names the row
    setting: dict[str, Any]        # config key -> value
    ap: float                      # box AP (%)


@dataclass(frozen=True)
class PaperTable:
    name: str
    source: str                    # where in the paper, and its training schedule
    rows: tuple[PaperRow, ...]
    reference: str                 # label of the row the others are compared with
    fixed: dict[str, Any] = field(default_factory=dict)

    def reference_row(self) -> PaperRow:
        return next(r for r in self.rows if r.label == self.reference)


PAPER_TABLES = (
    PaperTable(
        "K auxiliary heads", "Deformable-DETR++ R50, 12 epochs (paper Table: number of auxiliary heads)",
        (PaperRow("K=0", {HEADS: []}, 47.1),
         PaperRow("K=1 (ATSS)", {HEADS: ["atss"]}, 48.7),
         PaperRow("K=2 (ATSS + Faster R-CNN)", {HEADS: ["atss", "faster_rcnn"]}, 49.5)),
        reference="K=0", fixed={LAMBDA1: 1.0, LAMBDA2: 2.0}),
    PaperTable(
        "lambda_1 (positive queries)", "36 epochs, lambda_2 = 2 (paper Table: lambda_1 and lambda_2)",
        (PaperRow("lambda_1=0.25", {LAMBDA1: 0.25}, 46.2),
         PaperRow("lambda_1=0.5", {LAMBDA1: 0.5}, 46.6),
         PaperRow("lambda_1=1", {LAMBDA1: 1.0}, 46.8),
         PaperRow("lambda_1=2", {LAMBDA1: 2.0}, 46.1)),
        reference="lambda_1=1", fixed={LAMBDA2: 2.0}),
    PaperTable(
        "lambda_2 (auxiliary heads)", "36 epochs, lambda_1 = 1 (paper Table: lambda_1 and lambda_2)",
        (PaperRow("lambda_2=1", {LAMBDA2: 1.0}, 46.1),
         PaperRow("lambda_2=2", {LAMBDA2: 2.0}, 46.8),
         PaperRow("lambda_2=3", {LAMBDA2: 3.0}, 46.5),
         PaperRow("lambda_2=4", {LAMBDA2: 4.0}, 46.3)),
        reference="lambda_2=2", fixed={LAMBDA1: 1.0}),
    PaperTable(
        "one auxiliary head alone", "36 epochs (paper Table: auxiliary head types)",
        (PaperRow("baseline (no auxiliary head)", {HEADS: []}, 43.3),
         PaperRow("RetinaNet", {HEADS: ["retinanet"]}, 46.1),
         PaperRow("Faster R-CNN", {HEADS: ["faster_rcnn"]}, 46.3),
         PaperRow("FCOS", {HEADS: ["fcos"]}, 46.5),
         PaperRow("ATSS", {HEADS: ["atss"]}, 46.8)),
        reference="baseline (no auxiliary head)", fixed={LAMBDA1: 1.0, LAMBDA2: 2.0}),
)
