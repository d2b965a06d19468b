"""The statistics of a repeated sweep: means, t-intervals, paired differences, per-key effects.

Everything here is arithmetic on plain numbers (no MLflow, no Ray), so it is tested against
hand-computed values (tests/platform/analysis/test_stats.py).

- :func:`t_interval`: mean, sample standard deviation and the two-sided t confidence interval of the
  mean of a few values (seeds): ``mean +- t_{(1+c)/2, n-1} * s / sqrt(n)``. With one value there is
  no interval (``low`` / ``high`` are None).
- :func:`paired_difference`: ``a - b`` over the seeds both have, and the t-interval of those
  differences. Pairing by seed removes what a seed does to both (its data order, its
  initialisation), so it is tighter than comparing two unpaired means when the seeds matter.
- :func:`key_effects`: per swept key, the effect of each value against a reference value: for every
  pair of configurations that differ only in that key (a key without effect in a configuration,
  e.g. lambda1 with K = 0, matches any value), the per-seed differences are averaged over the
  pairs, then the t-interval over the seeds. In a full grid that is the main effect; in a
  one-factor-at-a-time design (``experiments/ablation_tiny.yaml``) it is the one comparison that
  changes only that key.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Hashable, Mapping, Sequence

from scipy.stats import t as student_t

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    """Mean of ``n`` values with its ``confidence`` t-interval (``low`` / ``high`` None when n < 2)."""
    n: int
    mean: float
    std: float | None           # sample standard deviation (ddof = 1); None when n < 2
    low: float | None
    high: float | None
    confidence: float = CONFIDENCE

    @property
    def half_width(self) -> float | None:
        return None if self.low is None else (self.high - self.low) / 2.0

    @property
    def excludes_zero(self) -> bool | None:
        """True when the interval lies on one side of 0 (None: no interval)."""
        if self.low is None:
            return None
        return self.low > 0.0 or self.high < 0.0

    def format(self, digits: int = 4) -> str:
        """``0.0123 [0.0101, 0.0145]`` (``0.0123 (n=1)`` without an interval)."""
        if self.low is None:
            return f"{self.mean:.{digits}f} (n={self.n})"
        return f"{self.mean:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def t_critical(n: int, confidence: float = CONFIDENCE) -> float:
    """The two-sided critical value of Student's t with ``n - 1`` degrees of freedom."""
    return float(student_t.ppf((1.0 + confidence) / 2.0, n - 1))


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """Mean, sample std and the t-interval of the mean of ``values`` (NaNs dropped).

    Raises ValueError when no finite value is left."""
    xs = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not xs:
        raise ValueError("t_interval: no values")
    n = len(xs)
    mean = sum(xs) / n
    if n < 2:
        return Interval(n, mean, None, None, None, confidence)
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    half = t_critical(n, confidence) * std / math.sqrt(n)
    return Interval(n, mean, std, mean - half, mean + half, confidence)


@dataclass(frozen=True)
class PairedDifference:
    """``a - b`` over common seeds: the per-seed differences and their t-interval."""
    seeds: tuple
    differences: tuple[float, ...]
    interval: Interval


def paired_difference(a: Mapping[Hashable, float], b: Mapping[Hashable, float],
                      confidence: float = CONFIDENCE) -> PairedDifference | None:
    """``a[s] - b[s]`` for every seed ``s`` in both (values by seed); None when they share no seed."""
    seeds = tuple(sorted(s for s in a if s in b and _finite(a[s]) and _finite(b[s])))
    if not seeds:
        return None
    diffs = tuple(float(a[s]) - float(b[s]) for s in seeds)
    return PairedDifference(seeds, diffs, t_interval(diffs, confidence))


def _finite(value: Any) -> bool:
    return value is not None and not math.isnan(float(value))


# ----------------------------------------------------------------------- configurations and keys


@dataclass
class Configuration:
    """One configuration of a sweep: its swept values and its metric per seed."""
    config_id: str
    label: str
    values: dict[str, Any]                      # swept key -> value; a key without effect here is absent
    by_seed: dict[int, float]                   # seed -> the metric (finished trials)

    def interval(self, confidence: float = CONFIDENCE) -> Interval | None:
        vals = [v for v in self.by_seed.values() if _finite(v)]
        return t_interval(vals, confidence) if vals else None


def differ_only_in(a: Mapping[str, Any], b: Mapping[str, Any], key: str, keys: Sequence[str]) -> bool:
    """Whether configurations ``a`` and ``b`` have the same value for every key but ``key``; a key
    absent from one of them (no effect there) matches any value."""
    for other in keys:
        if other == key or other not in a or other not in b:
            continue
        if a[other] != b[other]:
            return False
    return True


@dataclass(frozen=True)
class Effect:
    """The effect of ``key = value`` against ``key = reference`` (see :func:`key_effects`)."""
    key: str
    value: Any
    reference: Any
    pairs: int                                  # configuration pairs that differ only in the key
    difference: PairedDifference | None         # averaged over the pairs, per seed


def key_effects(configs: Sequence[Configuration], key: str, keys: Sequence[str], values: Sequence[Any],
                reference: Any, confidence: float = CONFIDENCE) -> list[Effect]:
    """The effect of each of ``values`` (other than ``reference``) of ``key``: per seed, the mean
    over configuration pairs (value, reference) that differ only in ``key`` of the metric
    difference; then the t-interval over the seeds."""
    out = []
    for value in values:
        if value == reference:
            continue
        pairs = [(c, r) for c in configs if c.values.get(key, _ABSENT) == value
                 for r in configs if r.values.get(key, _ABSENT) == reference
                 and differ_only_in(c.values, r.values, key, keys)]
        per_seed: dict[int, list[float]] = {}
        for c, r in pairs:
            for seed in c.by_seed:
                if seed in r.by_seed and _finite(c.by_seed[seed]) and _finite(r.by_seed[seed]):
                    per_seed.setdefault(seed, []).append(c.by_seed[seed] - r.by_seed[seed])
        diff = None
        if per_seed:
            mean_by_seed = {s: sum(d) / len(d) for s, d in per_seed.items()}
            diff = paired_difference(mean_by_seed, {s: 0.0 for s in mean_by_seed}, confidence)
        out.append(Effect(key, value, reference, len(pairs), diff))
    return out


_ABSENT = object()
