"""The notebooks in a real browser: JupyterLab + headless Chromium (Selenium, system chromedriver).

Each ``notebooks/*.ipynb`` is run from a temporary copy in quick mode (``JKT_LAB_QUICK=1``) with
JupyterLab's own "Run All Cells"; the test then asserts that ipywidgets controls and plotly
graphs were drawn and that no cell produced an error. Screenshots go to
``$JKT_LAB_ARTIFACTS/screenshots/`` (default ``artifacts/screenshots/``, git-ignored) for CI to
keep (``python tests/browser_support.py [--full]`` regenerates ``docs/screenshots/``).

Without chromium / chromedriver / selenium the tests skip, except under ``CI=true`` where they
fail (CI installs them: Debian ``chromium chromium-driver``, pip ``selenium``).

    JKT_LAB_QUICK=1 pytest -m browser tests/test_browser.py -v
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from browser_support import REPO, LabServer, find_browser, make_driver, open_report, run_notebook

pytestmark = pytest.mark.browser

NOTEBOOK_DIR = REPO / "notebooks"
NOTEBOOKS = sorted(p.name for p in NOTEBOOK_DIR.glob("*.ipynb"))
TIMEOUT = float(os.environ.get("JKT_LAB_BROWSER_TIMEOUT", "240"))  # seconds per notebook
ARTIFACTS = Path(os.environ.get("JKT_LAB_ARTIFACTS") or REPO / "artifacts")
SHOTS = ARTIFACTS / "screenshots"

def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _require_browser() -> None:
    missing = []
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("python package selenium")
    chromium, driver = find_browser()
    if not chromium:
        missing.append("chromium (Debian package 'chromium' or $JKT_LAB_CHROMIUM)")
    if not driver:
        missing.append("chromedriver (Debian package 'chromium-driver' or $JKT_LAB_CHROMEDRIVER)")
    if missing:
        reason = "real-browser test needs " + ", ".join(missing)
        if _in_ci():
            pytest.fail(reason + " (CI=true: .ci/run must install them)", pytrace=False)
        pytest.skip(reason)


def _copy_notebooks(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))
    return dst


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab on 127.0.0.1 serving a temporary copy of notebooks/ (the committed notebooks are
    never opened, so nothing can be saved into them); stopped, with its kernels, at the end."""
    _require_browser()
    (ARTIFACTS / "browser_times.jsonl").unlink(missing_ok=True)
    work = tmp_path_factory.mktemp("lab")
    root = work / "root"
    root.mkdir()
    if NOTEBOOK_DIR.is_dir():
        _copy_notebooks(NOTEBOOK_DIR, root / "notebooks")
    (root / "samples").mkdir()
    server = LabServer(root=root, work=work)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def driver(lab, tmp_path):
    drv = make_driver(tmp_path / "chromium-profile")
    try:
        yield drv
    finally:
        drv.quit()
        lab.shutdown_kernels()


def _report(run) -> str:
    lines = [f"{run.name}: {run.seconds:.1f}s", f"progress: {run.progress}",
             f"rendered: { {k: v for k, v in run.rendered.items() if k != 'stderr'} }"]
    if run.screenshot:
        lines.append(f"screenshot: {run.screenshot}")
    if run.console:
        lines.append("browser console errors:\n  " + "\n  ".join(m[:300] for m in run.console[:10]))
    return "\n".join(lines)


def _log_time(run) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with (ARTIFACTS / "browser_times.jsonl").open("a") as f:
        f.write(json.dumps({"notebook": run.name, "seconds": round(run.seconds, 1),
                            "problems": run.problems()}) + "\n")


# ------------------------------------------------------------------------------------ samples
def _write_notebook(path: Path, cells: list[str]) -> str:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(src) for src in cells]
    nbformat.write(nb, path)
    return f"samples/{path.name}"


SAMPLE_CELLS = [
    "import ipywidgets as widgets\nimport plotly.graph_objects as go\nimport plotly.io as pio\n"
    "from IPython.display import display",
    "out = widgets.Output()\nslider = widgets.FloatSlider(value=1.0, min=0.5, max=2.0, description='sigma')\n"
    "def draw(change=None):\n"
    "    fig = go.Figure(go.Scatter(x=[1, 2, 3], y=[v * slider.value for v in (1, 4, 9)]))\n"
    "    out.clear_output(wait=True)\n"
    "    with out:\n"
    "        display(fig)\n"
    "slider.observe(draw, 'value')\ndraw()\ndisplay(widgets.VBox([slider, widgets.Button(description='run'), out]))",
    "display(go.Figure(go.Bar(y=[3, 1, 2])))\nprint('renderer:', pio.renderers.default)",
]


def test_harness_on_a_sample_notebook(lab, driver):
    """The harness itself: a slider + button panel whose figure is displayed from a callback's
    Output, and a figure displayed directly, both render; no problems are reported."""
    name = _write_notebook(lab.root / "samples" / "sample_ok.ipynb", SAMPLE_CELLS)
    run = run_notebook(driver, lab, name, timeout=TIMEOUT, screenshot=SHOTS / "sample_ok.png")
    assert run.problems() == [], _report(run)
    assert run.rendered["plots"] >= 2, _report(run)
    assert run.rendered["plotly_mime_outputs"] >= 2, _report(run)  # plotly's own JupyterLab renderer


def test_harness_reports_an_error(lab, driver):
    """A failing cell is reported (and does not turn into a 4-minute timeout)."""
    name = _write_notebook(lab.root / "samples" / "sample_error.ipynb",
                           SAMPLE_CELLS + ["raise ValueError('deliberate')", "print('never runs')"])
    run = run_notebook(driver, lab, name, timeout=60)
    problems = run.problems()
    assert any("ValueError: deliberate" in p for p in problems), _report(run)
    assert run.seconds < 60


# ------------------------------------------------------------------------------------ notebooks
@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_notebook_renders_in_browser(lab, driver, notebook):
    """Run all cells in JupyterLab; widgets and plotly graphs are drawn, no cell fails."""
    stem = Path(notebook).stem
    run = run_notebook(driver, lab, f"notebooks/{notebook}", timeout=TIMEOUT, screenshot=SHOTS / f"{stem}.png")
    _log_time(run)
    print(_report(run))
    problems = run.problems()
    assert not problems, "\n".join(problems) + "\n\n" + _report(run)


# ------------------------------------------------------------------------------------ committed reports, offline
COMMITTED_REPORTS = sorted((REPO / "results").glob("*/report.html"))


@pytest.fixture(scope="module")
def offline_driver(tmp_path_factory):
    """Headless Chromium with the network off (a classroom without internet)."""
    _require_browser()
    drv = make_driver(tmp_path_factory.mktemp("offline") / "profile", offline=True)
    try:
        yield drv
    finally:
        drv.quit()


def test_offline_means_offline(offline_driver, tmp_path):
    """The control: a report that loads plotly.js from the CDN draws nothing in this browser."""
    import plotly.graph_objects as go

    from jkt_lab.report import Document
    page = Document("cdn").figure(go.Figure(go.Bar(y=[1, 2]))).write(tmp_path, plotlyjs="cdn")["html"]
    state = open_report(offline_driver, page, timeout=10)
    assert state["figures"] == 1 and state["drawn"] == 0 and not state["plotly_loaded"], state


@pytest.mark.parametrize("report", COMMITTED_REPORTS, ids=lambda p: p.parent.name)
def test_committed_report_draws_offline(offline_driver, report):
    """Every committed report.html draws all its figures from disk with the network off: they
    share results/plotly.min.js, linked relatively."""
    state = open_report(offline_driver, report)
    assert state["plotly_loaded"] and state["figures"] > 0 and state["drawn"] == state["figures"], state
    assert all(src.startswith("file://") for src in state["scripts_with_src"]), state["scripts_with_src"]
