"""The sweep's plots (parent run artifacts ``plots/``), drawn from the summary's trial rows.

- :func:`plot_metric_vs_key`: the metric against one swept key, every trial a point; with repeats each
  configuration's mean with its t-interval as an error bar beside its seeds;
- :func:`plot_curves`: coco/AP over epochs, a line per trial; with repeats a line per configuration
  (the mean over its seeds) in a band (the t-interval at each epoch);
- :func:`plot_differences`: with repeats, each configuration minus the baseline (paired by seed) with
  its interval, against the zero line.
"""
from __future__ import annotations

from platform.analysis.comparisons import SweepStatistics, values_by_epoch
from platform.analysis.rows import CURVE_METRIC, TrialRow, format_value, value_order
from platform.analysis.stats import t_interval
from platform.core.visualize import pyplot


def _positions(rows: list[TrialRow], key: str):
    """``(x of a value, tick labels, axis label)``: numbers as they are, other values as categories
    (head lists by K)."""
    present = [r.values[key] for r in rows if r.values.get(key) is not None]
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present)
    if numeric:
        return (lambda v: float(v)), None, key
    labels = sorted({format_value(v) for v in present}, key=value_order)
    if key.endswith("aux_heads"):
        pretty = {format_value(v): f"K={len(v)}\n{format_value(v)}" for v in present}
        name = f"{key} (K = number of auxiliary heads)"
    else:
        pretty, name = {s: s for s in labels}, key
    return (lambda v: float(labels.index(format_value(v)))), (list(range(len(labels))), [pretty[s] for s in labels]), name


def plot_metric_vs_key(rows: list[TrialRow], key: str, metric: str, stats: SweepStatistics | None = None):
    """The metric (last evaluation) against ``key``; trials where the key had no effect (e.g. lambda1
    with K = 0) have no x position. With ``stats``: per configuration, its seeds as small dots and its
    mean with the t-interval as an error bar (configurations sharing a value side by side)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    x_of, ticks, name = _positions(rows, key)
    if stats is None:
        for r in rows:
            if r.metric is None or r.values.get(key) is None:
                continue
            ok = r.ran_to_the_end
            ax.scatter([x_of(r.values[key])], [r.metric], marker="o" if ok else "x",
                       color="tab:blue" if ok else "tab:red")
        title = f"{metric} vs {key}  (o: ran to the end, x: stopped early / failed)"
    else:
        configs = [c for c in stats.configs if key in c.values and c.by_seed]
        shared: dict[float, list] = {}
        for c in configs:
            shared.setdefault(x_of(c.values[key]), []).append(c)
        span = 0.5 if ticks else 0.0
        colours = plt.get_cmap("tab10")
        for x, group in shared.items():
            if not ticks and len(shared) > 1:
                xs = sorted(shared)
                span = 0.4 * min(b - a for a, b in zip(xs, xs[1:]))
            for i, c in enumerate(group):
                dx = (i - (len(group) - 1) / 2) * span / max(len(group), 1)
                iv = stats.intervals[c.config_id]
                colour = colours(stats.configs.index(c) % 10)
                ax.scatter([x + dx] * len(c.by_seed), list(c.by_seed.values()), s=12, color=colour, alpha=0.45)
                yerr = None if iv.low is None else [[iv.mean - iv.low], [iv.high - iv.mean]]
                ax.errorbar([x + dx], [iv.mean], yerr=yerr, fmt="o", capsize=4, color=colour,
                            label=f"{c.config_id}: {c.label}")
        title = (f"{metric} vs {key}: mean over seeds with {round(100 * stats.confidence)}% t-interval "
                 f"(dots: seeds)")
        if configs:
            ax.legend(fontsize=6, loc="best")
    if ticks:
        ax.set_xticks(*ticks)
    ax.set_xlabel(name)
    ax.set_ylabel(f"{metric} (last evaluation)")
    ax.set_title(title, fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_curves(rows: list[TrialRow], keys: list[str] | None = None, stats: SweepStatistics | None = None):
    """coco/AP after every evaluated epoch. Without ``stats`` one line per trial (one colour per K
    with a swept head list, line styles tell the trials of a K apart); with ``stats`` one line per
    configuration (mean over its seeds) and its t-interval as a band. The legend is beside the axes."""
    plt = pyplot()
    colours = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(11, 5))
    if stats is not None:
        for i, c in enumerate(stats.configs):
            by_epoch = values_by_epoch(rows, c.config_id)
            epochs = sorted(by_epoch)
            if not epochs:
                continue
            intervals = [t_interval(list(by_epoch[e].values()), stats.confidence) for e in epochs]
            colour = colours(i % 10)
            ax.plot(epochs, [iv.mean for iv in intervals], marker="o", color=colour,
                    label=f"{c.config_id}: {c.label} (n={max(iv.n for iv in intervals)})")
            banded = [(e, iv) for e, iv in zip(epochs, intervals) if iv.low is not None]
            if banded:
                ax.fill_between([e for e, _ in banded], [iv.low for _, iv in banded], [iv.high for _, iv in banded],
                                color=colour, alpha=0.15)
        title = (f"{CURVE_METRIC} over epochs: mean over seeds per configuration, "
                 f"{round(100 * stats.confidence)}% t-interval band")
    else:
        heads_key = next((k for k in keys or [] if k.endswith("aux_heads")), None)
        groups = sorted({format_value(r.values.get(heads_key)) for r in rows}, key=value_order)
        styles = ["-", "--", ":", "-."]
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
        title = f"{CURVE_METRIC} over epochs, every trial" + (" (colour: K)" if heads_key else "")
    ax.set_xlabel("epoch")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel(CURVE_METRIC)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.subplots_adjust(left=0.07, right=0.64, bottom=0.11, top=0.92)   # the legend goes right of the axes
    return fig


def plot_differences(stats: SweepStatistics):
    """Each configuration minus the baseline, paired by seed: mean difference with its t-interval
    (seeds as dots), one row per configuration, against the zero line."""
    plt = pyplot()
    items = [(c, stats.versus_baseline.get(c.config_id)) for c in stats.configs if c is not stats.baseline]
    items = [(c, d) for c, d in items if d is not None]
    fig, ax = plt.subplots(figsize=(8, 0.8 + 0.45 * max(len(items), 1)))
    for y, (c, d) in enumerate(items):
        iv = d.interval
        xerr = None if iv.low is None else [[iv.mean - iv.low], [iv.high - iv.mean]]
        colour = "tab:blue" if iv.excludes_zero else "tab:gray"
        ax.scatter(list(d.differences), [y] * len(d.differences), s=12, color=colour, alpha=0.45)
        ax.errorbar([iv.mean], [y], xerr=xerr, fmt="o", capsize=4, color=colour)
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(items)), [f"{c.config_id}: {c.label}" for c, _ in items], fontsize=7)
    ax.invert_yaxis()
    base = stats.baseline.config_id if stats.baseline else "?"
    ax.set_xlabel(f"{stats.metric} minus the baseline's ({base}), paired by seed")
    ax.set_title(f"Paired differences with {base}: mean, {round(100 * stats.confidence)}% t-interval "
                 f"(blue: excludes 0), dots: seeds", fontsize=8)
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return fig
