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
    chromium = os.environ.get("JKT_LAB_CHROMIUM") or next(
        (p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)
    driver = os.environ.get("JKT_LAB_CHROMEDRIVER") or shutil.which("chromedriver")
    return chromium, driver


def make_driver(profile_dir: Path):
    """Headless Chromium through the system chromedriver, with a fresh profile."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, chromedriver = find_browser()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile_dir}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=chromedriver, log_output=str(profile_dir.parent / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_script_timeout(120)
    driver.set_page_load_timeout(120)
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
    if (o.output_type === 'error') errors.push(`cell ${i}: ${o.ename}: ${o.evalue}`);
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

JS_FRAME = _JS_PANEL + """
// Single-document mode, sidebars closed, then put the first cell holding a widget (else a plot)
// at the top of the notebook's scroll area.
app.shell.mode = 'single-document';
app.shell.collapseLeft(); app.shell.collapseRight();
const node = panel.node;
const target = arguments[1] ? node.querySelector(arguments[1]) : null;
let el = target || node.querySelector(arguments[2]) || node.querySelector(arguments[3]);
if (!el) return JSON.stringify({framed: false});
const cell = el.closest('.jp-Cell') || el;
cell.scrollIntoView({block: 'start'});
return JSON.stringify({framed: true});
"""


@dataclass
class NotebookRun:
    name: str
    seconds: float = 0.0
    progress: dict = field(default_factory=dict)
    rendered: dict = field(default_factory=dict)
    screenshot: Path | None = None
    console: list = field(default_factory=list)

    def problems(self) -> list[str]:
        """Everything that should fail the test, as readable lines."""
        p, r = self.progress, self.rendered
        out = [f"error output: {e}" for e in p.get("errors", [])]
        if p.get("done", 0) < p.get("total", 0):
            out.append(f"only {p.get('done')} of {p.get('total')} code cells executed")
        if not r.get("widgets"):
            out.append("no ipywidgets control rendered (slider/button/dropdown/...)")
        if not r.get("drawn_plots"):
            out.append(f"no plotly graph drawn ({r.get('plots', 0)} plotly containers; "
                       f"output mimetypes {r.get('mimetypes')})")
        for t in r.get("stderr", []):
            if "Traceback" in t or "Error" in t:
                out.append("stderr with a traceback/error: " + t.strip()[:600])
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
    driver.get(server.url(name))

    def opened():
        state = _json(driver, JS_OPEN_STATE, name)
        if state and state.get("dialog"):  # e.g. "Select Kernel" for a notebook without kernelspec
            for b in driver.find_elements("css selector", ".jp-Dialog .jp-mod-accept"):
                b.click()
            return False
        return state and state.get("ready") and state.get("kernel") == "idle"

    wait_for(opened, 120, f"{name} to open with an idle kernel")
    _json(driver, JS_RUN_ALL, name)

    def finished():
        p = _json(driver, JS_PROGRESS, name) or {}
        run.progress = p
        if p.get("errors") and p.get("kernel") == "idle" and not p.get("running"):
            return True  # run-all stops at the first error: report it now
        return (p.get("kernel") == "idle" and not p.get("running")
                and p.get("total", 0) > 0 and p.get("done") == p.get("total"))

    try:
        wait_for(finished, timeout, f"all cells of {name} to execute (last state {run.progress})", poll=1.0)

        # Widgets and plotly draw asynchronously after the kernel is idle: give them a moment.
        def drawn():
            run.rendered = _json(driver, JS_RENDERED, name, WIDGET_SELECTOR, PLOTLY_SELECTOR,
                                 list(BAD_WIDGET_TEXT)) or {}
            r = run.rendered
            return r.get("widgets") and r.get("drawn_plots") == r.get("plots") > 0 and not r.get("outputs_text")

        try:
            wait_for(drawn, 30, f"widgets and plots of {name} to render")
        except TimeoutError:
            pass  # problems() reports what is missing
        run.progress = _json(driver, JS_PROGRESS, name) or run.progress
    finally:
        run.seconds = time.monotonic() - t0
        if screenshot is not None:
            try:
                screenshot.parent.mkdir(parents=True, exist_ok=True)
                _json(driver, JS_FRAME, name, frame_selector, WIDGET_SELECTOR, PLOTLY_SELECTOR)
                time.sleep(1.0)  # let plotly relayout after the panel widened
                driver.save_screenshot(str(screenshot))
                run.screenshot = screenshot
            except Exception:  # noqa: BLE001 - a screenshot must not hide the real failure
                pass
        run.console = browser_errors(driver)
    return run


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
