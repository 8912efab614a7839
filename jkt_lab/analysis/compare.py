"""One statistical rule for "A beats B", paired by seed.

Runs of the same seed share the training subset, the batch order, the initialisation and the
test images, so two methods are compared by their per-seed differences ``d_s = A_s - B_s``, not
by two unpaired means. For each *setting* (e.g. ``per_class``) of a claim:

- the mean difference, its 95% confidence interval ``mean ± t(0.975, n-1) * sd / sqrt(n)``
  (Student's t with n-1 degrees of freedom), and the two-sided paired t-test's p-value;
- Holm's step-down correction of those p-values across the settings of the claim (Holm 1979), so
  that testing six settings does not make one lucky setting a finding;
- a setting is **shown** when its Holm-adjusted p is below ``alpha`` and the mean favours A,
  **opposite** when it is below ``alpha`` and the mean favours B, else **not shown**.

The claim's verdict: **supported** when at least one setting is shown, none is opposite, and A
is ahead in more than half the settings (the sign count); **opposite** in the mirror case;
**not supported** when nothing is shown either way (or shown both ways: then the sentence says
so); **not tested** when no setting has two or more paired seeds.
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from scipy import stats as _stats

__all__ = ["Setting", "Comparison", "paired_differences", "paired_compare", "holm"]

VERDICTS = ("supported", "not supported", "opposite", "not tested")


@dataclass(frozen=True)
class Setting:
    """One setting's paired comparison (values in the caller's units, e.g. points of accuracy)."""

    setting: Hashable
    n: int                      # paired seeds
    a_mean: float
    b_mean: float
    mean: float                 # mean of A - B over the paired seeds
    low: float | None           # 95% t interval of the mean difference (None with one seed)
    high: float | None
    p: float | None             # two-sided paired t-test
    p_holm: float | None = None
    status: str = "not shown"   # shown | opposite | not shown

    def interval(self, digits: int = 1) -> str:
        if self.low is None:
            return f"{self.mean:+.{digits}f} (one seed)"
        return f"{self.mean:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}]"


@dataclass(frozen=True)
class Comparison:
    """A claim "A beats B" over its settings, judged by the rule of this module."""

    a: str
    b: str
    verdict: str                # one of VERDICTS
    settings: tuple[Setting, ...]
    wins: int                   # settings where A's mean difference is > 0
    alpha: float = 0.05

    @property
    def shown(self) -> list[Setting]:
        return [s for s in self.settings if s.status == "shown"]

    @property
    def opposite(self) -> list[Setting]:
        return [s for s in self.settings if s.status == "opposite"]

    def sentence(self, unit: str = " points", digits: int = 1, what: str = "") -> str:
        """The verdict with its numbers: sign count, settings shown after Holm, mean difference.
        ``what`` names the setting (e.g. "per_class"): "3 of 3 per_class settings", "at per_class 5"."""
        name = f"{what} " if what else ""
        if self.verdict == "not tested":
            return f"{self.a} vs. {self.b}: not tested (no {name}setting with two or more paired seeds)."
        m = len(self.settings)
        mean = statistics.fmean(s.mean for s in self.settings)
        parts = [f"{self.a} ahead in {self.wins} of {m} {name}setting{'s' if m != 1 else ''}",
                 f"mean paired difference {mean:+.{digits}f}{unit}"]
        where = lambda group: ", ".join(f"{name}{s.setting} ({s.interval(digits)})" for s in group)  # noqa: E731
        if self.shown:
            parts.append(f"shown (paired t, Holm, alpha {self.alpha:g}) at {where(self.shown)}")
        if self.opposite:
            parts.append(f"opposite at {where(self.opposite)}")
        if not self.shown and not self.opposite:
            parts.append("no setting shown after Holm's correction")
        return f"{self.a} vs. {self.b}: **{self.verdict}** ({'; '.join(parts)})."

    def rows(self, digits: int = 2) -> list[dict]:
        """One table row per setting: both means, the paired difference with its interval, p, Holm p, status."""
        out = []
        for s in self.settings:
            out.append({"setting": s.setting, "n": s.n, self.a: round(s.a_mean, digits),
                        self.b: round(s.b_mean, digits), "difference": round(s.mean, digits),
                        "95% interval": "" if s.low is None else f"[{s.low:+.{digits}f}, {s.high:+.{digits}f}]",
                        "p": "" if s.p is None else f"{s.p:.3f}",
                        "p (Holm)": "" if s.p_holm is None else f"{s.p_holm:.3f}", "status": s.status})
        return out


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input's order (monotone, capped at 1)."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def _setting(setting, a: Sequence[float], b: Sequence[float]) -> Setting:
    d = [x - y for x, y in zip(a, b)]
    n = len(d)
    mean = statistics.fmean(d)
    if n < 2:
        return Setting(setting, n, statistics.fmean(a), statistics.fmean(b), mean, None, None, None)
    sd = statistics.stdev(d)
    se = sd / math.sqrt(n)
    if se == 0:
        half, p = 0.0, (1.0 if mean == 0 else 0.0)
    else:
        half = float(_stats.t.ppf(0.975, n - 1)) * se
        p = float(2 * _stats.t.sf(abs(mean) / se, n - 1))
    return Setting(setting, n, statistics.fmean(a), statistics.fmean(b), mean, mean - half, mean + half, p)


def paired_differences(pairs: Mapping[Hashable, Iterable[tuple[float, float]]], a: str = "A", b: str = "B", *,
                       alpha: float = 0.05) -> Comparison:
    """Judge "A beats B" from ``{setting: [(a_value, b_value) per paired seed]}`` (higher is better)."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    raw = []
    for setting, values in pairs.items():
        values = [(float(x), float(y)) for x, y in values]
        if values:
            raw.append(_setting(setting, [x for x, _ in values], [y for _, y in values]))
    tested = [s for s in raw if s.p is not None]
    adjusted = dict(zip((id(s) for s in tested), holm([s.p for s in tested]))) if tested else {}
    settings = []
    for s in raw:
        p_holm = adjusted.get(id(s))
        status = "not shown"
        if p_holm is not None and p_holm < alpha and s.mean != 0:
            status = "shown" if s.mean > 0 else "opposite"
        settings.append(Setting(**{**s.__dict__, "p_holm": p_holm, "status": status}))
    wins = sum(s.mean > 0 for s in settings)
    losses = sum(s.mean < 0 for s in settings)
    shown = any(s.status == "shown" for s in settings)
    opposite = any(s.status == "opposite" for s in settings)
    if not tested:
        verdict = "not tested"
    elif shown and not opposite and wins > len(settings) / 2:
        verdict = "supported"
    elif opposite and not shown and losses > len(settings) / 2:
        verdict = "opposite"
    else:
        verdict = "not supported"
    return Comparison(a, b, verdict, tuple(settings), wins, alpha)


def paired_compare(records: Iterable[Mapping], a: str, b: str, value: Callable[[Mapping], float | None], *,
                   label: Callable[[Mapping], str], setting: Callable[[Mapping], Hashable] = lambda r: None,
                   pair: Callable[[Mapping], Hashable] | None = None, keep: Callable[[Hashable], bool] = lambda s: True,
                   scale: float = 100.0, alpha: float = 0.05) -> Comparison:
    """:func:`paired_differences` from records: ``label(r)`` says which side a record is on,
    ``setting(r)`` which setting, ``pair(r)`` which seed (default ``config.seed``); ``value(r)``
    is the quantity (None: left out), multiplied by ``scale`` (100: fractions to points). Only
    seeds present on both sides of a setting are paired; a duplicate (same side, setting, seed)
    raises, since it would weigh one seed twice."""
    pair = pair or (lambda r: (r.get("config") or {}).get("seed"))
    sides: dict[str, dict] = {a: {}, b: {}}
    for r in records:
        side = label(r)
        if side not in sides:
            continue
        s = setting(r)
        if not keep(s):
            continue
        v = value(r)
        if v is None:
            continue
        slot = sides[side].setdefault(s, {})
        seed = pair(r)
        if seed in slot:
            raise ValueError(f"two records of {side!r} at setting {s!r} with seed {seed!r}: deduplicate the records first")
        slot[seed] = scale * float(v)
    pairs = {}
    for s in sorted(set(sides[a]) & set(sides[b]), key=lambda v: (v is None, str(type(v)), v if v is not None else 0)):
        seeds = sorted(set(sides[a][s]) & set(sides[b][s]), key=str)
        if seeds:
            pairs[s] = [(sides[a][s][k], sides[b][s][k]) for k in seeds]
    return paired_differences(pairs, a, b, alpha=alpha)
