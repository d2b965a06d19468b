"""The statistics of repeated sweeps against hand-computed values; the paper-row matching of the report.

Student t quantiles from a printed table: t(0.975, 1) = 12.706205, t(0.975, 2) = 4.302653,
t(0.975, 3) = 3.182446.
"""
from __future__ import annotations

import math

import pytest

from platform.analysis.paper_ablations import PAPER_TABLES
from platform.analysis.report import compare_with_paper, row_matches, verdict_lines
from platform.analysis.comparisons import (configurations_table, effects_table, lost_note, statistics_markdown,
                                           sweep_statistics)
from platform.analysis.stats import Configuration, differ_only_in, key_effects, paired_difference, t_critical, t_interval
from platform.analysis.rows import TrialRow

HEADS, L1, L2 = "model.aux_heads", "model.lambda1", "model.lambda2"


def test_t_critical_values_match_the_printed_table():
    assert t_critical(2) == pytest.approx(12.706205, abs=1e-6)
    assert t_critical(3) == pytest.approx(4.302653, abs=1e-6)
    assert t_critical(4) == pytest.approx(3.182446, abs=1e-6)


def test_t_interval_of_four_values():
    # mean 2.5; s^2 = (2.25 + 0.25 + 0.25 + 2.25) / 3 = 5/3; half = 3.182446 * sqrt(5/3) / 2 = 2.054260
    iv = t_interval([1.0, 2.0, 3.0, 4.0])
    assert (iv.n, iv.mean) == (4, 2.5)
    assert iv.std == pytest.approx(math.sqrt(5 / 3), rel=1e-12)
    assert (iv.low, iv.high) == (pytest.approx(0.445740, abs=1e-6), pytest.approx(4.554260, abs=1e-6))
    assert iv.half_width == pytest.approx(2.054260, abs=1e-6) and iv.excludes_zero


def test_t_interval_of_three_seeds_and_of_one():
    # mean 0.12, s = 0.02, half = 4.302653 * 0.02 / sqrt(3) = 0.0496828
    iv = t_interval([0.10, 0.12, 0.14])
    assert iv.mean == pytest.approx(0.12) and iv.std == pytest.approx(0.02)
    assert (iv.low, iv.high) == (pytest.approx(0.0703172, abs=1e-6), pytest.approx(0.1696828, abs=1e-6))
    assert iv.format() == "0.1200 [0.0703, 0.1697]"
    one = t_interval([0.3, float("nan")])            # NaN dropped: one value, no interval
    assert (one.n, one.mean, one.std, one.low, one.high, one.excludes_zero) == (1, 0.3, None, None, None, None)
    assert one.format() == "0.3000 (n=1)"
    with pytest.raises(ValueError, match="no values"):
        t_interval([float("nan")])


def test_paired_difference_over_common_seeds():
    # seeds 0, 1, 2 in both (seed 3 only in b): differences 0.10, 0.05, 0.13; mean 0.093333;
    # s^2 = (0.006667^2 + 0.043333^2 + 0.036667^2) / 2 = 0.00163333; s = 0.0404145;
    # half = 4.302653 * 0.0404145 / sqrt(3) = 0.1003958 -> [-0.0070624, 0.1937291]: spans 0
    d = paired_difference({0: 0.30, 1: 0.25, 2: 0.35}, {0: 0.20, 1: 0.20, 2: 0.22, 3: 0.50})
    assert d.seeds == (0, 1, 2)
    assert d.differences == pytest.approx((0.10, 0.05, 0.13))
    assert d.interval.mean == pytest.approx(0.0933333, abs=1e-6)
    assert d.interval.std == pytest.approx(0.0404145, abs=1e-6)
    assert (d.interval.low, d.interval.high) == (pytest.approx(-0.0070624, abs=1e-6),
                                                 pytest.approx(0.1937291, abs=1e-6))
    assert d.interval.excludes_zero is False
    assert paired_difference({0: 1.0}, {1: 1.0}) is None


def test_pairing_by_seed_tells_what_the_unpaired_means_cannot():
    a, b = {0: 0.30, 1: 0.50, 2: 0.70}, {0: 0.28, 1: 0.47, 2: 0.675}
    # differences 0.02, 0.03, 0.025: mean 0.025, s = 0.005, half = 4.302653 * 0.005 / sqrt(3) = 0.0124207
    d = paired_difference(a, b)
    assert (d.interval.low, d.interval.high) == (pytest.approx(0.0125793, abs=1e-6), pytest.approx(0.0374207, abs=1e-6))
    assert d.interval.excludes_zero
    ia, ib = t_interval(list(a.values())), t_interval(list(b.values()))
    assert ia.low < ib.high and ib.low < ia.high          # the per-configuration intervals overlap widely


def test_differ_only_in_treats_a_key_without_effect_as_a_wildcard():
    k0, k1 = {HEADS: []}, {HEADS: ["atss"], L1: 1.0}
    keys = [HEADS, L1]
    assert differ_only_in(k1, k0, HEADS, keys)
    assert differ_only_in(k1, {HEADS: ["atss"], L1: 0.5}, L1, keys)
    assert not differ_only_in(k1, {HEADS: [], L1: 0.5}, HEADS, keys)


def _one_factor_configs():
    c1 = Configuration("c1", "K=0", {HEADS: []}, {0: 0.10, 1: 0.12, 2: 0.11})
    c2 = Configuration("c2", "K=1 l1=1", {HEADS: ["atss"], L1: 1.0}, {0: 0.20, 1: 0.25, 2: 0.21})
    c3 = Configuration("c3", "K=1 l1=0.5", {HEADS: ["atss"], L1: 0.5}, {0: 0.18, 1: 0.20, 2: 0.22})
    return [c1, c2, c3]


def test_key_effects_average_the_pairs_that_differ_only_in_the_key():
    configs = _one_factor_configs()
    keys = [HEADS, L1]
    (heads,) = key_effects(configs, HEADS, keys, [[], ["atss"]], [])
    # pairs (c2, c1) and (c3, c1); per seed: seed 0 (0.10 + 0.08) / 2 = 0.09, seed 1 (0.13 + 0.08) / 2 = 0.105,
    # seed 2 (0.10 + 0.11) / 2 = 0.105 -> mean 0.1, s = sqrt((0.01^2 + 0.005^2 * 2) / 2) = 0.00866025
    assert heads.pairs == 2 and heads.difference.seeds == (0, 1, 2)
    assert heads.difference.differences == pytest.approx((0.09, 0.105, 0.105))
    assert heads.difference.interval.mean == pytest.approx(0.1)
    assert heads.difference.interval.std == pytest.approx(0.00866025, abs=1e-7)
    (lam,) = key_effects(configs, L1, keys, [1.0, 0.5], 1.0)
    assert lam.pairs == 1 and lam.difference.differences == pytest.approx((-0.02, -0.05, 0.01))


def _rows(configs, ended="finished"):
    rows = []
    for c in configs:
        for seed, value in c.by_seed.items():
            rows.append(TrialRow(f"{c.label} seed={seed}", f"{c.config_id}-{seed}", "FINISHED", ended, dict(c.values),
                                 value, value, 3, 30, {}, [(1, value / 2), (3, value)],
                                 config_id=c.config_id, seed=seed, config_label=c.label))
    return rows


def test_sweep_statistics_tables_from_trial_rows():
    rows = _rows(_one_factor_configs())
    rows.append(TrialRow("K=0 seed=3", "x", "FAILED", "failed", {HEADS: []}, None, None, 1, 3, {}, [],
                         config_id="c1", seed=3, config_label="K=0"))
    stats = sweep_statistics(rows, [HEADS, L1], "coco/AP", baseline_id="c1")
    assert [c.config_id for c in stats.configs] == ["c1", "c2", "c3"]
    assert stats.intervals["c1"].n == 3                  # the failed seed-3 trial does not count
    header, body = configurations_table(stats)
    assert header[:3] == ["config", HEADS, L1]
    assert header[-4:] == ["diff vs c1 (paired)", "95% CI of diff", "excludes 0", "incomplete"]
    assert body[0][:7] == ["c1 (baseline)", "[]", "-", "3", "0.1100", "0.0100", "[0.0852, 0.1348]"]
    # c2 - c1 per seed: 0.10, 0.13, 0.10: mean 0.11, s = 0.0173205, half = 4.302653 * 0.01 = 0.0430265
    assert body[1][-4:] == ["0.1100", "[0.0670, 0.1530]", "yes", ""]   # c2 never ran seed 3: nothing lost
    assert body[0][-1] == "seed(s) [3] lost"
    header, body = effects_table(stats)
    assert body[0][:5] == [HEADS, "[atss]", "[]", "2", "3"] and body[0][5] == "0.1000"
    assert body[1][:4] == [L1, "0.5", "1", "1"]          # reference: the first value seen (the baseline has none)


def test_comparisons_that_lost_their_baseline_or_a_seed_are_marked():
    configs = _one_factor_configs()
    rows = _rows(configs)
    lost_base = next(r for r in rows if r.config_id == "c1" and r.seed == 1)
    lost_base.status, lost_base.end, lost_base.metric = "FAILED", "failed", None
    lost_own = next(r for r in rows if r.config_id == "c3" and r.seed == 2)
    lost_own.status, lost_own.end, lost_own.metric = "FAILED", "failed", None
    stats = sweep_statistics(rows, [HEADS, L1], "coco/AP", baseline_id="c1")
    assert stats.lost == {"c1": [1], "c3": [2]}
    assert stats.versus_baseline["c2"].seeds == (0, 2)          # seed 1 left the pairing
    assert lost_note(stats, "c2") == "baseline c1 lost seed(s) [1]"
    assert lost_note(stats, "c3") == "seed(s) [2] lost; baseline c1 lost seed(s) [1]"
    header, body = configurations_table(stats)
    assert header[-1] == "incomplete" and [b[-1] for b in body] == [
        "seed(s) [1] lost", "baseline c1 lost seed(s) [1]", "seed(s) [2] lost; baseline c1 lost seed(s) [1]"]
    text = statistics_markdown(stats)
    assert "**Incomplete: trials without a final value (c1 seed(s) [1], c3 seed(s) [2]).**" in text
    # the whole baseline gone: every comparison says so
    for r in rows:
        if r.config_id == "c1":
            r.status, r.end, r.metric = "FAILED", "failed", None
    stats = sweep_statistics(rows, [HEADS, L1], "coco/AP", baseline_id="c1")
    assert stats.versus_baseline["c2"] is None
    assert lost_note(stats, "c2") == "baseline c1 lost"
    # a sweep that lost nothing keeps its table as it was
    assert "incomplete" not in configurations_table(sweep_statistics(_rows(configs), [HEADS, L1], "coco/AP"))[0]


def test_the_report_matches_paper_rows_and_judges_direction():
    keys = [HEADS, L1, L2]
    base = {"model": {"aux_heads": ["atss", "faster_rcnn"], "lambda1": 1.0, "lambda2": 2.0}}
    k0 = Configuration("c1", "K=0", {HEADS: []}, {0: 0.01, 1: 0.02, 2: 0.015})
    k1 = Configuration("c2", "K=1", {HEADS: ["atss"], L1: 1.0, L2: 2.0}, {0: 0.05, 1: 0.06, 2: 0.058})
    k2 = Configuration("c3", "K=2", {HEADS: ["atss", "faster_rcnn"], L1: 1.0, L2: 2.0}, {0: 0.04, 1: 0.07, 2: 0.06})
    low_l1 = Configuration("c4", "K=2 l1=0.25", {HEADS: ["atss", "faster_rcnn"], L1: 0.25, L2: 2.0},
                           {0: 0.05, 1: 0.06, 2: 0.05})
    # lambda1 = 0.25 with lambda2 = 1 is no row of any table (the lambda_1 table holds lambda_2 = 2)
    other = Configuration("c5", "K=2 l1=0.25 l2=1", {HEADS: ["atss", "faster_rcnn"], L1: 0.25, L2: 1.0}, {0: 0.0})
    assert row_matches(k0, {HEADS: [], L1: 1.0, L2: 2.0}, keys, base)     # K = 0: the lambdas are wildcards
    assert row_matches(k2, {L1: 1.0, L2: 2.0}, keys, base)                 # aux_heads at its base value
    assert not row_matches(k1, {L1: 1.0, L2: 2.0}, keys, base)             # K = 1 is not the base's K = 2
    assert not row_matches(other, {L1: 0.25, L2: 2.0}, keys, base)
    rows = _rows([k0, k1, k2, low_l1])
    stats = sweep_statistics(rows, keys, "coco/AP", baseline_id="c1")
    tables = compare_with_paper(stats, keys, base)
    names = [t[0].table.name for t in tables]
    assert names == ["K auxiliary heads", "lambda_1 (positive queries)", "one auxiliary head alone"]
    k_table = {r.row.label: r for r in tables[0]}
    assert [k_table[label].config.config_id for label in ("K=0", "K=1 (ATSS)", "K=2 (ATSS + Faster R-CNN)")] == \
        ["c1", "c2", "c3"]
    k1_row = k_table["K=1 (ATSS)"]            # +0.0410 over seeds 0.04, 0.04, 0.043: agrees, excludes 0
    assert k1_row.paper_delta == pytest.approx(1.6)
    assert (k1_row.direction(), k1_row.tight_enough()) == ("agrees", "yes (CI excludes 0)")
    l1_table = {r.row.label: r for r in tables[1]}
    assert l1_table["lambda_1=0.5"].config is None and l1_table["lambda_1=1"].is_reference
    low = l1_table["lambda_1=0.25"]           # paper -0.6; toy c4 - c3 = +0.01, -0.01, -0.01: same sign, spans 0
    assert (low.direction(), low.tight_enough()) == ("agrees", "no (CI spans 0)")
    lines = verdict_lines(tables)
    assert "- K auxiliary heads, K=1 (ATSS) vs K=0: agrees with the paper, and the toy interval excludes 0" in lines[0]
    assert any("lambda_1=0.25 vs lambda_1=1: same sign as the paper, but the toy interval spans 0" in x for x in lines)


def test_paper_tables_reference_rows_exist():
    for table in PAPER_TABLES:
        assert table.reference_row().setting


def test_branch_aps_and_diagnostics_get_intervals_over_seeds_and_paired_differences():
    from platform.analysis.comparisons import diagnostic_statistics, diagnostics_markdown

    rows = _rows(_one_factor_configs())
    # diag/instability = seed / 10 + 0.2 for K = 0 and seed / 10 for the others; a branch AP only where logged
    for r in rows:
        k0 = r.values[HEADS] == []
        r.extra.update({"diag/instability": r.seed / 10 + (0.2 if k0 else 0.0), "train/loss": 9.0})
        if not k0:
            r.extra["branch/atss/coco/AP"] = 0.5 + r.seed / 100
    per_metric = diagnostic_statistics(rows, [HEADS, L1, L2], baseline_id=None)
    assert list(per_metric) == ["branch/atss/coco/AP", "diag/instability"]        # train/loss is no diagnostic
    inst = per_metric["diag/instability"]
    base = inst.baseline.config_id
    seeds = list(inst.baseline.by_seed)
    assert inst.baseline.values[HEADS] == [] and inst.intervals[base].mean == pytest.approx(sum(seeds) / len(seeds) / 10 + 0.2)
    for cid, diff in inst.versus_baseline.items():            # every other configuration: exactly -0.2 per seed
        assert diff.interval.mean == pytest.approx(-0.2) and diff.interval.std == pytest.approx(0.0, abs=1e-12)
    text = diagnostics_markdown(per_metric)
    assert "| config | branch/atss/coco/AP | diag/instability |" in text and "diff -0.2000" in text
    assert diagnostics_markdown({}) == ""
