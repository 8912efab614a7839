"""The paper's five claims, judged from the records of ``jkt-lab reproduce`` (and the robustness
experiment's Proposition-1 runs) by the one paired rule of :mod:`.compare`.

(a) Jacobian matching helps few-shot distillation (Section 5.1, Table 1): kd+jacobian vs kd at
    ``per_class`` <= 10.
(b) The normalised Jacobian loss is the one to use (Section 3.2): kd+jacobian (normalised) vs
    kd+jacobian (squared), each at its validation-chosen weight.
(c) Proposition 1 in training: noise distillation (squared loss) and activation + sigma^2 x
    Jacobian matching train the same student (agreement within the seed-to-seed floor).
(d) Jacobian-matched students are more robust to Gaussian input noise (Section 5.2): judged by
    the *drop* from clean accuracy (accuracy under noise minus clean accuracy, paired by seed),
    so that a clean gain is not counted twice; absolute accuracy under noise is shown beside it.
(e) Matching Jacobians of attention maps helps transfer (Section 5.3): at+jacobian vs at.

Controls (is it the teacher's Jacobian, or any regulariser?): kd+jacobian against kd with its
own tuned regularisation, a penalty on the student's own Jacobian norm (no teacher Jacobian),
an untrained network's Jacobian, and the teacher's Jacobian of another example.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from ..results import lookup
from .compare import Comparison, paired_compare

__all__ = ["Claim", "paper_claims", "control_comparisons", "variant", "CONTROLS"]

CONTROLS = ("kd (regularised)", "kd+jacobian_norm", "kd+jacobian (untrained)", "kd+jacobian (shuffled)")
SCARCE = 10  # per_class up to this is "data is scarce"


def variant(record: Mapping) -> str:
    """A run's label: ``config.extra.variant`` when set (e.g. "kd+jacobian (squared)"), else the method."""
    return lookup(record, "config.extra.variant") or lookup(record, "config.method")


@dataclass
class Claim:
    """One claim of the paper: its letter, statement, verdict word and the comparisons behind it."""

    letter: str
    statement: str
    verdict: str
    comparisons: list[Comparison] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)   # the numbers, in sentences

    def markdown(self) -> str:
        return f"({self.letter}) **{self.statement}: {self.verdict}.** " + " ".join(self.lines)


def _part(records, part):
    return [r for r in records if lookup(r, "config.extra.part") == part]


def _per_class(r):
    return lookup(r, "config.per_class")


def _test(r):
    return lookup(r, "metrics.test_acc")


def _noise(sigma):
    return lambda r: (lookup(r, "metrics.noise_acc") or {}).get(sigma)


def _drop(sigma):
    def value(r):
        noisy, clean = (lookup(r, "metrics.noise_acc") or {}).get(sigma), lookup(r, "metrics.test_acc")
        return None if noisy is None or clean is None else noisy - clean
    return value


def _compare(records, a, b, value, keep=lambda s: True) -> Comparison:
    return paired_compare(records, a, b, value, label=variant, setting=_per_class, keep=keep)


def _overall(comparisons: Sequence[Comparison]) -> str:
    """A claim judged by several comparisons (e.g. fine-tune and scratch): supported only if every
    tested one is; opposite if every tested one is; else not supported."""
    tested = [c.verdict for c in comparisons if c.verdict != "not tested"]
    if not tested:
        return "not tested"
    if all(v == "supported" for v in tested):
        return "supported"
    if all(v == "opposite" for v in tested):
        return "opposite"
    return "not supported"


def _equivalence_claim(equivalence_rows: Sequence[Mapping] | None) -> Claim:
    statement = "Proposition 1 holds in training: noise distillation trains what sigma^2 x Jacobian matching trains"
    if not equivalence_rows:
        return Claim("c", statement, "not tested", lines=["No Proposition-1 training runs among these records."])
    lines, agree_all = [], []
    for row in equivalence_rows:
        agreed = row["agree within the floor"]
        everything = agreed != "none" and agreed.count(",") == 3
        agree_all.append(everything)
        lines.append(f"sigma {row['sigma']:g}: agree within the seed floor on {agreed}.")
    verdict = "supported" if any(agree_all) else "not supported"
    return Claim("c", statement, verdict, lines=lines + [
        "(agreement: the mean distance between students of the two methods is at most the seed-to-seed distance)"])


def paper_claims(records: Iterable[Mapping], equivalence_rows: Sequence[Mapping] | None = None,
                 sigmas: Sequence[str] = ("0.1", "0.2")) -> list[Claim]:
    """Claims (a)-(e) from the records of ``reproduce`` (``extra.part`` distillation / transfer);
    ``equivalence_rows``: :func:`jkt_lab.robustness.equivalence_table` of the Prop-1 runs, if any."""
    records = list(records)
    dist, transfer = _part(records, "distillation"), _part(records, "transfer")
    scarce = lambda s: s is not None and s <= SCARCE  # noqa: E731
    out = []
    a = _compare(dist, "kd+jacobian", "kd", _test, keep=scarce)
    out.append(Claim("a", f"Jacobian matching helps distillation when data is scarce (per_class <= {SCARCE}, "
                          "kd+jacobian vs kd, test accuracy)", a.verdict, [a], [a.sentence(what="per_class")]))
    b = _compare(dist, "kd+jacobian", "kd+jacobian (squared)", _test, keep=scarce)
    out.append(Claim("b", "The normalised Jacobian loss beats the squared one (each at its validation-chosen weight, "
                          f"per_class <= {SCARCE})", b.verdict, [b], [b.sentence(what="per_class")]))
    out.append(_equivalence_claim(equivalence_rows))
    drops = [_compare(dist, "kd+jacobian", "kd", _drop(s)) for s in sigmas]
    absolute = [_compare(dist, "kd+jacobian", "kd", _noise(s)) for s in sigmas]
    lines = []
    for s, d, ab in zip(sigmas, drops, absolute):
        lines.append(f"Drop from clean at sigma {s}: {d.sentence(what='per_class')} "
                     f"Absolute accuracy at sigma {s}: {ab.sentence(what='per_class')}")
    out.append(Claim("d", "Jacobian-matched students are more robust to Gaussian input noise (judged by the drop "
                          "from clean accuracy, paired by seed)", _overall(drops), drops + absolute, lines))
    inits = [_compare(transfer, f"at+jacobian ({init})", f"at ({init})", _test) for init in ("fine-tune", "scratch")]
    at_works = [_compare(transfer, "at (fine-tune)", "fine-tune (ce)", _test),
                _compare(transfer, "at (scratch)", "scratch (ce)", _test)]
    out.append(Claim("e", "Matching Jacobians of attention maps helps transfer learning (at+jacobian vs at)",
                     _overall(inits), inits + at_works,
                     [c.sentence(what="per_class") for c in inits]
                     + ["Does attention transfer itself help (against the same start without it)? "
                        + " ".join(c.sentence(what="per_class") for c in at_works)]))
    return out


def control_comparisons(records: Iterable[Mapping], controls: Sequence[str] = CONTROLS) -> list[tuple[str, Comparison]]:
    """kd+jacobian against each control, on every ``per_class`` of the distillation part; the
    claim "the teacher's Jacobian transfers knowledge" holds only where kd+jacobian beats them."""
    dist = _part(list(records), "distillation")
    return [(c, _compare(dist, "kd+jacobian", c, _test)) for c in controls
            if any(variant(r) == c for r in dist)]
