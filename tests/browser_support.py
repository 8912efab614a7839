"""Helpers for the real-browser notebook test (tests/test_browser.py).

A JupyterLab server on 127.0.0.1 serving a temporary copy of the notebooks, headless Chromium
driven by Selenium through Debian's chromedriver, and the JavaScript that opens a notebook, runs
all cells through JupyterLab's own command (``notebook:run-all-cells`` on ``window.jupyterapp``,
exposed with ``--LabApp.expose_app_in_browser``) and reads back what rendered.

Nothing here downloads a browser: the system ``chromium`` / ``chromedriver`` are used, or the
paths in ``$JKT_LAB_CHROMIUM`` / ``$JKT_LAB_CHROMEDRIVER``.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-quic", "--disable-dev-shm-usage", "--disable-extensions",
                  "--hide-scrollbars", "--window-size=1280,960", "--force-device-scale-factor=1")

# ipywidgets controls (any one proves the widget manager rendered a view) and plotly graphs.
WIDGET_SELECTOR = (".jp-Cell .widget-button, .jp-Cell .widget-slider, .jp-Cell .widget-dropdown, "
                   ".jp-Cell .widget-toggle-buttons, .jp-Cell .widget-checkbox, .jp-Cell .widget-text, "
                   ".jp-Cell .widget-radio")
# plotly's JupyterLab renderer (mimetype application/vnd.plotly.v1+json, renderer "plotly_mimetype")
# puts .js-plotly-plot on the output node itself (class jp-RenderedPlotly), or inside an Output widget.
PLOTLY_SELECTOR = ".jp-Cell .js-plotly-plot"
BAD_WIDGET_TEXT = ("Error displaying widget", "Loading widget...", "Error rendering output item")


# ------------------------------------------------------------------------------------ browser
def find_browser() -> tuple[str | None, str | None]:
    """(chromium, chromedriver) executables, or None for the one that is missing."""
    def pick(env: str, names: tuple[str, ...]) -> str | None:
        given = os.environ.get(env)
        if given:
            return given if os.access(given, os.X_OK) else None
        return next((p for p in map(shutil.which, names) if p), None)

    return (pick("JKT_LAB_CHROMIUM", ("chromium", "chromium-browser", "google-chrome")),
            pick("JKT_LAB_CHROMEDRIVER", ("chromedriver",)))


#: With the network off: every request that is not to this machine goes to a closed port
#: (file:// pages and the local JupyterLab still load; a CDN does not).
OFFLINE_FLAGS = ("--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=<-loopback>")


def make_driver(profile_dir: Path, *, offline: bool = False):
    """Headless Chromium through the system chromedriver, with a fresh profile; ``offline``: no
    network beyond this machine (:data:`OFFLINE_FLAGS`, and DevTools' offline emulation)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, chromedriver = find_browser()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    for flag in OFFLINE_FLAGS if offline else ():
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile_dir}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=chromedriver, log_output=str(profile_dir.parent / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_script_timeout(120)
    driver.set_page_load_timeout(120)
    if offline:
        driver.execute_cdp_cmd("Network.enable", {})
        driver.execute_cdp_cmd("Network.emulateNetworkConditions", {"offline": True, "latency": 0,
                                                                    "downloadThroughput": -1, "uploadThroughput": -1})
    return driver


def browser_errors(driver) -> list[str]:
    """SEVERE messages from the browser console (for failure reports, not assertions)."""
    try:
        return [e["message"] for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
    except Exception:  # noqa: BLE001 - diagnostics only
        return []


# ------------------------------------------------------------------------------------ server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# User settings for the test's JupyterLab: never autosave, keep every cell in the DOM (the
# default windowed notebook detaches off-screen cells, which would hide outputs from the checks),
# no news / update toasts over the screenshots.
LAB_SETTINGS = {
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                         "checkForUpdates": False},
}


@dataclass
class LabServer:
    """A JupyterLab process serving ``root`` (a temporary copy); ``stop()`` always ends it."""
    root: Path
    work: Path
    env_extra: dict = field(default_factory=dict)
    port: int = 0
    token: str = ""
    proc: subprocess.Popen | None = None
    log_path: Path | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict:
        env = dict(os.environ)
        for key, sub in (("JUPYTER_RUNTIME_DIR", "runtime"), ("JUPYTER_CONFIG_DIR", "config"),
                         ("JUPYTER_DATA_DIR", "data"),  # no user kernelspecs: the venv's python3
                         ("JUPYTERLAB_SETTINGS_DIR", "lab-settings"),
                         ("JUPYTERLAB_WORKSPACES_DIR", "lab-workspaces"), ("IPYTHONDIR", "ipython"),
                         ("JKT_LAB_RUNS", "jkt-runs"), ("JKT_LAB_CACHE", "jkt-cache"),
                         ("MPLCONFIGDIR", "mpl")):
            env[key] = str(self.work / sub)
            (self.work / sub).mkdir(parents=True, exist_ok=True)
        env["JKT_LAB_QUICK"] = "1"
        env["JUPYTER_PLATFORM_DIRS"] = "1"
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.env_extra)
        return env

    def start(self, timeout: float = 90.0) -> "LabServer":
        env = self.env()
        settings = Path(env["JUPYTERLAB_SETTINGS_DIR"])
        for rel, value in LAB_SETTINGS.items():
            (settings / rel).parent.mkdir(parents=True, exist_ok=True)
            (settings / rel).write_text(json.dumps(value))
        self.port, self.token = free_port(), secrets.token_hex(16)
        self.log_path = self.work / "jupyterlab.log"
        cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={self.port}",
               "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={self.token}",
               f"--ServerApp.root_dir={self.root}", "--ServerApp.port_retries=0",
               "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=None",
               "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
               "--ServerApp.terminals_enabled=False"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:  # CI containers run as root
            cmd.append("--allow-root")
        self.proc = subprocess.Popen(cmd, env=env, cwd=self.root, stdout=self.log_path.open("wb"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                self.api("GET", "/api/status")
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"JupyterLab did not answer on /api/status in {timeout:.0f}s:\n{self.log_tail()}")

    def api(self, method: str, path: str):
        req = urllib.request.Request(self.base + path, method=method,
                                     headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=10) as r:  # noqa: S310 (localhost only)
            body = r.read()
        return json.loads(body) if body else None

    def url(self, notebook: str) -> str:
        # ?reset starts from an empty workspace, so earlier notebooks are not reopened.
        return f"{self.base}/lab/tree/{urllib.parse.quote(notebook)}?reset&token={self.token}"

    def shutdown_kernels(self) -> None:
        try:
            for k in self.api("GET", "/api/kernels") or []:
                self.api("DELETE", f"/api/kernels/{k['id']}")
        except Exception:  # noqa: BLE001 - best effort between notebooks
            pass

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except (OSError, AttributeError):
            return ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.shutdown_kernels()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


# ------------------------------------------------------------------------------------ notebook
# All page-side logic lives in these scripts; each returns JSON text.
_JS_PANEL = """
const app = window.jupyterapp;
if (!app || !app.shell) return null;
const path = arguments[0];
let panel = null;
for (const w of app.shell.widgets('main')) {
  if (w.context && w.context.path === path && w.content && w.content.widgets) { panel = w; break; }
}
"""

JS_OPEN_STATE = _JS_PANEL + """
if (!panel) return JSON.stringify({ready: false, why: 'no panel'});
const dialog = document.querySelector('.jp-Dialog');
const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
return JSON.stringify({
  ready: panel.context.isReady && !!kernel && panel.sessionContext.isReady,
  kernel: kernel ? kernel.status : null,
  dialog: dialog ? dialog.innerText.slice(0, 300) : null});
"""

JS_RUN_ALL = _JS_PANEL + """
app.shell.activateById(panel.id);
app.commands.execute('notebook:run-all-cells');
return JSON.stringify({started: true});
"""

JS_PROGRESS = _JS_PANEL + """
if (!panel) return JSON.stringify({missing: true});
const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
let total = 0, done = 0, running = 0;
const errors = [];
panel.content.widgets.forEach((cell, i) => {
  if (cell.model.type !== 'code') return;
  if (!cell.model.sharedModel.getSource().trim()) return;
  total += 1;
  if (cell.model.executionCount !== null && cell.model.executionCount !== undefined) done += 1;
  const prompt = cell.node.querySelector('.jp-InputPrompt');
  if (prompt && prompt.textContent.includes('*')) running += 1;
  for (const o of cell.model.outputs.toJSON()) {
    if (o.output_type === 'error')
      errors.push(`cell #${i} (In[${cell.model.executionCount}]): ${o.ename}: ${o.evalue}`);
  }
});
return JSON.stringify({kernel: kernel ? kernel.status : null, total, done, running, errors});
"""

JS_RENDERED = _JS_PANEL + """
const node = panel.node;
const texts = sel => Array.from(node.querySelectorAll(sel)).map(e => e.innerText || e.textContent);
const plots = Array.from(node.querySelectorAll(arguments[2]));
return JSON.stringify({
  widgets: node.querySelectorAll(arguments[1]).length,
  widget_views: node.querySelectorAll('.jp-OutputArea-output .jupyter-widgets').length,
  plots: plots.length,
  plotly_mime_outputs: node.querySelectorAll('.jp-RenderedPlotly').length,
  drawn_plots: plots.filter(p => p.querySelector('.main-svg') && p.getBoundingClientRect().width > 50).length,
  mimetypes: Array.from(new Set(Array.from(node.querySelectorAll('.jp-OutputArea-output[data-mime-type]'))
                                   .map(e => e.getAttribute('data-mime-type')))),
  stderr: texts('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'),
  error_nodes: texts('[data-mime-type="application/vnd.jupyter.error"]'),
  outputs_text: texts('.jp-OutputArea-output').filter(t => arguments[3].some(b => t.includes(b)))
                                               .map(t => t.slice(0, 300)),
});
"""

JS_LAYOUT = _JS_PANEL + """
// Screenshot layout: single-document mode, side panels closed.
app.shell.mode = 'single-document';
app.shell.collapseLeft(); app.shell.collapseRight();
app.shell.activateById(panel.id);
return JSON.stringify({ok: true});
"""

JS_SCROLL = _JS_PANEL + """
// Put the cell holding the target (default: the first widget, else the first plot) at the top.
// A target "text=..." is the first cell whose text contains it.
const node = panel.node;
const target = arguments[1];
const byText = t => Array.from(node.querySelectorAll('.jp-Cell')).find(c => (c.innerText || '').includes(t));
const el = (target && (target.startsWith('text=') ? byText(target.slice(5)) : node.querySelector(target)))
           || node.querySelector(arguments[2]) || node.querySelector(arguments[3]);
if (!el) return JSON.stringify({framed: false});
const cell = el.closest('.jp-Cell') || el;
cell.scrollIntoView({block: 'start'});
return JSON.stringify({framed: true, top: cell.getBoundingClientRect().top});
"""


@dataclass
class NotebookRun:
    name: str
    seconds: float = 0.0
    progress: dict = field(default_factory=dict)
    rendered: dict = field(default_factory=dict)
    screenshot: Path | None = None
    console: list = field(default_factory=list)
    timed_out: str | None = None

    def problems(self) -> list[str]:
        """Everything that should fail the test, as readable lines."""
        p, r = self.progress, self.rendered
        out = [self.timed_out] if self.timed_out else []
        out += [f"error output: {e}" for e in p.get("errors", [])]
        if p.get("done", 0) < p.get("total", 0):
            out.append(f"only {p.get('done')} of {p.get('total')} code cells executed")
        if not r.get("widgets"):
            out.append("no ipywidgets control rendered (slider/button/dropdown/...)")
        if not r.get("drawn_plots"):
            out.append(f"no plotly graph drawn ({r.get('plots', 0)} plotly containers; "
                       f"output mimetypes {r.get('mimetypes')})")
        for t in r.get("stderr", []):
            if "Traceback" in t or "Error" in t:
                t = t.strip()
                out.append("stderr with a traceback/error: " + (t if len(t) < 1200 else t[:400] + "\n...\n" + t[-800:]))
        out += ["error output in the page: " + t.strip()[:600] for t in r.get("error_nodes", [])]
        out += ["widget placeholder left: " + t.strip()[:300] for t in r.get("outputs_text", [])]
        return out


def _json(driver, script, *args):
    raw = driver.execute_script(script, *args)
    return json.loads(raw) if raw else None


def wait_for(predicate, timeout: float, what: str, poll: float = 0.5):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(poll)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def run_notebook(driver, server: LabServer, name: str, *, timeout: float = 240.0,
                 screenshot: Path | None = None, frame_selector: str | None = None) -> NotebookRun:
    """Open ``name`` (relative to the server root), run all cells, wait, inspect, screenshot."""
    run = NotebookRun(name)
    t0 = time.monotonic()

    def opened():
        state = _json(driver, JS_OPEN_STATE, name)
        if state and state.get("dialog"):  # e.g. "Select Kernel" for a notebook without kernelspec
            for b in driver.find_elements("css selector", ".jp-Dialog .jp-mod-accept"):
                b.click()
            return False
        return state and state.get("ready") and state.get("kernel") == "idle"

    def finished():
        p = _json(driver, JS_PROGRESS, name) or {}
        run.progress = p
        if p.get("errors") and p.get("kernel") == "idle" and not p.get("running"):
            return True  # run-all stops at the first error: report it now
        return (p.get("kernel") == "idle" and not p.get("running")
                and p.get("total", 0) > 0 and p.get("done") == p.get("total"))

    def drawn():  # widgets and plotly draw asynchronously after the kernel is idle
        run.rendered = _json(driver, JS_RENDERED, name, WIDGET_SELECTOR, PLOTLY_SELECTOR,
                             list(BAD_WIDGET_TEXT)) or {}
        r = run.rendered
        return r.get("widgets") and r.get("drawn_plots") == r.get("plots") > 0 and not r.get("outputs_text")

    try:
        driver.get(server.url(name))
        wait_for(opened, 120, f"{name} to open with an idle kernel")
        _json(driver, JS_RUN_ALL, name)
        wait_for(finished, timeout, f"all cells of {name} to execute", poll=1.0)
        try:
            wait_for(drawn, 30, f"widgets and plots of {name} to render")
        except TimeoutError:
            pass  # problems() says what is missing
        run.progress = _json(driver, JS_PROGRESS, name) or run.progress
    except TimeoutError as e:
        run.timed_out = str(e)
        try:
            drawn()
        except Exception:  # noqa: BLE001 - diagnostics only
            pass
    finally:
        run.seconds = time.monotonic() - t0
        if screenshot is not None:
            try:
                take_screenshot(driver, name, screenshot, frame_selector)
                run.screenshot = screenshot
            except Exception:  # noqa: BLE001 - a screenshot must not hide the real failure
                pass
        run.console = browser_errors(driver)
    return run


def take_screenshot(driver, name: str, path: Path, frame_selector: str | None = None) -> Path:
    """Viewport screenshot of the notebook, scrolled to ``frame_selector`` (else the first widget,
    else the first plot). Layout first, then scroll, each with time to settle (plotly relayouts)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _json(driver, JS_LAYOUT, name)
    time.sleep(1.5)
    for _ in range(2):  # the second pass corrects for plots that resized after the first scroll
        _json(driver, JS_SCROLL, name, frame_selector, WIDGET_SELECTOR, PLOTLY_SELECTOR)
        time.sleep(0.7)
    driver.save_screenshot(str(path))
    return path


def compress_png(src: Path, dst: Path, colors: int = 192, width: int | None = None) -> Path:
    """Palette-quantised, optimised copy of a screenshot (docs images stay small)."""
    from PIL import Image

    img = Image.open(src).convert("RGB")
    if width and img.width > width:
        img = img.resize((width, round(img.height * width / img.width)), Image.LANCZOS)
    dst.parent.mkdir(parents=True, exist_ok=True)
    img.quantize(colors=colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
        dst, optimize=True)
    return dst


# ------------------------------------------------------------------------------------ report.html
# A report (jkt_lab.report) wraps each plotly figure in div.figure; a figure is drawn when its
# .js-plotly-plot holds plotly's .main-svg and has a width.
JS_REPORT = """
const figs = Array.from(document.querySelectorAll('div.figure'));
const drawn = figs.filter(f => f.querySelector('.js-plotly-plot .main-svg')
                              && f.querySelector('.js-plotly-plot').getBoundingClientRect().width > 50);
return JSON.stringify({
  ready: document.readyState, figures: figs.length, drawn: drawn.length,
  plotly_loaded: typeof window.Plotly !== 'undefined',
  tables: document.querySelectorAll('table').length,
  table_rows: document.querySelectorAll('table tbody tr').length,
  heatmaps: document.querySelectorAll('.js-plotly-plot .heatmaplayer image, .js-plotly-plot .imagelayer image').length,
  scripts_with_src: Array.from(document.querySelectorAll('script[src]')).map(s => s.src),
  height: document.documentElement.scrollHeight});
"""


def open_report(driver, path: Path, timeout: float = 60.0) -> dict:
    """Open a report.html from disk (file://) and wait until every figure is drawn (or time out);
    returns what the page holds (JS_REPORT) and the browser console's SEVERE messages."""
    driver.get(Path(path).resolve().as_uri())
    state = {}

    def drawn():
        state.update(_json(driver, JS_REPORT) or {})
        return state.get("ready") == "complete" and state.get("figures", 0) > 0 \
            and state.get("drawn") == state.get("figures")
    try:
        wait_for(drawn, timeout, f"the figures of {path} to draw")
    except TimeoutError:
        pass  # the caller asserts on the counts
    state["console"] = browser_errors(driver)
    return state


def report_screenshot(driver, path: Path, out: Path, *, height: int | None = None) -> Path:
    """Screenshot of a report opened with :func:`open_report`: the whole page (window resized to
    its height) or its top ``height`` pixels."""
    full = _json(driver, JS_REPORT)["height"]
    driver.set_window_size(1280, min(full, height or full) + 140)  # + the headless window's chrome
    time.sleep(1.5)  # plotly relayouts on resize
    out.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(out))
    return out


# ------------------------------------------------------------------------------------ docs
# docs/screenshots/<file>: notebook-name prefix -> [(file, where to scroll: a CSS selector, "text=<text in
# the cell>", or None for the first widget)]. Regenerate with:  python tests/browser_support.py [--full]
DOCS_SCREENSHOTS = {
    "01_": [("01_equivalence.png", None), ("01_fill_in.png", "text=Exercise 01.normalized_loss")],
    "02_": [("02_saliency.png", None), ("02_data.png", "text=A first look at the data")],
    "03_": [("03_distillation.png", None), ("03_fill_in.png", "text=Exercise 03.jacobian_step")],
    "04_": [("04_robustness.png", "text=panel = widgets.robustness_experiment_panel(")],
    "05_": [("05_transfer.png", "text=records = course.run_all(course.transfer_configs()")],
}


def update_docs_screenshots(full: bool = False, timeout: float = 1800.0) -> list[Path]:
    """Run the chosen notebooks in the browser (quick mode, or full size with ``full``) and write
    compressed screenshots into docs/screenshots/. A notebook with problems writes nothing."""
    import tempfile

    written = []
    with tempfile.TemporaryDirectory(prefix="jkt-docs-shots-") as tmp:
        work = Path(tmp)
        root = work / "root"
        shutil.copytree(REPO / "notebooks", root / "notebooks",
                        ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
        server = LabServer(root=root, work=work, env_extra={} if not full else {"JKT_LAB_QUICK": "0"})
        server.start()
        try:
            for prefix, shots in DOCS_SCREENSHOTS.items():
                names = sorted(p.name for p in (root / "notebooks").glob(f"{prefix}*.ipynb"))
                if not names:
                    print(f"no notebook {prefix}*.ipynb")
                    continue
                driver = make_driver(work / f"profile-{prefix}")
                try:
                    (fname, selector), *more = shots
                    run = run_notebook(driver, server, f"notebooks/{names[0]}", timeout=timeout,
                                       screenshot=work / fname, frame_selector=selector)
                    taken = [(fname, work / fname)] if run.screenshot else []
                    for fname, selector in more if not run.problems() else []:
                        taken.append((fname, take_screenshot(driver, f"notebooks/{names[0]}", work / fname, selector)))
                finally:
                    driver.quit()
                    server.shutdown_kernels()
                problems = run.problems()
                print(f"{names[0]}: {run.seconds:.0f}s, problems: {problems or 'none'}")
                for fname, shot in taken if not problems else []:
                    out = compress_png(shot, REPO / "docs" / "screenshots" / fname)
                    print(f"  -> {out} ({out.stat().st_size // 1024} KB)")
                    written.append(out)
        finally:
            server.stop()
    return written


def update_report_screenshot(report: Path, height: int | None = 2600) -> Path:
    """docs/screenshots/demo_report.png from a report written by ``jkt-lab demo`` (its top
    ``height`` pixels: verdict, tables, accuracy and saliency figures)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="jkt-report-shot-") as tmp:
        driver = make_driver(Path(tmp) / "profile")
        try:
            state = open_report(driver, report)
            print({k: v for k, v in state.items() if k != "scripts_with_src"})
            if state.get("drawn") != state.get("figures") or state.get("console"):
                raise RuntimeError(f"{report} did not render cleanly: {state}")
            shot = report_screenshot(driver, report, Path(tmp) / "report.png", height=height)
        finally:
            driver.quit()
        out = compress_png(shot, REPO / "docs" / "screenshots" / "demo_report.png", width=1000)
    print(f"  -> {out} ({out.stat().st_size // 1024} KB)")
    return out


def update_panel_screenshot(dataset: str = "cifar10", env: dict | None = None) -> Path:
    """docs/screenshots/03_panel_<dataset>.png: notebook 03's panel as a learner first sees it in
    full mode on ``dataset`` (its controls, "Your runs", and the committed results of its dataset),
    from a one-cell notebook that builds the panel exactly as notebook 03 does (nothing trains)."""
    import tempfile

    import nbformat
    with tempfile.TemporaryDirectory(prefix="jkt-panel-shot-") as tmp:
        work = Path(tmp)
        (work / "root" / "notebooks").mkdir(parents=True)
        nb = nbformat.v4.new_notebook()
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nb.cells = [nbformat.v4.new_markdown_cell("## 4. Your turn: the panel"),
                    nbformat.v4.new_code_cell("from jkt_lab import nbtools, widgets\n"
                                              "print(nbtools.course_summary(nbtools.course_config()))\n"
                                              "panel = widgets.distillation_panel(store=nbtools.course_store())\npanel")]
        nbformat.write(nb, work / "root" / "notebooks" / "panel.ipynb")
        server = LabServer(root=work / "root", work=work, env_extra={"JKT_LAB_QUICK": "0", "JKT_LAB_COURSE_DATASET": dataset,
                                                                     **(env or {})})
        server.start()
        try:
            driver = make_driver(work / "profile")
            try:
                driver.set_window_size(1280, 1240)
                run = run_notebook(driver, server, "notebooks/panel.ipynb", timeout=300)
                if run.progress.get("errors") or not run.rendered.get("widgets"):
                    raise RuntimeError(f"the panel did not render cleanly: {run.progress} {run.rendered}")
                shot = take_screenshot(driver, "notebooks/panel.ipynb", work / "panel.png", "text=Your turn")
            finally:
                driver.quit()
        finally:
            server.stop()
        out = compress_png(shot, REPO / "docs" / "screenshots" / f"03_panel_{dataset}.png", width=1000)
    print(f"  -> {out} ({out.stat().st_size // 1024} KB)")
    return out


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Regenerate docs/screenshots/*.png in headless Chromium.")
    parser.add_argument("--full", action="store_true", help="full-size run (JKT_LAB_QUICK=0), not quick mode")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per notebook")
    parser.add_argument("--panel", action="store_true",
                        help="only docs/screenshots/03_panel_cifar10.png (notebook 03's panel on CIFAR-10)")
    parser.add_argument("--report", type=Path, default=None,
                        help="only docs/screenshots/demo_report.png, from this report.html (jkt-lab demo's)")
    args = parser.parse_args()
    if args.panel:
        update_panel_screenshot("cifar10")
    elif args.report:
        update_report_screenshot(args.report)
    else:
        update_docs_screenshots(full=args.full, timeout=args.timeout)
