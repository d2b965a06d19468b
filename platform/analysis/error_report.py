"""A checkpoint's error analysis on its validation set (``python -m platform.analyze``): the query head's
COCO metrics with the error breakdown, PR curves, confusion matrix and AP by size / class, written as
figures and a JSON file, and optionally logged into an MLflow run."""
from __future__ import annotations

import functools
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from mlflow.tracking import MlflowClient
from torch.utils.data import DataLoader

from codetr.data import build_dataset, collate_fn
from codetr.engine import evaluate
from codetr.evaluation import build_evaluator
from codetr.evaluation.suite import EvaluationSuite
from platform.core.checkpoints import model_from_checkpoint
from platform.core.diagnostic_plots import error_analysis_figures
from platform.core.visualize import close_figure
from platform.tracking import mlflow_runs

CHECKPOINT_ARTIFACTS = ("checkpoints/best.pt", "checkpoints/last.pt")


@dataclass
class ErrorReport:
    metrics: dict[str, float]       # coco/* and errors/*
    analysis: object                # codetr.evaluation.diagnostics.errors.ErrorAnalysis
    state: dict                     # the checkpoint
    files: list[Path]               # what was written into the output folder


def resolve_checkpoint(source: str, tracking_uri: str | None = None) -> tuple[str, str | None]:
    """``(checkpoint path, MLflow run id or None)``: a path that exists is a checkpoint; anything else is an
    MLflow run id whose logged ``checkpoints/best.pt`` (else ``last.pt``) is downloaded."""
    if Path(source).exists():
        return source, None
    client = MlflowClient(mlflow_runs.resolve_tracking_uri(tracking_uri))
    try:
        client.get_run(source)
    except Exception as e:  # noqa: BLE001 - MLflow raises its own errors for an unknown id
        raise ValueError(f"{source!r} is neither a checkpoint path nor an MLflow run id ({e})") from None
    logged = {a.path for a in client.list_artifacts(source, "checkpoints")}
    for path in CHECKPOINT_ARTIFACTS:
        if path in logged:
            return client.download_artifacts(source, path, tempfile.mkdtemp(prefix="codetr_analyze_")), source
    raise ValueError(f"MLflow run {source} has no logged checkpoint ({' or '.join(CHECKPOINT_ARTIFACTS)}); "
                     "was it trained with platform.log_checkpoints=false?")


def error_report(checkpoint: str, out_dir: str | Path, overrides: list[str] | None = None, device: str = "cpu",
                 batch_size: int | None = None) -> ErrorReport:
    """Evaluate ``checkpoint``'s query head on its config's validation set and write the error analysis."""
    torch.set_num_threads(os.cpu_count() or 1)
    model, cfg, state = model_from_checkpoint(checkpoint, None, overrides)
    model = model.for_inference().to(device)
    val_ds = build_dataset(cfg, "val")
    loader = DataLoader(val_ds, batch_size=batch_size or cfg.data.eval_batch_size, shuffle=False,
                        num_workers=cfg.data.num_workers, collate_fn=collate_fn)
    suite = EvaluationSuite(functools.partial(build_evaluator, val_ds, cfg.data.lvis_max_dets), error_analysis=True)
    suite.final = True
    metrics, _ = evaluate(model, loader, suite, torch.device(device), amp=cfg.train.amp, tta=cfg.eval)
    analysis = suite.details["errors"]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for name, fig in error_analysis_figures(analysis, metrics, title=Path(str(checkpoint)).name).items():
        try:
            fig.savefig(out / name, dpi=110)
            files.append(out / name)
        finally:
            close_figure(fig)
    summary = {"checkpoint": str(checkpoint), "iteration": int(state.get("iteration", 0)), "metrics": metrics,
               "confusion": analysis.confusion.tolist(), "classes": analysis.class_names}
    (out / "error_analysis.json").write_text(json.dumps(summary, indent=1))
    files.append(out / "error_analysis.json")
    return ErrorReport(metrics, analysis, state, files)


def log_report(report: ErrorReport, run_id: str, tracking_uri: str | None = None) -> None:
    """The report's ``errors/*`` metrics (step = the checkpoint's iteration) and files into run ``run_id``."""
    logger = mlflow_runs.RunLogger(mlflow_runs.resolve_tracking_uri(tracking_uri), run_id)
    logger.log_metrics({k: v for k, v in report.metrics.items() if k.startswith("errors/")},
                       step=int(report.state.get("iteration", 0)))
    for path in report.files:
        logger.client.log_artifact(run_id, str(path), "errors")
