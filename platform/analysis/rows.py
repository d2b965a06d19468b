"""The trials of a sweep as rows: read back from its MLflow child runs, with the formatting that every
table and plot of :mod:`platform.analysis` shares."""
from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from typing import Any

from mlflow.tracking import MlflowClient

from platform.tracking.sweep_runs import (CONFIG_ID_TAG, CONFIG_LABEL_TAG, END_TAG, SEED_TAG, TRIAL_ID_TAG, VALUES_TAG,
                                          children)

CURVE_METRIC = "coco/AP"



def is_diagnostic_column(key: str) -> bool:
    """Final metrics a sweep's table shows beside its metric: each branch's AP and the diagnostics
    (docs/diagnostics.md)."""
    return (key.startswith("branch/") and key.endswith("/AP")) or key.startswith("diag/")


@dataclass
class TrialRow:
    trial: str                     # the child run's name (shows the hyper-parameters)
    run_id: str
    status: str                    # MLflow status of the child run
    end: str                       # finished, max_epochs, stopped_early, failed, interrupted, running
    values: dict[str, Any]         # swept key -> value
    metric: float | None           # last reported value of the sweep's metric
    best: float | None             # best value over the trial's evaluations
    epochs: int | None
    iterations: int | None
    extra: dict[str, float]        # a few more final metrics (coco/AP50, train/loss, branch/*/coco/AP, diag/*)
    curve: list[tuple[int, float]]  # (epoch, coco/AP)
    history: list[tuple[int, float]] = field(default_factory=list)   # (epoch, metric)
    config_id: str = ""            # the configuration (its repeats share it); "" for runs without the tag
    seed: int | None = None        # train.seed of the trial
    config_label: str = ""         # the configuration's swept values, without the seed

    @property
    def ran_to_the_end(self) -> bool:
        return self.end in ("finished", "max_epochs")

    def metric_at(self, epoch: int) -> float | None:
        return dict(self.history).get(epoch)


def format_value(value: Any) -> str:
    if value is None:   # a swept key that had no effect on this trial (e.g. lambda1 with K = 0)
        return "-"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(str(v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def value_order(label: str) -> tuple:
    """Sort key of formatted swept values: ``[]`` (K = 0) first, head lists by length, ``-`` last."""
    return (label == "-", label.count(",") + (label not in ("[]", "")), label)


def _epoch_curve(client: MlflowClient, run_id: str, key: str, epochs: dict[int, int]) -> list[tuple[int, float]]:
    """``[(epoch, value)]`` of ``key``: steps are iterations, mapped to epochs by ``epochs``
    (step -> train/epochs_done)."""
    values = client.get_metric_history(run_id, key)
    out = {}
    for m in sorted(values, key=lambda m: (m.step, m.timestamp)):
        out[epochs.get(m.step, m.step)] = m.value
    return sorted(out.items())


def collect_rows(tracking_uri: str, experiment_id: str, parent_run_id: str, keys: list[str], metric: str,
                 mode: str, tune_results: dict[str, list[dict]] | None = None) -> list[TrialRow]:
    """One row per child run of the parent, sorted by ``metric`` (best first, missing values last).

    The metric comes from the child run; one that only Tune saw (e.g. ``iteration``) comes from
    ``tune_results`` (trial id -> the trial's Tune results, oldest first).
    """
    client = MlflowClient(tracking_uri)
    rows = []
    for run in children(client, experiment_id, parent_run_id):
        m = dict(run.data.metrics)
        values = json.loads(run.data.tags.get(VALUES_TAG, "{}"))
        done = client.get_metric_history(run.info.run_id, "train/epochs_done")
        epochs = {d.step: int(d.value) for d in done}
        in_mlflow = metric in m
        if in_mlflow:
            by_epoch = _epoch_curve(client, run.info.run_id, metric, epochs)
        else:
            seen = (tune_results or {}).get(run.data.tags.get(TRIAL_ID_TAG, ""), [])
            by_epoch = [(int(r.get("epoch", i + 1)), r[metric]) for i, r in enumerate(seen) if metric in r]
            if by_epoch:
                m[metric] = by_epoch[-1][1]
        history = [v for _, v in by_epoch]
        best = (max(history) if mode == "max" else min(history)) if history else None
        if metric == CURVE_METRIC and in_mlflow:   # the same history: read it once
            curve = by_epoch
        else:
            curve = _epoch_curve(client, run.info.run_id, CURVE_METRIC, epochs) if CURVE_METRIC in m else []
        tags = run.data.tags
        seed = tags.get(SEED_TAG, run.data.params.get("train.seed"))
        rows.append(TrialRow(
            trial=run.info.run_name, run_id=run.info.run_id, status=run.info.status,
            end=tags.get(END_TAG, ""), values={k: values[k] for k in keys if k in values},
            metric=m.get(metric), best=best,
            epochs=int(max(d.value for d in done)) if done else None,
            iterations=max(d.step for d in done) if done else None,
            extra={k: v for k, v in m.items() if k in ("coco/AP50", "train/loss") or is_diagnostic_column(k)},
            curve=curve, history=by_epoch,
            config_id=tags.get(CONFIG_ID_TAG) or tags.get(VALUES_TAG, run.info.run_id),
            seed=int(seed) if seed not in (None, "") else None,
            config_label=tags.get(CONFIG_LABEL_TAG, run.info.run_name)))
    sign = -1.0 if mode == "max" else 1.0
    rows.sort(key=lambda r: (r.metric is None or math.isnan(r.metric), sign * (r.metric or 0.0)))
    return rows


def to_csv(header: list[str], body: list[list[str]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows(body)
    return out.getvalue()


def to_markdown(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in body]
    return "\n".join(lines) + "\n"
