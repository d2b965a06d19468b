"""What a repeated sweep says: per configuration mean and interval, paired comparisons with the
baseline, the effect of each swept value. Tables (Markdown / CSV) from the summary's trial rows.

The arithmetic is :mod:`platform.analysis.stats`; here the trials (:class:`platform.analysis.summary.TrialRow`)
are grouped into configurations (tag ``sweep.config_id``) and seeds (``sweep.seed``). Only trials that
ran to the end count (a failed trial, or one stopped early, has no final value to compare): with
repeats every trial runs its whole schedule, so every configuration is compared at the same epoch.
A trial that did not (a sweep with trials given up) takes its seed out of its configuration's
comparisons: the tables mark each comparison that lost its baseline or a seed (``lost``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

from platform.analysis.stats import CONFIDENCE, Configuration, Effect, Interval, PairedDifference, key_effects, \
    paired_difference
from platform.analysis.rows import TrialRow, format_value, is_diagnostic_column, to_markdown


def config_order(config_id: str) -> tuple:
    """``c2`` before ``c10``; other ids after, as text."""
    match = re.fullmatch(r"c(\d+)", config_id)
    return (0, int(match.group(1)), "") if match else (1, 0, config_id)


def group_configurations(rows: Sequence[TrialRow], keys: Sequence[str]) -> list[Configuration]:
    """One :class:`Configuration` per config id, in id order, with the final metric of each trial that
    ran to the end, by seed."""
    configs: dict[str, Configuration] = {}
    for r in rows:
        config = configs.setdefault(r.config_id, Configuration(r.config_id, r.config_label or r.trial,
                                                               {k: r.values[k] for k in keys if k in r.values}, {}))
        if r.ran_to_the_end and r.metric is not None and r.seed is not None:
            config.by_seed[r.seed] = r.metric
    return [configs[c] for c in sorted(configs, key=config_order)]


def values_by_epoch(rows: Sequence[TrialRow], config_id: str) -> dict[int, dict[int, float]]:
    """``{epoch: {seed: coco/AP}}`` of one configuration's trials (every evaluated epoch)."""
    out: dict[int, dict[int, float]] = {}
    for r in rows:
        if r.config_id == config_id and r.seed is not None:
            for epoch, value in r.curve:
                out.setdefault(epoch, {})[r.seed] = value
    return out


def key_values(configs: Sequence[Configuration], key: str) -> list[Any]:
    """The values of ``key`` in configuration order (each once)."""
    out: list[Any] = []
    for c in configs:
        if key in c.values and c.values[key] not in out:
            out.append(c.values[key])
    return out


@dataclass
class SweepStatistics:
    """Everything the summary and the report say about a repeated sweep."""
    metric: str
    keys: list[str]
    configs: list[Configuration]
    baseline: Configuration | None
    intervals: dict[str, Interval | None]                   # config id -> its interval
    versus_baseline: dict[str, PairedDifference | None]     # config id -> config - baseline, paired by seed
    effects: list[Effect]
    confidence: float = CONFIDENCE
    lost: dict[str, list[int]] = field(default_factory=dict)   # config id -> seeds of trials without a final value

    def config(self, config_id: str) -> Configuration | None:
        return next((c for c in self.configs if c.config_id == config_id), None)


def sweep_statistics(rows: Sequence[TrialRow], keys: Sequence[str], metric: str, baseline_id: str | None = None,
                     confidence: float = CONFIDENCE) -> SweepStatistics:
    """The statistics of the trials in ``rows``. The baseline is ``baseline_id`` (default: the first
    configuration); each key's effects are against the baseline's value of the key (or, where the
    baseline has none, the key's first value)."""
    configs = group_configurations(rows, keys)
    baseline = next((c for c in configs if c.config_id == baseline_id), configs[0] if configs else None)
    intervals = {c.config_id: c.interval(confidence) for c in configs}
    versus = {}
    for c in configs:
        if baseline is not None and c is not baseline:
            versus[c.config_id] = paired_difference(c.by_seed, baseline.by_seed, confidence)
    effects: list[Effect] = []
    for key in keys:
        values = key_values(configs, key)
        if len(values) < 2:
            continue
        reference = baseline.values[key] if baseline is not None and key in baseline.values else values[0]
        effects += key_effects(configs, key, keys, values, reference, confidence)
    return SweepStatistics(metric, list(keys), configs, baseline, intervals, versus, effects, confidence,
                           lost_seeds(rows))


def lost_seeds(rows: Sequence[TrialRow]) -> dict[str, list[int]]:
    """Config id -> the seeds whose trial exists but has no final value (failed, interrupted, still running)."""
    out: dict[str, list[int]] = {}
    for r in rows:
        if r.seed is not None and not (r.ran_to_the_end and r.metric is not None):
            out.setdefault(r.config_id, []).append(r.seed)
    return {cid: sorted(seeds) for cid, seeds in out.items()}


def lost_note(stats: SweepStatistics, config_id: str) -> str:
    """What a configuration's comparison with the baseline lost ("" when nothing): seeds of its own, seeds
    of the baseline that it ran (a paired difference needs both trials of a seed), or the whole baseline."""
    parts = []
    if config_id in stats.lost:
        parts.append(f"seed(s) {stats.lost[config_id]} lost")
    base, config = stats.baseline, stats.config(config_id)
    if base is not None and config is not None and base.config_id != config_id:
        ran = set(config.by_seed) | set(stats.lost.get(config_id, []))
        base_lost = [s for s in stats.lost.get(base.config_id, []) if s in ran]
        if not base.by_seed:
            parts.append(f"baseline {base.config_id} lost")
        elif base_lost:
            parts.append(f"baseline {base.config_id} lost seed(s) {base_lost}")
    return "; ".join(parts)


# --------------------------------------------------------------------------------------- tables


def _num(value: float | None, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _ci(interval: Interval | None) -> str:
    if interval is None or interval.low is None:
        return ""
    return f"[{interval.low:.4f}, {interval.high:.4f}]"


def _excludes(interval: Interval | None) -> str:
    if interval is None or interval.excludes_zero is None:
        return ""
    return "yes" if interval.excludes_zero else "no"


def configurations_table(stats: SweepStatistics) -> tuple[list[str], list[list[str]]]:
    """Per configuration: swept values, seeds, mean, std, CI, and the paired difference with the baseline."""
    pct = f"{round(100 * stats.confidence)}%"
    base = stats.baseline.config_id if stats.baseline else "-"
    header = ["config", *stats.keys, "seeds", f"mean {stats.metric}", "std", f"{pct} CI",
              f"diff vs {base} (paired)", f"{pct} CI of diff", "excludes 0"]
    if stats.lost:   # a sweep with trials given up: each comparison says what it lost
        header.append("incomplete")
    body = []
    for c in stats.configs:
        iv = stats.intervals.get(c.config_id)
        diff = stats.versus_baseline.get(c.config_id)
        is_base = stats.baseline is not None and c.config_id == stats.baseline.config_id
        body.append([c.config_id + (" (baseline)" if is_base else ""), *(format_value(c.values.get(k)) for k in stats.keys),
                     str(iv.n if iv else 0), _num(iv.mean if iv else None), _num(iv.std if iv else None), _ci(iv),
                     _num(diff.interval.mean) if diff else "", _ci(diff.interval) if diff else "",
                     _excludes(diff.interval) if diff else ""])
        if stats.lost:
            body[-1].append(lost_note(stats, c.config_id))
    return header, body


def effects_table(stats: SweepStatistics) -> tuple[list[str], list[list[str]]]:
    """Per swept key and value: the paired effect against the reference value (see
    :func:`platform.analysis.stats.key_effects`)."""
    pct = f"{round(100 * stats.confidence)}%"
    header = ["key", "value", "against", "config pairs", "seeds", f"mean diff {stats.metric}", f"{pct} CI",
              "excludes 0"]
    body = []
    for e in stats.effects:
        d = e.difference
        body.append([e.key, format_value(e.value), format_value(e.reference), str(e.pairs),
                     str(d.interval.n) if d else "0", _num(d.interval.mean) if d else "", _ci(d.interval) if d else "",
                     _excludes(d.interval) if d else ""])
    return header, body


def statistics_markdown(stats: SweepStatistics) -> str:
    """The statistics section of ``summary/results.md``."""
    pct = f"{round(100 * stats.confidence)}%"
    seeds = sorted({s for c in stats.configs for s in c.by_seed})
    lines = [f"### Configurations over seeds {seeds}",
             "",
             f"{stats.metric} after the last epoch: mean over the seeds, sample standard deviation, {pct} "
             f"t-interval of the mean; the difference with the baseline is paired by seed (same seed, same data "
             f"order and initialisation) and its interval is the t-interval of the per-seed differences.",
             ""]
    if stats.lost:
        lost = ", ".join(f"{cid} seed(s) {seeds}" for cid, seeds in sorted(stats.lost.items(),
                                                                          key=lambda i: config_order(i[0])))
        lines += [f"**Incomplete: trials without a final value ({lost}).** Their seeds are left out of every "
                  "mean and paired comparison they belong to (column `incomplete`); "
                  "`--resume --retry-failed` runs them again.", ""]
    lines.append(to_markdown(*configurations_table(stats)))
    if stats.effects:
        lines += ["### Effect of each swept value",
                  "",
                  "Per key, each value against the reference value (the baseline's): the per-seed difference "
                  "averaged over the configuration pairs that differ only in that key, then its t-interval "
                  "over the seeds.",
                  "",
                  to_markdown(*effects_table(stats))]
    return "\n".join(lines)


def repeated_statistics(rows, keys: list[str], metric: str, mode: str, baseline_id: str | None):
    """``(statistics, best trial)`` of a repeated sweep: the best trial is the best seed of the
    configuration with the best mean (not the luckiest single trial)."""
    stats = sweep_statistics(rows, keys, metric, baseline_id)
    ranked = [(iv.mean, cid) for cid, iv in stats.intervals.items() if iv is not None]
    if not ranked:
        return stats, None
    _, best_id = max(ranked) if mode == "max" else min(ranked)
    candidates = [r for r in rows if r.config_id == best_id and r.metric is not None and r.ran_to_the_end]
    pick = max if mode == "max" else min
    return stats, pick(candidates, key=lambda r: r.metric) if candidates else None


def diagnostic_statistics(rows: Sequence[TrialRow], keys: Sequence[str], baseline_id: str | None = None,
                          confidence: float = CONFIDENCE) -> dict[str, SweepStatistics]:
    """The statistics of every branch AP and diagnostic (``branch/*/coco/AP``, ``diag/*``) the trials logged,
    over seeds and paired with the baseline as the sweep's metric is: metric name -> statistics."""
    names = sorted({k for r in rows for k in r.extra if is_diagnostic_column(k)})
    return {name: sweep_statistics([replace(r, metric=r.extra.get(name)) for r in rows], keys, name, baseline_id,
                                   confidence) for name in names}


def diagnostics_markdown(per_metric: dict[str, SweepStatistics]) -> str:
    """One table: per configuration and diagnostic, the mean over seeds with its t-interval, and (other
    configurations) the paired difference with the baseline with its interval. "" when there is none."""
    if not per_metric:
        return ""
    first = next(iter(per_metric.values()))
    pct = f"{round(100 * first.confidence)}%"
    base = first.baseline.config_id if first.baseline else "-"
    header = ["config", *per_metric]
    body = []
    for c in first.configs:
        cells = [c.config_id + (" (baseline)" if c.config_id == base else "")]
        for stats in per_metric.values():
            iv = stats.intervals.get(c.config_id)
            diff = stats.versus_baseline.get(c.config_id)
            cell = f"{_num(iv.mean)} {_ci(iv)}".strip() if iv else ""
            if diff is not None:
                cell += f"; diff {diff.interval.mean:+.4f} {_ci(diff.interval)}".rstrip()
            cells.append(cell)
        body.append(cells)
    return "\n".join(["### The branches and the diagnostics over seeds",
                      "",
                      f"Each auxiliary branch's own AP and the paper's diagnostics (docs/diagnostics.md) after the last "
                      f"epoch: mean over the seeds with its {pct} t-interval; for the other configurations also the "
                      f"difference with {base} paired by seed, with its interval.",
                      "",
                      to_markdown(header, body)])
