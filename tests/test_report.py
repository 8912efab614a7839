"""Reports: HTML tables (not markdown text), figures with readable axes, plotly.js embedded once,
a verdict computed from the numbers; the demo's report from its stored records, parsed as HTML
and opened in a real browser (headless Chromium, marked ``browser``)."""
from __future__ import annotations

import os
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from jkt_lab import cli
from jkt_lab.report import Document, method_summary, verdict, write_report
from jkt_lab.results import ResultStore, to_html, to_markdown

REPO = Path(__file__).resolve().parents[1]
PLOTLY_BUNDLE = re.compile(r"\* plotly\.js v\d")  # the banner at the top of plotly.min.js


class Page(HTMLParser):
    """What a report page holds: tags by name, class attributes, text, script sources."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: dict[str, int] = {}
        self.classes: dict[str, int] = {}
        self.text: list[str] = []
        self.script_src: list[str] = []
        self.table_cells = 0
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags[tag] = self.tags.get(tag, 0) + 1
        attrs = dict(attrs)
        for c in (attrs.get("class") or "").split():
            self.classes[c] = self.classes.get(c, 0) + 1
        if tag == "script" and attrs.get("src"):
            self.script_src.append(attrs["src"])
        if tag in ("td", "th"):
            self.table_cells += 1

    def handle_data(self, data):
        self.text.append(data)

    @property
    def all_text(self) -> str:
        return " ".join(self.text)


def fake(method, seed, acc, *, per_class=5, val=None, noise=None, history=True, cosine=None):
    hist = [{"epoch": e, "step": 10 * e, "loss/ce": 2.0 / e, "loss/loss": 2.5 / e, "train_acc": 0.1 * e,
             "val_acc": acc * e / 5} for e in range(1, 6)] if history else []
    metrics = {"test_acc": acc, "val_acc": acc if val is None else val, "train_acc": 1.0,
               "noise_acc": noise or {"0": acc, "0.1": acc - 0.05, "0.2": acc - 0.1}}
    if cosine is not None:
        metrics["saliency_cosine"] = cosine
    return {"config": {"method": method, "per_class": per_class, "seed": seed}, "metrics": metrics, "history": hist}


def test_to_html_is_the_markdown_table_as_html():
    rows = [{"method": "kd<b>", "acc": 0.5, "n": 3}, {"method": "a|b", "acc": None, "n": 4}]
    md, page = to_markdown(rows), Page(to_html(rows, caption="accuracy"))
    assert page.tags["table"] == 1 and page.tags["tr"] == 3 and page.table_cells == 9
    assert "kd<b>" in page.all_text and "a|b" in page.all_text and "<b>" not in to_html(rows).replace("&lt;b&gt;", "")
    assert 'class="num"' in to_html(rows) and "0.50" in md and "0.50" in page.all_text
    assert to_html([]) == ""


def test_document_renders_markdown_and_html(tmp_path):
    doc = Document("T").heading("Section").text("**bold** and `code`").items(["one", "two"])
    doc.table([{"a": 1}]).code("x = 1", summary="folded")
    md = doc.markdown()
    assert "## Section" in md and "| a |" in md and "- one" in md and "```" in md
    page = Page(doc.html())
    assert page.tags["strong"] == 1 and page.tags["code"] == 1 and page.tags["li"] == 2
    assert page.tags["table"] == 1 and page.tags["details"] == 1
    with pytest.raises(ValueError, match="plotlyjs"):
        doc.html("online")


def test_report_has_html_tables_figures_and_plotly_once(tmp_path):
    records = [fake(m, s, a + 0.01 * s, per_class=pc) for m, a in (("ce", 0.3), ("kd", 0.4), ("kd+jacobian", 0.5))
               for s in (0, 1) for pc in (1, 5, 10)]
    paths = write_report(records, tmp_path / "inline", title="T")
    text = paths["html"].read_text()
    page = Page(text)
    assert page.tags["table"] >= 2 and page.table_cells > 20
    assert "|---" not in text, "markdown table text inside the HTML"
    n_fig = page.classes["figure"]
    assert n_fig >= 3  # accuracy, noise, training curves
    assert len(PLOTLY_BUNDLE.findall(text)) == 1, "plotly.js must be embedded exactly once"
    assert text.count("Plotly.newPlot") == n_fig and not page.script_src
    cdn = write_report(records, tmp_path / "cdn", plotlyjs="cdn")["html"].read_text()
    assert not PLOTLY_BUNDLE.search(cdn) and len(Page(cdn).script_src) == 1
    assert "--plotlyjs inline" in cdn and "--plotlyjs inline" not in text   # offline, the linked page says how
    assert "| method |" in paths["markdown"].read_text()


def test_accuracy_axis_is_categorical_for_few_settings(tmp_path):
    from jkt_lab.report import _accuracy_plot
    one = [fake(m, s, 0.5, per_class=5) for m in ("kd", "ce") for s in (0, 1)]
    fig = _accuracy_plot([{**r, "variant": r["config"]["method"]} for r in one], "t")
    assert fig.layout.xaxis.type == "category" and {t.type for t in fig.data} == {"bar"}
    assert [list(t.x) for t in fig.data] == [["5"], ["5"]]
    many = [fake("kd", 0, 0.5, per_class=pc) for pc in (1, 5, 10)]
    assert _accuracy_plot([{**r, "variant": "kd"} for r in many], "t").layout.xaxis.type == "log"


def test_verdict_follows_the_numbers():
    clear = [fake("ce", s, 0.30 + 0.01 * s) for s in range(3)] + [fake("kd", s, 0.50 + 0.01 * s) for s in range(3)] \
        + [fake("kd+jacobian", s, (0.505, 0.50, 0.53)[s]) for s in range(3)]
    text = "\n".join(verdict(clear, chance=0.1))
    assert "Best student on the test images: **kd+jacobian**, 51.2%" in text
    assert "kd vs. ce: +20.0 points, 95% interval [+20.0, +20.0] over 3 paired seeds: a difference the seeds show" in text
    assert "not shown: the interval includes 0" in text.split("kd+jacobian vs. kd")[1].split("\n")[0]
    assert "The weakest student, ce, reaches 31.0%: 3.1 times chance (10% for 10 classes)" in text
    worse = [fake("kd", s, 0.5 + 0.05 * s) for s in range(3)] + [fake("kd+jacobian", s, 0.41 + 0.05 * s) for s in range(3)]
    assert "kd+jacobian vs. kd: -9.0 points" in "\n".join(verdict(worse)) and "kd is better" in "\n".join(verdict(worse))
    one_seed = verdict([fake("kd", 0, 0.5), fake("ce", 0, 0.4)])
    assert any("from one seed" in line for line in one_seed)
    rows = method_summary(clear)
    assert [r["method"] for r in rows] == ["ce", "kd", "kd+jacobian"] and rows[0]["test acc (%)"] == "31.0 ± 1.0"


# ------------------------------------------------------------------------------------ the demo's report
@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """``jkt-lab demo --quick`` once for the module (its own runs directory and caches)."""
    work = tmp_path_factory.mktemp("demo")
    with pytest.MonkeyPatch.context() as mp:
        for key, sub in (("JKT_LAB_RUNS", "runs"), ("JKT_LAB_CACHE", "cache"), ("JKT_LAB_DATA", "data")):
            mp.setenv(key, str(work / sub))
        out = work / "out"
        import contextlib
        import io
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            code = cli.main(["demo", "--quick", "--out", str(out), "--device", "cpu", "--no-progress"])
    assert code == 0
    return out, buf.getvalue()


def test_demo_prints_table_verdict_and_next_steps(demo):
    out, text = demo
    assert len(ResultStore(out / "results.jsonl")) == len(cli.DEMO_METHODS) * len(cli.DEMO_SEEDS)
    assert "| method | seeds |" in text and "verdict:" in text and "Smoke test, not a verdict" in text
    assert "jkt-lab reproduce --dataset cifar10" in text and "notebooks/01_noise_jacobian_equivalence.ipynb" in text
    assert str(out / "report.html") in text
    for method in cli.DEMO_METHODS:
        assert re.search(rf"^\| {re.escape(method)} \| {len(cli.DEMO_SEEDS)} \|", text, re.M), method


def test_demo_report_parses_as_html_with_tables_figures_and_saliency(demo):
    out, _ = demo
    text = (out / "report.html").read_text()
    page = Page(text)
    assert page.tags["table"] >= 4 and "|---" not in text
    assert page.classes["figure"] == 4  # accuracy, saliency, training curves, noise
    assert len(PLOTLY_BUNDLE.findall(text)) == 1 and not page.script_src
    words = page.all_text
    for heading in ("Verdict", "Students, mean ± std over seeds", "Where the models look: saliency maps",
                    "Training curves", "Accuracy against input noise", "How this was made", "Next steps"):
        assert heading in words, heading
    assert "jkt-lab demo --quick --out" in words and '"per_class": 20' in words  # the command and the config
    # saliency: one heatmap per model (teacher + each method) and test image
    import json
    figs = [json.loads(m) for m in re.findall(r"Plotly\.newPlot\(\s*\"[^\"]+\",\s*(\[.*?\]),\s*\{", text, re.S)]
    heat = [f for f in figs if any(t.get("type") == "heatmap" for t in f)]
    assert len(heat) == 1
    rows = {t["yaxis"] for t in heat[0] if t.get("type") == "heatmap"}
    assert len([t for t in heat[0] if t.get("type") == "heatmap"]) == 6 * (1 + len(cli.DEMO_METHODS))
    assert len(rows) == 6 * (1 + len(cli.DEMO_METHODS))
    md = (out / "REPORT.md").read_text()
    assert "## Verdict" in md and "| method | seeds |" in md


@pytest.mark.browser
def test_demo_report_renders_in_a_browser(demo, tmp_path):
    """report.html opened from disk in headless Chromium: every figure drawn, no console errors,
    nothing loaded from the network; screenshot under $JKT_LAB_ARTIFACTS/screenshots/."""
    from browser_support import find_browser, make_driver, open_report, report_screenshot
    try:
        import selenium  # noqa: F401
    except ImportError:
        selenium = None
    chromium, driver_path = find_browser()
    if selenium is None or not chromium or not driver_path:
        reason = "needs selenium, chromium and chromedriver"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(reason + " (CI=true: .ci/run must install them)", pytrace=False)
        pytest.skip(reason)
    out, _ = demo
    driver = make_driver(tmp_path / "profile")
    try:
        state = open_report(driver, out / "report.html")
        artifacts = Path(os.environ.get("JKT_LAB_ARTIFACTS") or REPO / "artifacts")
        report_screenshot(driver, out / "report.html", artifacts / "screenshots" / "demo_report.png")
    finally:
        driver.quit()
    assert state["figures"] == 4 and state["drawn"] == state["figures"], state
    assert state["plotly_loaded"] and not state["scripts_with_src"], state
    assert state["heatmaps"] >= 6 * (1 + len(cli.DEMO_METHODS)), state
    assert state["tables"] >= 4 and not state["console"], state


def test_teacher_accuracy_line_leaves_out_transfer_teachers(tmp_path):
    """A transfer teacher (source classes) scored on the target's labels is no teacher accuracy."""
    def rec(seed, teacher_acc, **config):
        return {"config": {"method": "kd", "seed": seed, "per_class": 5, **config},
                "metrics": {"test_acc": 0.4, "teacher_test_acc": teacher_acc}}
    records = [rec(0, 0.85, n_test=2000), rec(1, 0.85, n_test=2000),
               rec(0, 0.043, teacher_classes=[0, 1], classes=[2, 3], n_test=2000)]
    text = write_report(records, tmp_path, plotlyjs="cdn")["markdown"].read_text()
    assert "Teacher test accuracy, on the test images the students are scored on: 85.00% (the first 2000 test " \
           "images)" in text and "4.30%" not in text


def test_a_reproduce_report_leads_with_its_claims_and_marks_the_chosen_settings(tmp_path):
    def rec(variant, part, seed, acc, **config):
        return {"config": {"method": variant.split(" ")[0], "seed": seed, "per_class": 10, "n_test": 2000,
                           "jacobian_weight": 1.0, "temperature": 4.0, **config,
                           "extra": {"variant": variant, "part": part}},
                "metrics": {"test_acc": acc, "val_acc": acc, "teacher_test_acc": 0.85}}
    records = [rec("kd+jacobian", "select", 10, 0.30 + w / 1000, jacobian_weight=w) for w in (1.0, 10.0, 100.0)]
    records += [rec("kd", "select", 10, acc, temperature=t) for t, acc in ((2.0, 0.31), (4.0, 0.33), (8.0, 0.32))]
    records += [rec(v, "distillation", s, acc + s / 100) for s in range(3) for v, acc in (("kd", 0.3), ("kd+jacobian", 0.4))]
    text = write_report(records, tmp_path, plotlyjs="cdn")["markdown"].read_text()
    headings = re.findall(r"^## (.+)$", text, re.M)
    assert headings[0] == "Claims of the paper" and "Hyper-parameters chosen on the validation split" in headings
    assert "the first 2000 test images" in text
    section = text.split("## Hyper-parameters chosen on the validation split")[1].split("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("| kd")]
    assert len(rows) == 6 and sum("chosen" in line for line in rows) == 2
    assert "| kd+jacobian | jacobian_weight=100 | 40.0 | chosen |" in section      # only the searched setting shown
    assert "| kd | temperature=4 | 33.0 | chosen |" in section


def test_transfer_runs_get_no_saliency_cosine_table(tmp_path):
    """A transfer student's output k is another class than its source teacher's output k."""
    def rec(part, seed, **config):
        return {"config": {"method": "at", "seed": seed, "per_class": 5, **config, "extra": {"variant": "at", "part": part}},
                "metrics": {"test_acc": 0.5, "saliency_cosine": 0.3}}
    same = write_report([rec("distillation", s) for s in range(2)], tmp_path / "a", plotlyjs="cdn")["markdown"].read_text()
    other = write_report([rec("transfer", s, teacher_classes=[0, 1], classes=[2, 3]) for s in range(2)],
                         tmp_path / "b", plotlyjs="cdn")["markdown"].read_text()
    assert "saliency cosine" in same and "saliency cosine" not in other
