"""One evaluation pass, everything it measures: the query head's metrics, each auxiliary branch's own
metrics and the diagnostics (``eval.*`` of the config).

    suite = build_suite(val_set, cfg, aux_keys, history)    # history: MatchHistory kept across evaluations
    for images, targets in loader:                           # codetr.engine.evaluate does this
        suite.update_outputs(model.predict_all(images, suite.branches), targets)
    metrics = suite.summarize()     # coco/* (query head), branch/<head>/coco/*, diag/*

Branch metrics are the evaluator's headline statistics (``coco/AP`` ... ``coco/ARl``, or ``lvis/*``)
under ``branch/<head key>/``; per-class APs are kept for the query head only. The suite has the
evaluator interface (``update``, ``synchronize``, ``summarize``, ``primary_metric``, ``summary_text``),
so a caller that only has ``model(images)`` still gets the query head's metrics.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

from codetr.evaluation.coco_evaluator import CocoEvaluator
from codetr.evaluation.diagnostics import EncoderDiscriminability, MatchHistory, MatchingInstability
from codetr.evaluation.diagnostics.errors import analyze_errors
from codetr.evaluation.lvis_evaluator import build_evaluator
from codetr.models.matcher import hungarian_match


def _to_cpu(detections: list[dict]) -> list[dict]:
    return [{k: v.float().cpu() if v.is_floating_point() else v.cpu() for k, v in d.items()} for d in detections]


class EvaluationSuite:
    """The query head's evaluator, one evaluator per auxiliary branch, and the diagnostics."""

    def __init__(self, make_evaluator: Callable[[], CocoEvaluator], branches: Sequence[str] = (),
                 diagnostics: Sequence[Any] = (), error_analysis: bool = False) -> None:
        self.query = make_evaluator()
        # the error analysis of the query head's detections (errors/*): set ``final`` for the last evaluation
        self.error_analysis = error_analysis
        self.final = False
        self.branch_evaluators = {name: make_evaluator() for name in branches}
        self.diagnostics = list(diagnostics)
        self.primary_metric = getattr(self.query, "primary_metric", "coco/AP")
        self.details: dict[str, Any] = {}   # rank 0 after summarize: data for figures (e.g. the IoF-IoB curve)

    @property
    def branches(self) -> list[str]:
        return list(self.branch_evaluators)

    @property
    def wants_outputs(self) -> bool:
        """True when the suite needs :meth:`CoDETR.predict_all` (branches or diagnostics), not just detections."""
        return bool(self.branch_evaluators or self.diagnostics)

    @property
    def summary_text(self) -> str:
        return str(getattr(self.query, "summary_text", "") or "")

    def update(self, predictions: Sequence[dict], targets: Sequence[dict]) -> None:
        """The query head's detections only (a model without ``predict_all``)."""
        self.query.update(predictions, targets)

    def update_outputs(self, outputs, targets: Sequence[dict]) -> list[dict]:
        """One batch of :class:`codetr.models.detector.EvalOutputs`; returns the query head's detections (CPU)."""
        query = _to_cpu(outputs.detections["query"])
        self.query.update(query, targets)
        for name, evaluator in self.branch_evaluators.items():
            evaluator.update(_to_cpu(outputs.detections[name]), targets)
        for diagnostic in self.diagnostics:
            diagnostic.update(outputs, targets)
        return query

    def synchronize(self) -> None:
        self.query.synchronize()
        for evaluator in self.branch_evaluators.values():
            evaluator.synchronize()
        for diagnostic in self.diagnostics:
            diagnostic.synchronize()

    def summarize(self) -> dict[str, float]:
        """Rank 0: every metric (``{}`` on other ranks, after a synchronize every rank takes part in)."""
        self.synchronize()
        metrics = dict(self.query.summarize())
        if not metrics:     # not rank 0
            return {}
        for name, evaluator in self.branch_evaluators.items():
            for key, value in evaluator.summarize().items():
                if key.count("/") == 1:    # headline statistics, not per-class APs
                    metrics[f"branch/{name}/{key}"] = value
        for diagnostic in self.diagnostics:
            metrics.update(diagnostic.summarize())
            if isinstance(diagnostic, EncoderDiscriminability) and diagnostic.curve is not None:
                self.details["encoder_iof_iob"] = diagnostic.curve
        # COCO protocol only (LVIS's federated annotation would count unverified classes as mistakes)
        if self.error_analysis and self.final and self.primary_metric == "coco/AP" and self.query.image_ids:
            analysis = analyze_errors(self.query.coco, self.query.results(), self.query.image_ids)
            metrics.update(analysis.metrics())
            self.details["errors"] = analysis
        return metrics


def subset_image_ids(dataset, count: int) -> list[int]:
    """The diagnostics' fixed subset: the first ``count`` image ids of the dataset (sorted)."""
    ids = getattr(dataset, "image_ids", None)
    if ids is None:
        ids = sorted(dataset.coco.imgs)
    return sorted(int(i) for i in ids)[:count]


def build_suite(dataset, cfg, aux_keys: Sequence[str], history: MatchHistory | None = None,
                branches: Sequence[str] | None = None) -> EvaluationSuite:
    """The suite of a run's config: ``eval.branches`` (all of ``aux_keys``, or ``branches`` when given),
    ``eval.diagnostics`` on the first ``eval.diag_images`` images; ``history`` carries the matchings from
    one evaluation to the next (without one, no instability is measured)."""
    make = functools.partial(build_evaluator, dataset, cfg.data.lvis_max_dets)
    if branches is None:
        branches = list(aux_keys) if cfg.eval.branches else []
    diagnostics: list[Any] = []
    if cfg.eval.diagnostics:
        ids = subset_image_ids(dataset, cfg.eval.diag_images)
        diagnostics.append(EncoderDiscriminability(ids))
        if history is not None:
            m, loss = cfg.model.match, cfg.model.loss
            matcher = functools.partial(hungarian_match, cls_weight=m.cls, bbox_weight=m.bbox, giou_weight=m.giou,
                                        alpha=loss.focal_alpha, gamma=loss.focal_gamma)
            diagnostics.append(MatchingInstability(ids, matcher, history))
    return EvaluationSuite(make, branches, diagnostics, error_analysis=cfg.eval.error_analysis)
