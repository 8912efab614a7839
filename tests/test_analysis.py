"""The one paired rule (jkt_lab.analysis.compare) against independent references, and the claims built on it."""
import random

import pytest
from scipy import stats

from jkt_lab.analysis import paired_compare, paired_differences
from jkt_lab.analysis.claims import control_comparisons, paper_claims
from jkt_lab.analysis.compare import holm


def pairs(leads, noise, seeds=3, seed=0, base=30.0):
    """{setting: [(a, b) per seed]}: b is base + seed noise, a is b + lead + its own noise."""
    rng = random.Random(seed)
    out = {}
    for setting, lead in leads.items():
        rows = []
        for _ in range(seeds):
            b = base + rng.gauss(0, 3)
            rows.append((b + lead + rng.gauss(0, noise), b))
        out[setting] = rows
    return out


def test_a_small_lead_in_two_of_three_settings_is_not_shown():
    c = paired_differences(pairs({1: 0.1, 5: 0.1, 10: -0.2}, noise=1.0), "kd+jacobian", "kd")
    assert c.verdict == "not supported"
    assert [s.status for s in c.settings] == ["not shown"] * 3
    assert "no setting shown" in c.sentence()


def test_a_consistent_lead_is_supported_and_its_mirror_is_opposite():
    data = pairs({1: 5.0, 5: 6.0, 10: 4.0}, noise=0.3)
    assert paired_differences(data, "a", "b").verdict == "supported"
    mirrored = {k: [(b, a) for a, b in v] for k, v in data.items()}
    c = paired_differences(mirrored, "b", "a")
    assert c.verdict == "opposite" and all(s.status == "opposite" for s in c.settings)


def test_interval_and_p_match_scipy_paired_t():
    data = pairs({1: 2.0}, noise=1.5, seeds=5, seed=3)
    s = paired_differences(data).settings[0]
    a, b = zip(*data[1])
    ref = stats.ttest_rel(a, b)
    assert s.p == pytest.approx(ref.pvalue, rel=1e-9)
    ci = ref.confidence_interval(0.95)
    assert (s.low, s.high) == (pytest.approx(ci.low, rel=1e-9), pytest.approx(ci.high, rel=1e-9))


def test_holm_step_down_by_hand():
    # sorted p: 0.01 (x3 = 0.03), 0.02 (x2 = 0.04), 0.04 (x1 = 0.04, kept monotone)
    assert holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])


def test_holm_turns_one_lucky_setting_of_many_into_not_shown():
    # p about 0.03 alone would pass 0.05; among six settings, Holm asks for 0.05 / 6
    lucky = {1: [(31.0, 30.0), (32.5, 31.0), (28.8, 28.0)]}   # differences 1.0, 1.5, 0.8: p about 0.03
    assert paired_differences(lucky).settings[0].status == "shown"
    many = {**lucky, **{k: [(30.0 + d, 30.0) for d in (0.5, -0.5, 0.2)] for k in (5, 10, 50, 100, 500)}}
    c = paired_differences(many)
    assert c.settings[0].p < 0.05 < c.settings[0].p_holm and c.verdict == "not supported"


def test_one_seed_is_not_tested():
    assert paired_differences({1: [(31.0, 30.0)]}).verdict == "not tested"


def record(variant, seed, acc, per_class=10, part="distillation", **metrics):
    return {"config": {"method": variant.split(" ")[0], "seed": seed, "per_class": per_class,
                       "extra": {"variant": variant, "part": part}},
            "metrics": {"test_acc": acc, **metrics}}


def test_records_are_paired_by_seed_not_by_order():
    recs = [record("a", s, 0.3 + s / 10 + 0.02) for s in (2, 0, 1)] + [record("b", s, 0.3 + s / 10) for s in (0, 1, 2)]
    c = paired_compare(recs, "a", "b", lambda r: r["metrics"]["test_acc"], label=lambda r: r["config"]["extra"]["variant"])
    assert c.settings[0].mean == pytest.approx(2.0) and c.settings[0].status == "shown"
    with pytest.raises(ValueError, match="deduplicate"):
        paired_compare(recs + recs[:1], "a", "b", lambda r: r["metrics"]["test_acc"],
                       label=lambda r: r["config"]["extra"]["variant"])


def test_robustness_is_judged_by_the_drop_from_clean():
    # kd+jacobian is 5 points ahead clean and loses more under noise: ahead in absolute terms, worse in robustness
    recs = []
    for s in range(3):
        for pc in (1, 10):
            recs.append(record("kd+jacobian", s, 0.40 + s / 100, pc, noise_acc={"0.1": 0.37 + s / 100}))
            recs.append(record("kd", s, 0.35 + s / 100, pc, noise_acc={"0.1": 0.34 + s / 100 + 0.001 * s}))
    (d,) = [c for c in paper_claims(recs, sigmas=("0.1",)) if c.letter == "d"]
    assert d.verdict == "opposite"
    drop, absolute = d.comparisons
    assert absolute.verdict == "supported" and drop.verdict == "opposite"


def test_controls_and_claims_name_what_was_not_run():
    recs = [record(v, s, acc) for s in range(3) for v, acc in (("kd+jacobian", 0.4), ("kd", 0.3))]
    claims = {c.letter: c.verdict for c in paper_claims(recs)}
    assert claims["c"] == "not tested" and claims["e"] == "not tested" and claims["b"] == "not tested"
    assert control_comparisons(recs) == []
