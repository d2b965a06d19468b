"""The sweep's summary, read back from MLflow and logged into the parent run.

Artifacts of the parent run:

    summary/results.csv, summary/results.md   one row per trial, sorted by the metric (best first), with
                                              the metric after each comparison epoch (ASHA's rungs)
    summary/effects.md                        per swept key and value: trials, mean and best metric
                                              after the first comparison epoch (every trial got there)
    summary/best_config.yaml                  the full config of the best trial
    plots/<metric>_vs_<key>.png               the metric (last evaluation) against each swept key
    plots/coco_AP_over_epochs.png             coco/AP after every evaluated epoch, one line per trial

With repeats (seeds), also (:mod:`platform.sweep_comparisons`, :mod:`platform.sweep_plots`):

    summary/results.md                        first the statistics: per configuration mean, std and 95%
                                              t-interval, the paired difference with the baseline, the
                                              effect of each swept value; then the trials
    summary/configurations.csv, summary/key_effects.csv   the same tables as CSV
    metrics stats/<config id>/mean, /ci_low, /ci_high, /n
    plots/differences_vs_baseline.png         each configuration minus the baseline, with its interval
    (and the plots above with error bars / bands per configuration)
"""
from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from typing import Any

from mlflow.tracking import MlflowClient

from platform.sweep_tracking import (CONFIG_ID_TAG, CONFIG_LABEL_TAG, END_TAG, SEED_TAG, TRIAL_ID_TAG, VALUES_TAG,
                                     children)

CURVE_METRIC = "coco/AP"


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
    extra: dict[str, float]        # a few more final metrics (coco/AP50, train/loss)
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
            extra={k: m[k] for k in ("coco/AP50", "train/loss") if k in m},
            curve=curve, history=by_epoch,
            config_id=tags.get(CONFIG_ID_TAG) or tags.get(VALUES_TAG, run.info.run_id),
            seed=int(seed) if seed not in (None, "") else None,
            config_label=tags.get(CONFIG_LABEL_TAG, run.info.run_name)))
    sign = -1.0 if mode == "max" else 1.0
    rows.sort(key=lambda r: (r.metric is None or math.isnan(r.metric), sign * (r.metric or 0.0)))
    return rows


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def table(rows: list[TrialRow], keys: list[str], metric: str,
          at_epochs: list[int] | tuple[int, ...] = ()) -> tuple[list[str], list[list[str]]]:
    """One row per trial; ``at_epochs``: extra columns with the metric after those epochs (the
    fair comparison between trials that ran for different lengths)."""
    header = ["rank", "trial", *keys, metric, f"best {metric}", *(f"{metric} @ epoch {e}" for e in at_epochs),
              "coco/AP50", "train/loss", "epochs", "iterations", "status", "end", "mlflow_run_id"]
    body = []
    for i, r in enumerate(rows, 1):
        body.append([str(i), r.trial, *(format_value(r.values.get(k)) for k in keys), _num(r.metric), _num(r.best),
                     *(_num(r.metric_at(e)) for e in at_epochs),
                     _num(r.extra.get("coco/AP50")), _num(r.extra.get("train/loss")),
                     "" if r.epochs is None else str(r.epochs), "" if r.iterations is None else str(r.iterations),
                     r.status, r.end, r.run_id])
    return header, body


def effects(rows: list[TrialRow], keys: list[str], metric: str, epoch: int,
            mode: str = "max") -> tuple[list[str], list[list[str]]]:
    """Per swept key and value: how many trials have the metric after ``epoch``, its mean and best.

    Rows whose key had no effect (value ``-``) are kept, as their own group."""
    header = ["key", "value", "trials", f"mean {metric} @ epoch {epoch}", f"best {metric} @ epoch {epoch}"]
    body = []
    pick = max if mode == "max" else min
    for key in keys:
        groups: dict[str, list[float]] = {}
        for r in rows:
            value = r.metric_at(epoch)
            group = groups.setdefault(format_value(r.values.get(key)), [])
            if value is not None and not math.isnan(value):
                group.append(value)
        for label in sorted(groups, key=value_order):
            vals = groups[label]
            body.append([key, label, str(len(vals)), _num(sum(vals) / len(vals) if vals else None),
                         _num(pick(vals) if vals else None)])
    return header, body


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


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)


def log_summary(tracking_uri: str, parent_run_id: str, rows: list[TrialRow], keys: list[str], metric: str,
                best_config: dict | None, at_epochs: list[int] | tuple[int, ...] = (), mode: str = "max",
                stats=None, best: TrialRow | None = None) -> str:
    """Write the summary artifacts of ``rows`` (from :func:`collect_rows`) into the parent run.

    ``stats`` (a repeated sweep, :func:`platform.sweep_comparisons.sweep_statistics`): the per
    configuration statistics, paired comparisons and effects go first into ``results.md`` (and
    ``configurations.csv``, ``key_effects.csv``), the plots get error bars and bands. ``best``: the
    trial whose config is ``best_config`` (default: the first row).
    Returns the Markdown of ``results.md`` (plus the effects table with ``at_epochs``)."""
    import matplotlib.pyplot as plt
    import yaml

    from platform.sweep_plots import plot_curves, plot_differences, plot_metric_vs_key

    client = MlflowClient(tracking_uri)
    header, body = table(rows, keys, metric, at_epochs)
    markdown = to_markdown(header, body)
    client.log_text(parent_run_id, to_csv(header, body), "summary/results.csv")
    if stats is not None:
        from platform.sweep_comparisons import configurations_table, effects_table, statistics_markdown

        markdown = f"{statistics_markdown(stats)}\n### Trials\n\n{markdown}"
        client.log_text(parent_run_id, to_csv(*configurations_table(stats)), "summary/configurations.csv")
        client.log_text(parent_run_id, to_csv(*effects_table(stats)), "summary/key_effects.csv")
        from platform.tracking import RunLogger

        summary_metrics = {}
        for c in stats.configs:
            iv = stats.intervals.get(c.config_id)
            if iv is not None:
                summary_metrics.update({f"stats/{c.config_id}/mean": iv.mean, f"stats/{c.config_id}/n": iv.n})
                if iv.low is not None:
                    summary_metrics.update({f"stats/{c.config_id}/ci_low": iv.low,
                                            f"stats/{c.config_id}/ci_high": iv.high})
        RunLogger(tracking_uri, parent_run_id).log_metrics(summary_metrics, step=0)
        if stats.baseline is not None:
            client.set_tag(parent_run_id, "sweep.baseline_id", stats.baseline.config_id)
    client.log_text(parent_run_id, markdown, "summary/results.md")
    if at_epochs:
        effect_md = to_markdown(*effects(rows, keys, metric, at_epochs[0], mode))
        client.log_text(parent_run_id, effect_md, "summary/effects.md")
        markdown += f"\nBy swept value, after epoch {at_epochs[0]} (every trial got there):\n\n{effect_md}"
    figures = [(plot_metric_vs_key(rows, key, metric, stats), f"plots/{_safe(metric)}_vs_{_safe(key)}.png")
               for key in keys]
    figures.append((plot_curves(rows, keys, stats), f"plots/{_safe(CURVE_METRIC)}_over_epochs.png"))
    if stats is not None and stats.versus_baseline:
        figures.append((plot_differences(stats), "plots/differences_vs_baseline.png"))
    for fig, path in figures:
        try:
            client.log_figure(parent_run_id, fig, path)
        finally:
            plt.close(fig)
    if best is None:
        best = rows[0] if rows and rows[0].metric is not None else None
    if best is not None:
        client.log_metric(parent_run_id, f"best/{metric}", best.metric)
        client.set_tag(parent_run_id, "sweep.best_trial", best.trial)
        client.set_tag(parent_run_id, "sweep.best_run_id", best.run_id)
        if best.config_id:
            client.set_tag(parent_run_id, "sweep.best_config_id", best.config_id)
        if best_config is not None:
            client.log_text(parent_run_id, yaml.safe_dump(best_config, sort_keys=False), "summary/best_config.yaml")
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.end] = counts.get(r.end, 0) + 1
    client.log_metric(parent_run_id, "sweep/num_trials", len(rows))
    for end, n in counts.items():
        client.log_metric(parent_run_id, f"sweep/num_{end}", n)
    return markdown
