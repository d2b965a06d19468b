"""A repeated sweep set beside the Co-DETR paper's ablation tables (``python -m platform.report``).

SWEEP is a sweep name (its MLflow parent run, the newest of that name) or the parent run's id.
The report reads the sweep's child runs back from MLflow, computes the statistics of the summary
(:mod:`platform.analysis.comparisons`: per configuration mean and 95% t-interval over the seeds, paired
differences) and, for every table of the paper (:mod:`platform.analysis.paper_ablations`) whose reference row
and at least one other row the sweep measured, sets the measured rows beside the paper's:

- each row's paper AP and its difference with the table's reference row;
- the toy mean (95% CI) of the sweep's metric and the paired difference with the reference
  configuration over the seeds both ran, with its 95% t-interval;
- **direction**: whether the toy difference has the paper's sign; **tight enough**: whether its
  interval excludes 0 (only then does the toy run tell the direction at all).

It writes ``report.md`` and plots into ``--out`` (default ``runs/reports/<sweep name>``) and logs
them to the parent run under ``report/``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from mlflow.exceptions import MlflowException

from platform.analysis.comparisons import (diagnostic_statistics, diagnostics_markdown, lost_note, repeated_statistics,
                                           statistics_markdown)
from platform.analysis.paper_ablations import PAPER_TABLES
from platform.analysis.plots import plot_curves, plot_differences
from platform.analysis.rows import collect_rows, to_markdown
from platform.analysis.stats import paired_difference
from platform.core.visualize import close_figure, pyplot


@dataclass
class SweepRecord:
    """What the report needs of a sweep, read from its MLflow parent run."""
    name: str
    parent_run_id: str
    experiment_id: str
    keys: list[str]
    metric: str
    mode: str
    baseline_id: str | None
    base_config: dict
    wall_s: float | None
    params: dict[str, str]


def find_parent(client, sweep: str):
    """The parent run of a sweep: by run id, else the newest parent run whose ``sweep.name`` is ``sweep``."""
    if re.fullmatch(r"[0-9a-f]{32}", sweep):
        try:
            return client.get_run(sweep)
        except MlflowException:
            pass
    found = []
    for experiment in client.search_experiments():
        found += [r for r in client.search_runs([experiment.experiment_id],
                                                filter_string=f"tags.`sweep.name` = '{sweep}'")
                  if "mlflow.parentRunId" not in r.data.tags and "sweep.keys" in r.data.tags]
    if not found:
        raise LookupError(f"no sweep named {sweep!r} (nor a parent run with that id) in this MLflow store")
    return max(found, key=lambda r: r.info.start_time)


def read_sweep(client, sweep: str) -> SweepRecord:
    parent = find_parent(client, sweep)
    tags, params = parent.data.tags, parent.data.params
    base_config = {}
    try:
        path = client.download_artifacts(parent.info.run_id, "base_config.yaml")
        base_config = yaml.safe_load(Path(path).read_text()) or {}
    except Exception:   # an older sweep without it: every non-swept key is then unknown (matches anything)
        pass
    end = parent.info.end_time
    return SweepRecord(
        name=tags.get("sweep.name", sweep), parent_run_id=parent.info.run_id,
        experiment_id=parent.info.experiment_id, keys=[k for k in tags.get("sweep.keys", "").split(",") if k],
        metric=params.get("sweep.metric", "coco/AP"), mode=params.get("sweep.mode", "max"),
        baseline_id=tags.get("sweep.baseline_id"), base_config=base_config,
        wall_s=(end - parent.info.start_time) / 1000.0 if end else None, params=dict(params))


_UNKNOWN = object()


def base_value(base_config: dict, key: str) -> Any:
    node: Any = base_config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return _UNKNOWN
        node = node[part]
    return node


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return abs(float(a) - float(b)) < 1e-12
    return a == b


def row_matches(config, setting: dict[str, Any], keys: list[str], base_config: dict) -> bool:
    """Whether a measured configuration is the paper row ``setting`` (the row's keys and the table's
    fixed ones); a swept key the configuration leaves out (no effect there) matches any value, a key
    neither the row nor the table names must keep its base-config value."""
    for key, wanted in setting.items():
        if key in config.values:
            if not _same(config.values[key], wanted):
                return False
        elif key in keys:
            continue     # swept, without effect in this configuration
        else:
            have = base_value(base_config, key)
            if have is not _UNKNOWN and not _same(have, wanted):
                return False
    for key in keys:
        if key not in setting and key in config.values:
            have = base_value(base_config, key)
            if have is not _UNKNOWN and not _same(config.values[key], have):
                return False
    return True


@dataclass
class ComparedRow:
    table: Any                   # PaperTable
    row: Any                     # PaperRow
    config: Any                  # Configuration or None
    is_reference: bool
    interval: Any                # Interval of the config's metric, or None
    difference: Any              # PairedDifference with the reference config, or None

    @property
    def paper_delta(self) -> float:
        return self.row.ap - self.table.reference_row().ap

    def direction(self, mode: str = "max") -> str:
        if self.is_reference or self.difference is None:
            return ""
        toy = self.difference.interval.mean if mode == "max" else -self.difference.interval.mean
        if self.paper_delta == 0 or toy == 0:
            return "n/a (no difference)"
        return "agrees" if (toy > 0) == (self.paper_delta > 0) else "opposite"

    def tight_enough(self) -> str:
        if self.is_reference or self.difference is None:
            return ""
        iv = self.difference.interval
        if iv.low is None:
            return "no (one seed: no interval)"
        return "yes (CI excludes 0)" if iv.excludes_zero else "no (CI spans 0)"


def compare_with_paper(stats, keys: list[str], base_config: dict) -> list[list[ComparedRow]]:
    """Per paper table whose reference row and at least one more row the sweep measured: its rows."""
    tables = []
    for table in PAPER_TABLES:
        matched = []
        for row in table.rows:
            setting = {**table.fixed, **row.setting}
            found = [c for c in stats.configs if c.by_seed and row_matches(c, setting, keys, base_config)]
            matched.append((row, found[0] if len(found) == 1 else None))
        reference = dict((r.label, c) for r, c in matched).get(table.reference)
        if reference is None or sum(c is not None for _, c in matched) < 2:
            continue
        rows = []
        for row, config in matched:
            is_ref = row.label == table.reference
            diff = None if config is None or is_ref else paired_difference(config.by_seed, reference.by_seed,
                                                                           stats.confidence)
            rows.append(ComparedRow(table, row, config, is_ref, stats.intervals.get(config.config_id) if config else None,
                                    diff))
        tables.append(rows)
    return tables


def _fmt(value: float | None, digits: int = 4, signed: bool = False) -> str:
    if value is None:
        return ""
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def paper_table_markdown(rows: list[ComparedRow], metric: str, mode: str = "max", stats=None) -> str:
    """The paper table beside the toy one; with ``stats``, a toy configuration whose comparison lost its
    baseline or a seed (trials given up) says so."""
    header = ["paper row", "paper AP", "paper diff", "toy config", "seeds", f"toy {metric} mean [95% CI]",
              "toy diff (paired) [95% CI]", "direction", "tight enough to tell"]
    body = []
    for r in rows:
        iv, d = r.interval, r.difference
        body.append([r.row.label + (" (reference)" if r.is_reference else ""), f"{r.row.ap:.1f}",
                     "" if r.is_reference else f"{r.paper_delta:+.1f}",
                     _config_cell(r.config, stats),
                     str(iv.n) if iv else "", iv.format() if iv else "",
                     (f"{d.interval.mean:+.4f}" + (f" [{d.interval.low:+.4f}, {d.interval.high:+.4f}]"
                                                   if d.interval.low is not None else "")) if d else "",
                     r.direction(mode), r.tight_enough()])
    return to_markdown(header, body)


def _config_cell(config, stats) -> str:
    if config is None:
        return "not measured"
    note = lost_note(stats, config.config_id) if stats is not None else ""
    return f"{config.config_id} ({note})" if note else config.config_id


def verdict_lines(tables: list[list[ComparedRow]], mode: str = "max") -> list[str]:
    lines = []
    for rows in tables:
        for r in rows:
            if r.is_reference or r.difference is None:
                continue
            direction, tight = r.direction(mode), r.tight_enough()
            if direction == "agrees" and tight.startswith("yes"):
                text = "agrees with the paper, and the toy interval excludes 0: the toy run shows the paper's direction"
            elif direction == "opposite" and tight.startswith("yes"):
                text = "goes against the paper, and the toy interval excludes 0: at this scale the effect is reversed"
            elif direction in ("agrees", "opposite"):
                text = (f"{'same' if direction == 'agrees' else 'opposite'} sign as the paper, but the toy "
                        f"interval spans 0: too wide to tell")
            else:
                text = "no difference to compare"
            lines.append(f"- {rows[0].table.name}, {r.row.label} vs {r.table.reference}: {text}.")
    return lines


def plot_paper_vs_toy(tables: list[list[ComparedRow]], metric: str):
    """Per paper table: the paper's AP (left axis, grey) and the toy mean with its 95% CI (right
    axis, blue) for every measured row."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(tables), figsize=(4.6 * len(tables), 4.2), squeeze=False)
    for ax, rows in zip(axes[0], tables):
        rows = [r for r in rows if r.config is not None]
        xs = list(range(len(rows)))
        ax.plot(xs, [r.row.ap for r in rows], "s--", color="gray", label="paper box AP (%)")
        ax.set_ylabel("paper box AP (%)", color="gray")
        twin = ax.twinx()
        means = [r.interval.mean for r in rows]
        yerr = [[r.interval.mean - (r.interval.low if r.interval.low is not None else r.interval.mean) for r in rows],
                [(r.interval.high if r.interval.high is not None else r.interval.mean) - r.interval.mean for r in rows]]
        twin.errorbar(xs, means, yerr=yerr, fmt="o-", capsize=4, color="tab:blue", label=f"toy {metric}")
        twin.set_ylabel(f"toy {metric}: mean, 95% CI", color="tab:blue")
        ax.set_xticks(xs, [r.row.label.replace(" (", "\n(") for r in rows], fontsize=7)
        ax.set_title(rows[0].table.name, fontsize=9)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def build_report(client, tracking_uri: str, sweep: str) -> tuple[str, dict[str, Any], SweepRecord]:
    """``(markdown, {file name: figure}, sweep)`` of the report."""
    record = read_sweep(client, sweep)
    rows = collect_rows(tracking_uri, record.experiment_id, record.parent_run_id, record.keys, record.metric,
                        record.mode)
    if not rows:
        raise LookupError(f"sweep {record.name!r} (parent run {record.parent_run_id}) has no trials")
    stats, _ = repeated_statistics(rows, record.keys, record.metric, record.mode, record.baseline_id)
    tables = compare_with_paper(stats, record.keys, record.base_config)
    seeds = sorted({s for c in stats.configs for s in c.by_seed})
    ended = sum(r.ran_to_the_end for r in rows)
    lines = [f"# Sweep {record.name}: the toy ablation beside the Co-DETR paper",
             "",
             f"MLflow parent run `{record.parent_run_id}`; {len(rows)} trials ({ended} ran to the end), "
             f"{len(stats.configs)} configurations x seeds {seeds}; metric {record.metric} after the last epoch"
             + (f"; sweep wall time {record.wall_s / 60:.1f} min." if record.wall_s else "."),
             "",
             "The paper's numbers are box AP (%) on COCO val after 12 or 36 epochs of R50 training on 8 GPUs; the "
             "toy numbers are a fraction (0-1) after a few CPU minutes on the embedded synthetic set. Only the "
             "direction of each difference can be compared. A toy difference is paired by seed with the "
             "table's reference row; its 95% t-interval says whether the toy run can tell the direction at all.",
             ""]
    if tables:
        for rows_of_table in tables:
            table = rows_of_table[0].table
            lines += [f"## {table.name}", "", f"Paper: {table.source}; reference row: {table.reference}.", "",
                      paper_table_markdown(rows_of_table, record.metric, record.mode, stats)]
        lines += ["## Row by row", "", *verdict_lines(tables, record.mode), ""]
    else:
        lines += ["No table of the paper is covered: the sweep measured no reference row together with another "
                  "row of the same table (K = 0 / 1 / 2 heads, lambda_1, lambda_2, single heads).", ""]
    lines += ["## All configurations", "", statistics_markdown(stats)]
    diagnostics = diagnostics_markdown(diagnostic_statistics(rows, record.keys, stats.baseline.config_id
                                                             if stats.baseline else record.baseline_id))
    if diagnostics:
        lines += ["", diagnostics]
    figures = {"coco_AP_over_epochs.png": plot_curves(rows, record.keys, stats)}
    if tables:
        figures["paper_vs_toy.png"] = plot_paper_vs_toy(tables, record.metric)
    if stats.versus_baseline:
        figures["differences_vs_baseline.png"] = plot_differences(stats)
    lines += ["## Plots", "", *(f"![{name}]({name})" for name in figures), ""]
    return "\n".join(lines), figures, record


def write_report(client, record: SweepRecord, markdown: str, figures: dict[str, Any], out: str | Path) -> Path:
    """Write ``report.md`` and the plots into ``out`` and log them to the sweep's parent run under ``report/``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(markdown)
    for name, fig in figures.items():
        try:
            fig.savefig(out / name, dpi=110)
        finally:
            close_figure(fig)
    client.log_artifacts(record.parent_run_id, str(out), "report")
    return out / "report.md"
