"""The sweep's summary, read back from MLflow and logged into the parent run.

Artifacts of the parent run:

    summary/results.csv, summary/results.md   one row per trial, sorted by the metric (best first), with
                                              the metric after each comparison epoch (ASHA's rungs)
    summary/effects.md                        per swept key and value: trials, mean and best metric
                                              after the first comparison epoch (every trial got there)
    summary/best_config.yaml                  the full config of the best trial
    plots/<metric>_vs_<key>.png               the metric (last evaluation) against each swept key
    plots/coco_AP_over_epochs.png             coco/AP after every evaluated epoch, one line per trial
"""
from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from typing import Any

from mlflow.tracking import MlflowClient

from platform.sweep_tracking import END_TAG, TRIAL_ID_TAG, VALUES_TAG, children

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
        rows.append(TrialRow(
            trial=run.info.run_name, run_id=run.info.run_id, status=run.info.status,
            end=run.data.tags.get(END_TAG, ""), values={k: values[k] for k in keys if k in values},
            metric=m.get(metric), best=best,
            epochs=int(max(d.value for d in done)) if done else None,
            iterations=max(d.step for d in done) if done else None,
            extra={k: m[k] for k in ("coco/AP50", "train/loss") if k in m},
            curve=curve, history=by_epoch))
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


def plot_metric_vs_key(rows: list[TrialRow], key: str, metric: str):
    """Scatter of the metric against one swept key (categories for lists and strings, K for head lists)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # trials where the key had no effect (value None, e.g. lambda1 with K = 0) have no x position
    points = [(r.values.get(key), r.metric, r.end) for r in rows
              if r.metric is not None and r.values.get(key) is not None]
    fig, ax = plt.subplots(figsize=(6, 4))
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v, _, _ in points)
    if numeric:
        xs = [float(v) for v, _, _ in points]
        ax.set_xlabel(key)
    else:
        labels = sorted({format_value(v) for v, _, _ in points},
                        key=value_order)
        if key.endswith("aux_heads"):
            pretty = {format_value(v): f"K={len(v)}\n{format_value(v)}" for v, _, _ in points}
            ax.set_xlabel(f"{key} (K = number of auxiliary heads)")
        else:
            pretty = {s: s for s in labels}
            ax.set_xlabel(key)
        xs = [labels.index(format_value(v)) for v, _, _ in points]
        ax.set_xticks(range(len(labels)), [pretty[s] for s in labels])
    for (x, (_, y, end)) in zip(xs, points):
        ax.scatter([x], [y], marker="o" if end in ("finished", "max_epochs") else "x",
                   color="tab:blue" if end in ("finished", "max_epochs") else "tab:red")
    ax.set_ylabel(f"{metric} (last evaluation)")
    ax.set_title(f"{metric} vs {key}  (o: ran to the end, x: stopped early / failed)", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_curves(rows: list[TrialRow], keys: list[str] | None = None):
    """coco/AP after every evaluated epoch, one line per trial; with a swept head list, one colour
    per K (line styles tell the trials of a K apart), the legend beside the axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    heads_key = next((k for k in keys or [] if k.endswith("aux_heads")), None)
    groups = sorted({format_value(r.values.get(heads_key)) for r in rows}, key=value_order)
    colours = plt.get_cmap("tab10")
    styles = ["-", "--", ":", "-."]
    fig, ax = plt.subplots(figsize=(11, 5))
    seen: dict[str, int] = {}
    for i, r in enumerate(rows):
        if not r.curve:
            continue
        if heads_key is None:
            colour, style = colours(i % 10), styles[(i // 10) % len(styles)]
        else:
            group = format_value(r.values.get(heads_key))
            n = seen[group] = seen.get(group, -1) + 1
            colour, style = colours(groups.index(group) % 10), styles[n % len(styles)]
        ax.plot([e for e, _ in r.curve], [v for _, v in r.curve], marker="o", color=colour, linestyle=style,
                label=r.trial)
    ax.set_xlabel("epoch")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel(CURVE_METRIC)
    title = f"{CURVE_METRIC} over epochs, every trial" + (" (colour: K)" if heads_key else "")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if any(r.curve for r in rows):
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.subplots_adjust(left=0.07, right=0.64, bottom=0.11, top=0.92)   # the legend goes right of the axes
    return fig


def log_summary(tracking_uri: str, parent_run_id: str, rows: list[TrialRow], keys: list[str], metric: str,
                best_config: dict | None, at_epochs: list[int] | tuple[int, ...] = (), mode: str = "max") -> str:
    """Write the summary artifacts of ``rows`` (from :func:`collect_rows`) into the parent run.

    Returns the Markdown of the results table and (with ``at_epochs``) the effects table."""
    import matplotlib.pyplot as plt
    import yaml

    client = MlflowClient(tracking_uri)
    header, body = table(rows, keys, metric, at_epochs)
    markdown = to_markdown(header, body)
    client.log_text(parent_run_id, to_csv(header, body), "summary/results.csv")
    client.log_text(parent_run_id, markdown, "summary/results.md")
    if at_epochs:
        effect_md = to_markdown(*effects(rows, keys, metric, at_epochs[0], mode))
        client.log_text(parent_run_id, effect_md, "summary/effects.md")
        markdown += f"\nBy swept value, after epoch {at_epochs[0]} (every trial got there):\n\n{effect_md}"
    for key in keys:
        fig = plot_metric_vs_key(rows, key, metric)
        try:
            client.log_figure(parent_run_id, fig, f"plots/{_safe(metric)}_vs_{_safe(key)}.png")
        finally:
            plt.close(fig)
    fig = plot_curves(rows, keys)
    try:
        client.log_figure(parent_run_id, fig, f"plots/{_safe(CURVE_METRIC)}_over_epochs.png")
    finally:
        plt.close(fig)
    best = rows[0] if rows and rows[0].metric is not None else None
    if best is not None:
        client.log_metric(parent_run_id, f"best/{metric}", best.metric)
        client.set_tag(parent_run_id, "sweep.best_trial", best.trial)
        client.set_tag(parent_run_id, "sweep.best_run_id", best.run_id)
        if best_config is not None:
            client.log_text(parent_run_id, yaml.safe_dump(best_config, sort_keys=False), "summary/best_config.yaml")
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.end] = counts.get(r.end, 0) + 1
    client.log_metric(parent_run_id, "sweep/num_trials", len(rows))
    for end, n in counts.items():
        client.log_metric(parent_run_id, f"sweep/num_{end}", n)
    return markdown
