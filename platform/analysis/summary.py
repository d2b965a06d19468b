"""The sweep's summary, read back from MLflow and logged into the parent run.

Artifacts of the parent run:

    summary/results.csv, summary/results.md   one row per trial, sorted by the metric (best first), with
                                              the metric after each comparison epoch (ASHA's rungs)
    summary/effects.md                        per swept key and value: trials, mean and best metric
                                              after the first comparison epoch (every trial got there)
    summary/best_config.yaml                  the full config of the best trial
    plots/<metric>_vs_<key>.png               the metric (last evaluation) against each swept key
    plots/coco_AP_over_epochs.png             coco/AP after every evaluated epoch, one line per trial

With repeats (seeds), also (:mod:`platform.analysis.comparisons`, :mod:`platform.analysis.plots`):

    summary/results.md                        first the statistics: per configuration mean, std and 95%
                                              t-interval, the paired difference with the baseline, the
                                              effect of each swept value; then the trials
    summary/configurations.csv, summary/key_effects.csv   the same tables as CSV
    metrics stats/<config id>/mean, /ci_low, /ci_high, /n
    plots/differences_vs_baseline.png         each configuration minus the baseline, with its interval
    (and the plots above with error bars / bands per configuration)
"""
from __future__ import annotations

import math

import yaml
from mlflow.tracking import MlflowClient

from platform.analysis.comparisons import (configurations_table, diagnostic_statistics, diagnostics_markdown,
                                           effects_table, statistics_markdown)
from platform.analysis.plots import plot_curves, plot_differences, plot_metric_vs_key
from platform.analysis.rows import (CURVE_METRIC, TrialRow, format_value, is_diagnostic_column, to_csv, to_markdown,
                                    value_order)
from platform.core.visualize import close_figure
from platform.tracking.mlflow_runs import RunLogger


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def table(rows: list[TrialRow], keys: list[str], metric: str,
          at_epochs: list[int] | tuple[int, ...] = ()) -> tuple[list[str], list[list[str]]]:
    """One row per trial; ``at_epochs``: extra columns with the metric after those epochs (the
    fair comparison between trials that ran for different lengths)."""
    diagnostics = sorted({k for r in rows for k in r.extra if is_diagnostic_column(k)})
    header = ["rank", "trial", *keys, metric, f"best {metric}", *(f"{metric} @ epoch {e}" for e in at_epochs),
              "coco/AP50", "train/loss", "epochs", "iterations", "status", "end", "mlflow_run_id", *diagnostics]
    body = []
    for i, r in enumerate(rows, 1):
        body.append([str(i), r.trial, *(format_value(r.values.get(k)) for k in keys), _num(r.metric), _num(r.best),
                     *(_num(r.metric_at(e)) for e in at_epochs),
                     _num(r.extra.get("coco/AP50")), _num(r.extra.get("train/loss")),
                     "" if r.epochs is None else str(r.epochs), "" if r.iterations is None else str(r.iterations),
                     r.status, r.end, r.run_id, *(_num(r.extra.get(k)) for k in diagnostics)])
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


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)


def log_summary(tracking_uri: str, parent_run_id: str, rows: list[TrialRow], keys: list[str], metric: str,
                best_config: dict | None, at_epochs: list[int] | tuple[int, ...] = (), mode: str = "max",
                stats=None, best: TrialRow | None = None) -> str:
    """Write the summary artifacts of ``rows`` (from :func:`collect_rows`) into the parent run.

    ``stats`` (a repeated sweep, :func:`platform.analysis.comparisons.sweep_statistics`): the per
    configuration statistics, paired comparisons and effects go first into ``results.md`` (and
    ``configurations.csv``, ``key_effects.csv``), the plots get error bars and bands. ``best``: the
    trial whose config is ``best_config`` (default: the first row).
    Returns the Markdown of ``results.md`` (plus the effects table with ``at_epochs``)."""
    client = MlflowClient(tracking_uri)
    header, body = table(rows, keys, metric, at_epochs)
    markdown = to_markdown(header, body)
    client.log_text(parent_run_id, to_csv(header, body), "summary/results.csv")
    if stats is not None:
        diagnostics = diagnostics_markdown(diagnostic_statistics(rows, keys, stats.baseline.config_id
                                                                 if stats.baseline else None, stats.confidence))
        markdown = (f"{statistics_markdown(stats)}\n" + (f"{diagnostics}\n" if diagnostics else "")
                    + f"### Trials\n\n{markdown}")
        client.log_text(parent_run_id, to_csv(*configurations_table(stats)), "summary/configurations.csv")
        client.log_text(parent_run_id, to_csv(*effects_table(stats)), "summary/key_effects.csv")
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
            close_figure(fig)
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
