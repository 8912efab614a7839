"""ipywidgets panels for the notebooks: each function returns a panel (an ``ipywidgets.VBox``).

Every panel exposes its controls (``panel.controls[name]``), a Run button (``panel.run_button``;
``panel.run_button.click()`` runs it headlessly), a status line (``panel.status``), the last
plotly figure (``panel.figure``, a ``plotly.graph_objects.Figure``) and the last error
(``panel.error``, None after a successful run). Figures are shown by re-displaying a
``go.Figure`` in an ``ipywidgets.Output``, which needs no front-end extension beyond ipywidgets.

    equivalence_panel()                      # notebook 01: the sigma sweep
    saliency_panel(models, data)             # notebook 02: input-Jacobian saliency maps
    distillation_panel(store=...)            # notebook 03: train a student, live curve, results table
    robustness_panel(models, data)           # notebook 04: accuracy under input noise
    transfer_panel(store=...)                # notebook 05: transfer-learning runs
"""
from __future__ import annotations

import html
from collections.abc import Mapping
from pathlib import Path

import ipywidgets as widgets
import plotly.graph_objects as go
import torch

from . import viz
from .config import Config

__all__ = ["Panel", "equivalence_panel", "saliency_panel", "distillation_panel", "robustness_panel",
           "transfer_panel", "html_table", "SIGMA_GRID"]

#: sigma values the equivalence panel offers (log-spaced).
SIGMA_GRID = tuple(float(f"{m}e{e}") for e in range(-4, 0) for m in (1, 2, 5)) + (1.0,)

_STYLE = {"description_width": "initial"}


def _interactive() -> bool:
    """True inside an IPython shell (notebook or console); headless (tests, scripts) False."""
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython comes with ipywidgets
        return False
    return get_ipython() is not None


def html_table(rows, columns=None, *, empty: str = "no results yet") -> str:
    """An HTML table of row mappings (for ``ipywidgets.HTML``)."""
    rows = list(rows)
    if not rows:
        return f"<i>{html.escape(empty)}</i>"
    columns = columns or list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th style='padding:2px 8px'>{html.escape(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td style='padding:2px 8px'>{html.escape(_cell(r.get(c)))}</td>"
                                    for c in columns) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def _devices() -> list[str]:
    return ["auto", "cpu"] + (["cuda"] if torch.cuda.is_available() else [])


class Panel(widgets.VBox):
    """Controls, a Run button, a status line and an output area showing ``self.figure``."""

    def __init__(self, title: str, controls: Mapping[str, widgets.Widget], *, run_label: str = "Run",
                 extra: tuple[widgets.Widget, ...] = (), below: tuple[widgets.Widget, ...] = ()):
        self.controls = dict(controls)
        self.run_button = widgets.Button(description=run_label, button_style="primary", icon="play")
        self.status = widgets.HTML()
        self.output = widgets.Output()
        self.figure: go.Figure | None = None
        self.error: Exception | None = None
        self.run_button.on_click(self._on_click)
        grid = widgets.GridBox(list(self.controls.values()),
                               layout=widgets.Layout(grid_template_columns="repeat(2, minmax(280px, 1fr))"))
        super().__init__([widgets.HTML(f"<b>{html.escape(title)}</b>"), grid,
                          widgets.HBox([self.run_button, *extra]), self.status, self.output, *below])

    def _on_click(self, _button=None) -> None:
        self.run_button.disabled = True
        self.error = None
        try:
            self.run()
        except Exception as err:  # shown in the panel; kept for tests and for the curious
            self.error = err
            self.status.value = f"<span style='color:#b00020'>{html.escape(type(err).__name__)}: " \
                                f"{html.escape(str(err))}</span>"
        finally:
            self.run_button.disabled = False

    def run(self) -> None:  # pragma: no cover - each panel defines it
        raise NotImplementedError

    def show(self, fig: go.Figure, output: widgets.Output | None = None) -> None:
        """Make ``fig`` the panel's figure and display it in the output area."""
        self.figure = fig
        if not _interactive():
            return
        from IPython.display import display
        out = output or self.output
        out.clear_output(wait=True)
        with out:
            display(fig)

    def say(self, text: str) -> None:
        self.status.value = html.escape(text).replace("\n", "<br>")


# --------------------------------------------------------------------------- 01 equivalence


class EquivalencePanel(Panel):
    def __init__(self, sigmas=(0.01, 0.1), activation="tanh", n_samples=256, loss="squared", n_sigmas=6):
        from .theory import LOSSES
        controls = {
            "sigma": widgets.SelectionRangeSlider(options=[(f"{s:g}", s) for s in SIGMA_GRID], value=tuple(sigmas),
                                                  description="sigma range", style=_STYLE,
                                                  layout=widgets.Layout(width="95%")),
            "activation": widgets.Dropdown(options=["tanh", "relu"], value=activation, description="activation",
                                           style=_STYLE),
            "n_samples": widgets.Dropdown(options=[64, 128, 256, 512, 1024, 4096], value=n_samples,
                                          description="noise samples", style=_STYLE),
            "loss": widgets.Dropdown(options=list(LOSSES), value=loss, description="loss", style=_STYLE),
        }
        self.n_sigmas = n_sigmas
        self.sweep: dict | None = None
        super().__init__("Noise vs. Jacobian: Monte Carlo against the Taylor expansion", controls)

    def run(self) -> None:
        from .nbtools import toy_pair
        from .theory import same_linear_region, sigma_sweep
        c = {k: w.value for k, w in self.controls.items()}
        lo, hi = c["sigma"]
        if not lo < hi:
            raise ValueError("choose a sigma range with two different ends")
        sigmas = torch.logspace(torch.log10(torch.tensor(lo)), torch.log10(torch.tensor(hi)), self.n_sigmas,
                                dtype=torch.float64).tolist()
        teacher, student, x = toy_pair(c["activation"])
        self.say("sampling...")
        self.sweep = sigma_sweep(teacher, student, x, sigmas, n_samples=c["n_samples"], loss=c["loss"])
        s = self.sweep
        lines = [f"slope |MC - noise-free| = {s['slope_noise_free']:.2f} (theory 2); "
                 f"|MC - prediction| = {s['slope_prediction']:.2f} (theory 4 for smooth nets); "
                 f"|MC - Proposition 1| = {s['slope_proposition1']:.2f}",
                 f"curvature term = {s['rows'][0]['curvature_term']:.3g}, "
                 f"Jacobian term = {s['rows'][0]['jacobian_term']:.3g}"]
        if c["activation"] == "relu":
            frac = min(same_linear_region(m, x, hi) for m in (teacher, student))
            lines.append(f"noisy copies in the linear region of x at sigma={hi:g}: {100 * frac:.1f}% "
                         "(where it is 100%, MC and the prediction agree up to rounding)")
        self.say("\n".join(lines))
        self.show(viz.equivalence_figure(self.sweep))


def equivalence_panel(**defaults) -> EquivalencePanel:
    """Sweep sigma for a toy teacher/student pair (:func:`jkt_lab.nbtools.toy_pair`) and plot the
    gaps between Monte Carlo and the expansion (:func:`jkt_lab.viz.equivalence_figure`)."""
    return EquivalencePanel(**defaults)


# --------------------------------------------------------------------------- 02 saliency


class SaliencyPanel(Panel):
    OUTPUTS = ("top1", "label", "random", "all", "class")

    def __init__(self, models: Mapping[str, torch.nn.Module], data, *, image: int = 0, output: str = "top1"):
        if not models:
            raise ValueError("models must map at least one name to a model")
        self.models, self.data = dict(models), data
        n = data.x_test.shape[0]
        controls = {
            "image": widgets.IntSlider(value=image, min=0, max=n - 1, description="test image", style=_STYLE),
            "class": widgets.Dropdown(options=[(name, i) for i, name in enumerate(data.classes)], value=0,
                                      description="class (output='class')", style=_STYLE),
            "model": widgets.Dropdown(options=["all", *self.models], value="all", description="model",
                                      style=_STYLE),
            "output": widgets.Dropdown(options=list(self.OUTPUTS), value=output, description="output",
                                       style=_STYLE),
        }
        super().__init__("Saliency: |d output / d input|, max over colour channels", controls, run_label="Redraw")
        for w in self.controls.values():
            w.observe(lambda _change: self._on_click(), names="value")

    def run(self) -> None:
        from .saliency import mask_overlap, saliency
        c = {k: w.value for k, w in self.controls.items()}
        i = c["image"]
        x, y = self.data.x_test[i:i + 1], self.data.y_test[i:i + 1]
        names = list(self.models) if c["model"] == "all" else [c["model"]]
        output = torch.tensor([c["class"]]) if c["output"] == "class" else c["output"]
        maps, lines = {}, []
        for name in names:
            model = self.models[name]
            device = next(model.parameters()).device
            with torch.no_grad():
                pred = int(model(x.to(device)).argmax(1))
            m = saliency(model, x.to(device), output, labels=y.to(device), seed=i).cpu()
            maps[f"{name}<br>(says {self.data.classes[pred]})"] = m[0]
            if self.data.mask_test is not None:
                ov = mask_overlap(m, self.data.mask_test[i:i + 1])
                lines.append(f"{name}: {100 * ov['overlap']:.0f}% of its top pixels on the object "
                             f"(chance {100 * ov['chance']:.0f}%)")
        what = f"class {self.data.classes[c['class']]}" if c["output"] == "class" else c["output"]
        title = f"image {i}, true class {self.data.classes[int(y)]}; output: {what}"
        self.say("\n".join(lines))
        self.show(viz.maps_figure(x[0], {"saliency": maps}, title=title))


def saliency_panel(models: Mapping[str, torch.nn.Module], data, **defaults) -> SaliencyPanel:
    """Saliency maps of one test image for each model (``{"teacher": ..., "kd": ...}``); changing a
    control redraws. ``output``: top1, label, random, all, or "class" (the class control's output)."""
    panel = SaliencyPanel(models, data, **defaults)
    panel._on_click()
    return panel


# --------------------------------------------------------------------------- 03 distillation


class DistillationPanel(Panel):
    METHODS = ("ce", "kd", "activations", "kd+jacobian", "activations+jacobian", "noise")
    DATASETS = ("shapes", "digits", "cifar10", "imagefolder", "npz")

    def __init__(self, store, base: Config | None = None):
        from .nbtools import committed_results, course_config
        self.store_path = Path(store)
        self.base = base or course_config()
        b = self.base
        per_class = sorted({1, 2, 5, 10, 20, 50, b.per_class or 10})
        controls = {
            "dataset": widgets.Dropdown(options=list(dict.fromkeys((*self.DATASETS, b.dataset))), value=b.dataset,
                                        description="dataset", style=_STYLE),
            "data_path": widgets.Text(value=b.data_path or "", placeholder="your folder or .npz (imagefolder, npz)",
                                      description="data_path", style=_STYLE),
            "method": widgets.Dropdown(options=list(self.METHODS), value=b.method, description="method",
                                       style=_STYLE),
            "jacobian_weight": widgets.FloatLogSlider(value=b.jacobian_weight, base=10, min=-2, max=2, step=0.25,
                                                      description="jacobian_weight", style=_STYLE),
            "sigma": widgets.FloatSlider(value=b.sigma, min=0.0, max=0.5, step=0.01,
                                         description="sigma (method noise)", style=_STYLE),
            "per_class": widgets.Dropdown(options=per_class, value=b.per_class or 10, description="per_class",
                                          style=_STYLE),
            "steps": widgets.IntSlider(value=b.steps or 300, min=5, max=3000, step=5, description="steps",
                                       style=_STYLE),
            "seed": widgets.BoundedIntText(value=b.seed, min=0, max=10_000, description="seed", style=_STYLE),
            "device": widgets.Dropdown(options=_devices(), value="auto", description="device", style=_STYLE),
        }
        self.progress = widgets.IntProgress(value=0, min=0, max=1, description="steps")
        self.table = widgets.HTML()
        self.committed = widgets.HTML()
        self.history: list[dict] = []
        self.record: dict | None = None
        super().__init__("Few-shot distillation: train one student", controls, extra=(self.progress,),
                         below=(widgets.HTML("<b>Your runs</b> (test accuracy %, mean ± std over seeds, "
                                             "columns: images per class)"), self.table,
                                widgets.HTML("<b>Committed results</b> (results/*.jsonl)"), self.committed))
        self.refresh_table()
        committed = committed_results()
        if committed:
            from .report import accuracy_table
            self.committed.value = html_table(accuracy_table(committed))
        else:
            self.committed.value = "<i>no committed results yet (results/*.jsonl not found)</i>"

    def config(self) -> Config:
        c = {k: w.value for k, w in self.controls.items()}
        from .data import PATH_DATASETS
        path = (c["data_path"].strip() or None) if c["dataset"] in PATH_DATASETS else None
        changes = dict(dataset=c["dataset"], method=c["method"], jacobian_weight=c["jacobian_weight"],
                       sigma=c["sigma"], per_class=c["per_class"], steps=c["steps"], seed=c["seed"],
                       data_path=path)
        if c["dataset"] != self.base.dataset:  # n_train/n_test size the generated shapes only
            changes.update(n_train=None, n_test=None)
        return self.base.replace(**changes)

    def refresh_table(self) -> None:
        from .report import accuracy_table
        from .results import ResultStore
        records = ResultStore(self.store_path).records() if self.store_path.exists() else []
        self.table.value = html_table(accuracy_table(records) if records else [])

    def _on_row(self, row: dict) -> None:
        self.history.append(row)
        self.progress.value = min(row["step"], self.progress.max)
        self.show(viz.history_figure(self.history, title=self._title))

    def run(self) -> None:
        from .experiments import run
        config = self.config()
        self.history = []
        self.progress.max, self.progress.value = config.steps or config.epochs, 0
        self._title = f"{config.method} on {config.dataset}, {config.per_class} per class, seed {config.seed}"
        self.say(f"training {self._title} (the teacher is trained first unless cached)...")
        record = run(config, store=self.store_path, device=self.controls["device"].value, progress=False,
                     callback=self._on_row)
        self.record = record
        self.progress.value = self.progress.max
        self.show(viz.history_figure(record["history"], title=self._title))
        m = record["metrics"]
        self.say(f"{self._title}: test accuracy {100 * m['test_acc']:.1f}%"
                 + (f" (teacher {100 * m['teacher_test_acc']:.1f}%)" if "teacher_test_acc" in m else "")
                 + f"; saved to {self.store_path.name}")
        self.refresh_table()


def distillation_panel(store, base: Config | None = None) -> DistillationPanel:
    """Train one student from the chosen settings (Run), with a progress bar and a live training
    curve; every run is appended to ``store`` and the table of all runs is refreshed. ``base``
    (default :func:`jkt_lab.nbtools.course_config`) gives every setting the panel does not show.
    Your own data: choose ``imagefolder`` or ``npz`` and type its path in ``data_path`` (or pass
    ``base=Config(dataset="npz", data_path=...)``)."""
    return DistillationPanel(store, base)


# --------------------------------------------------------------------------- 04 robustness


class RobustnessPanel(Panel):
    def __init__(self, models: Mapping[str, torch.nn.Module], data, *, sigma_max: float = 0.3, n_sigmas: int = 7):
        if not models:
            raise ValueError("models must map at least one name to a model")
        self.models, self.data = dict(models), data
        controls = {
            "sigma_max": widgets.FloatSlider(value=sigma_max, min=0.02, max=1.0, step=0.01,
                                             description="largest sigma", style=_STYLE),
            "n_sigmas": widgets.IntSlider(value=n_sigmas, min=2, max=15, description="number of sigmas",
                                          style=_STYLE),
            "models": widgets.SelectMultiple(options=list(self.models), value=tuple(self.models),
                                             description="models", style=_STYLE),
            "seed": widgets.BoundedIntText(value=0, min=0, max=10_000, description="noise seed", style=_STYLE),
        }
        self.curves: dict[str, list[dict]] = {}
        super().__init__("Accuracy under Gaussian input noise", controls)

    def run(self) -> None:
        from .train import robustness
        c = {k: w.value for k, w in self.controls.items()}
        if not c["models"]:
            raise ValueError("select at least one model")
        sigmas = torch.linspace(0.0, c["sigma_max"], c["n_sigmas"]).tolist()
        self.curves = {}
        for name in c["models"]:
            model = self.models[name]
            self.curves[name] = robustness(model, self.data.to(next(model.parameters()).device), sigmas,
                                           seed=c["seed"])
        self.say(", ".join(f"{n}: {100 * rows[-1]['acc']:.1f}% at sigma={rows[-1]['sigma']:.2f}"
                           for n, rows in self.curves.items()))
        self.show(viz.robustness_figure(self.curves))


def robustness_panel(models: Mapping[str, torch.nn.Module], data, **defaults) -> RobustnessPanel:
    """Test accuracy against input-noise sigma (:func:`jkt_lab.train.robustness`) for the chosen models."""
    return RobustnessPanel(models, data, **defaults)


# --------------------------------------------------------------------------- 05 transfer


class TransferPanel(Panel):
    def __init__(self, store, base: Config | None = None):
        from .nbtools import TRANSFER_RUNS, transfer_config
        self.store_path = Path(store)
        self.base = base or transfer_config()
        b = self.base
        controls = {
            "method": widgets.Dropdown(options=list(TRANSFER_RUNS), value="at+jacobian", description="method",
                                       style=_STYLE),
            "per_class": widgets.Dropdown(options=sorted({1, 2, 5, 10, 20, 50, b.per_class or 10}),
                                          value=b.per_class or 10, description="per_class", style=_STYLE),
            "attention_weight": widgets.FloatLogSlider(value=b.attention_weight, base=10, min=0, max=4, step=0.25,
                                                       description="attention_weight", style=_STYLE),
            "jacobian_weight": widgets.FloatLogSlider(value=b.jacobian_weight, base=10, min=-2, max=2, step=0.25,
                                                      description="jacobian_weight", style=_STYLE),
            "steps": widgets.IntSlider(value=b.steps or 300, min=5, max=3000, step=5, description="steps",
                                       style=_STYLE),
            "device": widgets.Dropdown(options=_devices(), value="auto", description="device", style=_STYLE),
        }
        self.progress = widgets.IntProgress(value=0, min=0, max=1, description="steps")
        self.curve_output = widgets.Output()
        self.curve: go.Figure | None = None
        self.record: dict | None = None
        super().__init__("Transfer learning: source classes 0-4 -> target classes 5-9", controls,
                         extra=(self.progress,), below=(self.curve_output,))

    def config(self) -> Config:
        from .nbtools import TRANSFER_RUNS
        c = {k: w.value for k, w in self.controls.items()}
        return self.base.replace(**TRANSFER_RUNS[c["method"]], per_class=c["per_class"],
                                 attention_weight=c["attention_weight"], jacobian_weight=c["jacobian_weight"],
                                 steps=c["steps"])

    def run(self) -> None:
        from .experiments import run
        from .nbtools import transfer_label
        from .results import ResultStore
        config = self.config()
        label = self.controls["method"].value
        rows: list[dict] = []
        self.progress.max, self.progress.value = config.steps or config.epochs, 0

        def on_row(row):
            rows.append(row)
            self.progress.value = min(row["step"], self.progress.max)
            self.curve = viz.history_figure(rows, title=f"{label}: training")
            self.show(self.curve, self.curve_output)

        self.say(f"training {label} (the source teacher is trained first unless cached)...")
        self.record = run(config, store=self.store_path, device=self.controls["device"].value, progress=False,
                          callback=on_row)
        self.progress.value = self.progress.max
        self.curve = viz.history_figure(self.record["history"], title=f"{label}: training")
        self.show(self.curve, self.curve_output)
        records = [r for r in ResultStore(self.store_path).records()
                   if r["config"].get("classes") == list(config.classes or [])
                   and r["config"].get("per_class") == config.per_class]
        self.show(viz.accuracy_bars(records, transfer_label,
                                    title=f"Target test accuracy, {config.per_class} images per class"))
        self.say(f"{label}: target test accuracy {100 * self.record['metrics']['test_acc']:.1f}%")


def transfer_panel(store, base: Config | None = None) -> TransferPanel:
    """Run one transfer method (:data:`jkt_lab.nbtools.TRANSFER_RUNS`) on the offline shapes
    transfer task; shows its training curve and the target accuracy of every run in ``store``."""
    return TransferPanel(store, base)
