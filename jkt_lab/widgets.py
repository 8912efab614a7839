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
    robustness_experiment_panel()            # notebook 04: teachers x students, the mechanism figure
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
           "robustness_experiment_panel", "transfer_panel", "html_table", "table", "Table", "SIGMA_GRID", "SEED_CHOICES"]

#: sigma values the equivalence panel offers (log-spaced).
SIGMA_GRID = tuple(float(f"{m}e{e}") for e in range(-4, 0) for m in (1, 2, 5)) + (1.0,)

_STYLE = {"description_width": "initial"}

#: The panels' "seeds" control: one run, or the same settings at three seeds (mean ± std).
SEED_CHOICES = (("1 seed", 1), ("3 seeds", 3))


def _interactive() -> bool:
    """True inside an IPython shell (notebook or console); headless (tests, scripts) False."""
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython comes with ipywidgets
        return False
    return get_ipython() is not None


def html_table(rows, columns=None, *, empty: str = "no results yet", floatfmt: str = ".3f") -> str:
    """An HTML table of row mappings (for ``ipywidgets.HTML`` and notebook output); floats as
    ``floatfmt``, numbers right-aligned."""
    rows = list(rows)
    if not rows:
        return f"<i>{html.escape(empty)}</i>"
    columns = columns or list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th style='padding:2px 8px;text-align:left'>{html.escape(str(c))}</th>" for c in columns)
    from .report import _column_formats          # a "g" format: the same decimals down each column
    formats = _column_formats(rows, columns, floatfmt)

    def td(v, c):
        align = "right" if isinstance(v, (int, float)) and not isinstance(v, bool) else "left"
        return f"<td style='padding:2px 8px;text-align:{align}'>{html.escape(_cell(v, formats[c]))}</td>"

    body = "".join("<tr>" + "".join(td(r.get(c), c) for c in columns) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell(v, floatfmt: str = ".3f") -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return format(v, floatfmt)
    return str(v)


class Table:
    """Rows shown as an HTML table in a notebook (``_repr_html_``) and as a markdown table in a
    terminal (``repr``); ``rows`` keeps the data for asserts."""

    def __init__(self, rows, columns=None, *, floatfmt: str = ".3f", caption: str | None = None):
        self.rows = [dict(r) for r in rows]
        self.columns = list(columns) if columns else list(dict.fromkeys(k for r in self.rows for k in r))
        self.floatfmt, self.caption = floatfmt, caption

    def _repr_html_(self) -> str:
        caption = f"<p><b>{html.escape(self.caption)}</b></p>" if self.caption else ""
        return caption + html_table(self.rows, self.columns, floatfmt=self.floatfmt)

    def __repr__(self) -> str:
        from .results import to_markdown
        return (f"{self.caption}\n" if self.caption else "") + to_markdown(self.rows, self.columns or None,
                                                                           floatfmt=self.floatfmt)

    def __len__(self) -> int:
        return len(self.rows)


def table(rows, columns=None, *, floatfmt: str = ".3f", caption: str | None = None) -> Table:
    """``rows`` (mappings) as a :class:`Table`: the last line of a notebook cell renders it as HTML."""
    return Table(rows, columns, floatfmt=floatfmt, caption=caption)


def _time_left(t0: float, done: int, total: int, *, since: tuple[float, int] | None = None,
               reference_step: float | None = None) -> str:
    """``"about 40 s left"`` from the pace so far (from ``since``, ``(time, done)`` at an earlier
    row, when given: the pace of the steps alone, without the run's start). With
    ``reference_step`` (seconds a step of the committed runs of the same settings), a pace far
    slower than it adds the reason and what to do (:func:`jkt_lab.progress.slow_advice`)."""
    import time

    from .progress import duration, slow_advice
    if done <= 0:
        return "estimating the time left"
    now = time.perf_counter()
    left = (now - t0) / done * max(total - done, 0)
    text = f"{duration(left)} left"
    if since is not None and reference_step and done > since[1]:
        per_step = (now - since[0]) / (done - since[1])
        advice = slow_advice(per_step, reference_step, "the committed runs on 2 idle cores")
        if advice:
            text += f"; a step takes {per_step:.2g} s here, " + advice
    return text


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

    def train(self, configs, store, progress: widgets.IntProgress, device, on_row=None) -> list[dict]:
        """Run ``configs`` one after the other (the teacher first, when it is not cached), with
        ``progress`` and the status line showing the step and the time left; ``on_row(config, rows)``
        gets each run's history rows as they come. Returns the records."""
        import time

        from .experiments import get_teacher, run
        from .methods import get_method
        configs = list(configs)
        first = configs[0]
        if get_method(first.method).needs_teacher or first.init == "finetune":
            t0, epochs = time.perf_counter(), first.teacher_config().epochs
            progress.description, progress.max, progress.value = "teacher", max(epochs, 1), 0

            def on_teacher(row):
                progress.value = row["epoch"]
                self.say(f"training the teacher (once; cached afterwards): epoch {row['epoch']}/{epochs}, "
                         f"{_time_left(t0, row['epoch'], epochs)}")

            self.say("loading the teacher (training it first if it is not cached)...")
            self.teacher_info = get_teacher(first, device=device, progress=False, callback=on_teacher)[1]
        from .nbtools import reference_time
        records = []
        for i, config in enumerate(configs):
            total = config.steps or config.epochs
            progress.description, progress.max, progress.value = "steps", max(total, 1), 0
            t0, rows, first = time.perf_counter(), [], []
            ref = reference_time(config) if config.steps else None
            what = f"{config.method}, seed {config.seed}" + (f" (run {i + 1} of {len(configs)})" if len(configs) > 1 else "")
            self.say(f"training {what}...")

            def on_run_row(row, config=config, rows=rows, t0=t0, total=total, what=what, first=first, ref=ref):
                rows.append(row)
                done = row["step"] if config.steps else row["epoch"]
                progress.value = min(done, progress.max)
                left = _time_left(t0, done, total, since=first[0] if first else None,
                                  reference_step=ref["step_s"] if ref else None)
                if not first:
                    first.append((time.perf_counter(), done))
                self.say(f"training {what}: {done}/{total} {'steps' if config.steps else 'epochs'}, {left}")
                if on_row is not None:
                    on_row(config, rows)

            records.append(run(config, store=store, device=device, progress=False, callback=on_run_row))
            progress.value = progress.max
        return records


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
        lines = [f"slope |MC - noise-free|: {viz.slope_text(s, 'noise_free')} (theory 2); "
                 f"|MC - prediction|: {viz.slope_text(s, 'prediction')} (theory 4 for smooth nets); "
                 f"|MC - Proposition 1|: {viz.slope_text(s, 'proposition1')}",
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
        from .saliency import centre_prior, mask_overlap, saliency
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
                lines.append(f"{name}: {100 * ov['overlap']:.0f}% of its top pixels on the object")
        if self.data.mask_test is not None:
            mask = self.data.mask_test[i:i + 1]
            blob = mask_overlap(centre_prior(*mask.shape[1:])[None], mask)
            lines.append(f"for reference on this image: chance {100 * blob['chance']:.0f}%, a fixed blob in the "
                         f"centre (it never looks at the image) {100 * blob['overlap']:.0f}%")
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
        from .nbtools import course_config
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
            "seed": widgets.BoundedIntText(value=b.seed, min=0, max=10_000, description="seed (first)", style=_STYLE),
            "seeds": widgets.ToggleButtons(options=list(SEED_CHOICES), value=1, description="seeds", style=_STYLE),
            "device": widgets.Dropdown(options=_devices(), value="auto", description="device", style=_STYLE),
        }
        self.progress = widgets.IntProgress(value=0, min=0, max=1, description="steps")
        self.table = widgets.HTML()
        self.committed_title = widgets.HTML()
        self.committed = widgets.HTML()
        self.history: list[dict] = []
        self.record: dict | None = None
        self.records: list[dict] = []
        self.teacher_info: dict | None = None
        super().__init__("Few-shot distillation: train one student (or three seeds)", controls, extra=(self.progress,),
                         below=(widgets.HTML("<b>Your runs</b>: one row per setting (every setting that differs "
                                             "between your runs is a column), test accuracy % as mean ± std over "
                                             "its n runs (seeds)"), self.table, self.committed_title, self.committed))
        self.refresh_table()
        self.refresh_committed()
        self.controls["dataset"].observe(lambda _change: self.refresh_committed(), names="value")

    def refresh_committed(self) -> None:
        """The committed few-shot distillation results of the dataset chosen in the panel
        (:func:`jkt_lab.nbtools.committed_distillation`), named, as a table by images per class."""
        from .nbtools import _COMMITTED_DISTILLATION, committed_distillation
        from .report import accuracy_table
        dataset = self.controls["dataset"].value
        folder = _COMMITTED_DISTILLATION.get(dataset)
        where = "results/*.jsonl" if folder == "." else f"results/{folder}/"
        records = committed_distillation(dataset) if folder else []
        self.committed_title.value = (f"<b>Committed results on {html.escape(dataset)}</b> ({html.escape(where)}: "
                                      "few-shot distillation, test accuracy % as mean ± std over seeds, by images per "
                                      "class; their settings are in the folder's REPORT.md)"
                                      if records else f"<b>Committed results on {html.escape(dataset)}</b>")
        self.committed.value = (html_table(accuracy_table(records)) if records else
                                f"<i>no committed results on {html.escape(dataset)} in this copy "
                                "(`jkt-lab reproduce` writes them under results/)</i>")

    def config(self) -> Config:
        c = {k: w.value for k, w in self.controls.items()}
        from .data import PATH_DATASETS
        path = (c["data_path"].strip() or None) if c["dataset"] in PATH_DATASETS else None
        changes = dict(dataset=c["dataset"], method=c["method"], jacobian_weight=c["jacobian_weight"],
                       sigma=c["sigma"], per_class=c["per_class"], steps=c["steps"], seed=c["seed"],
                       data_path=path)
        base = self.base
        if c["dataset"] != base.dataset:
            from .nbtools import COURSE_DATASETS, course_config
            if c["dataset"] in COURSE_DATASETS:   # the course's setting of that dataset: its teacher and students
                base = course_config(dataset=c["dataset"])
            else:                                 # n_train/n_test size the generated shapes only
                changes.update(n_train=None, n_test=None)
        from .nbtools import panel_config
        return panel_config(base.replace(**changes))

    def configs(self) -> list[Config]:
        """The runs one press of Run makes: the settings at ``seeds`` consecutive seeds."""
        config = self.config()
        return [config.replace(seed=config.seed + i) for i in range(self.controls["seeds"].value)]

    def refresh_table(self) -> None:
        from .course import runs_table
        from .results import ResultStore
        records = ResultStore(self.store_path).records() if self.store_path.exists() else []
        self.table.value = html_table(runs_table(records) if records else [])

    def run(self) -> None:
        import statistics

        from .course import chance_level
        configs = self.configs()
        first = configs[0]
        chance = chance_level(first)
        self.history = []

        def on_row(config, rows):
            self.history = rows
            teacher = (self.teacher_info or {}).get("metrics", {}).get("test_acc")
            self.show(viz.history_figure(rows, title=self._title(config), chance=chance, teacher=teacher))

        self.records = self.train(configs, self.store_path, self.progress, self.controls["device"].value, on_row)
        self.record = record = self.records[-1]
        self.history = record["history"]
        m = record["metrics"]
        teacher = m.get("teacher_test_acc")
        self.show(viz.history_figure(record["history"], title=self._title(configs[-1]), chance=chance, teacher=teacher))
        accs = [100 * r["metrics"]["test_acc"] for r in self.records]
        summary = (f"test accuracy {accs[0]:.1f}%" if len(accs) == 1 else
                   f"test accuracy {statistics.fmean(accs):.1f} ± {statistics.stdev(accs):.1f}% over seeds "
                   f"{', '.join(str(c.seed) for c in configs)} ({', '.join(f'{a:.1f}' for a in accs)})")
        self.say(f"{first.method} on {first.dataset}, {first.per_class} per class: {summary}; chance "
                 f"{100 * chance:.1f}%" + (f", teacher {100 * teacher:.1f}%" if teacher is not None else "")
                 + f"; saved to {self.store_path.name}")
        self.refresh_table()

    @staticmethod
    def _title(config: Config) -> str:
        return f"{config.method} on {config.dataset}, {config.per_class} per class, seed {config.seed}"


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
        self.show(viz.robustness_figure(self.curves, chance=1.0 / self.data.num_classes))


def robustness_panel(models: Mapping[str, torch.nn.Module], data, **defaults) -> RobustnessPanel:
    """Test accuracy against input-noise sigma (:func:`jkt_lab.train.robustness`) for the chosen models."""
    return RobustnessPanel(models, data, **defaults)


class RobustnessExperimentPanel(Panel):
    """The robustness experiment (:mod:`jkt_lab.robustness`): load the committed results or run
    the grid here, then the mechanism figure (accuracy under noise against the Jacobian norm).
    ``panel.records`` holds the records shown; ``panel.figure`` the figure."""

    def __init__(self, store=None, *, dataset: str = "shapes", source: str = "committed", sigma: float = 0.1):
        from . import robustness as rb
        from .experiments import NOISE_SIGMAS, runs_dir
        self.store_path = Path(store) if store is not None else None
        self._runs_dir = runs_dir
        controls = {
            "source": widgets.Dropdown(options=[("committed results (repository)", "committed"),
                                                ("run the grid here (resumable)", "run")],
                                       value=source, description="results", style=_STYLE),
            "dataset": widgets.Dropdown(options=list(rb.SETUPS), value=dataset, description="dataset", style=_STYLE),
            "sigma": widgets.Dropdown(options=[s for s in NOISE_SIGMAS if s > 0], value=sigma,
                                      description="sigma of the figure", style=_STYLE),
        }
        self.records: list[dict] = []
        super().__init__("Robustness to noisy inputs: teachers x students", controls, run_label="Show")

    def run(self) -> None:
        from . import robustness as rb
        from .config import quick_mode
        from .nbtools import committed_robustness
        from .results import ResultStore
        c = {k: w.value for k, w in self.controls.items()}
        if c["source"] == "committed":
            self.records = committed_robustness(c["dataset"])
            if not self.records:
                raise ValueError(f"no committed robustness results for {c['dataset']} (results/robustness-"
                                 f"{c['dataset']}/): choose 'run the grid here'")
            where = f"committed results/robustness-{c['dataset']}/"
        else:
            quick = quick_mode()
            path = self.store_path or self._runs_dir() / f"robustness-{c['dataset']}{'-quick' if quick else ''}.jsonl"
            rb.robustness_experiment(path, c["dataset"], parts=("teachers", "grid"), quick=quick, progress=False,
                                     log=self.say)
            self.records = ResultStore(path).records()
            where = str(path)
        grid = rb.grid_records(self.records, c["dataset"])
        parts = [r["config"].get("extra", {}).get("part") for r in grid]
        n, teachers = parts.count("grid"), parts.count("teacher")
        self.say(f"{n} students and {teachers} teachers from {where}"
                 + (f" (the figure leaves out {len(parts) - n - teachers} runs of other parts)"
                    if len(parts) > n + teachers else ""))
        self.show(viz.mechanism_figure(grid, sigma=c["sigma"],
                                       title=f"{c['dataset']}: accuracy at sigma {c['sigma']:g} against the Jacobian norm"))


def robustness_experiment_panel(store=None, **defaults) -> RobustnessExperimentPanel:
    """Notebook 04's experiment: committed results or a run here, and the mechanism figure."""
    return RobustnessExperimentPanel(store, **defaults)


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
            "seeds": widgets.ToggleButtons(options=list(SEED_CHOICES), value=1, description="seeds", style=_STYLE),
            "device": widgets.Dropdown(options=_devices(), value="auto", description="device", style=_STYLE),
        }
        self.progress = widgets.IntProgress(value=0, min=0, max=1, description="steps")
        self.curve_output = widgets.Output()
        self.curve: go.Figure | None = None
        self.record: dict | None = None
        self.records: list[dict] = []
        self.teacher_info: dict | None = None
        super().__init__("Transfer learning: source classes 0-4 -> target classes 5-9", controls,
                         extra=(self.progress,), below=(self.curve_output,))

    def config(self) -> Config:
        from .nbtools import TRANSFER_RUNS
        c = {k: w.value for k, w in self.controls.items()}
        return self.base.replace(**TRANSFER_RUNS[c["method"]], per_class=c["per_class"],
                                 attention_weight=c["attention_weight"], jacobian_weight=c["jacobian_weight"],
                                 steps=c["steps"])

    def configs(self) -> list[Config]:
        """The runs one press of Run makes: the settings at ``seeds`` consecutive seeds."""
        config = self.config()
        return [config.replace(seed=config.seed + i) for i in range(self.controls["seeds"].value)]

    def run(self) -> None:
        from .course import chance_level
        from .nbtools import transfer_label
        from .results import ResultStore
        configs = self.configs()
        config = configs[0]
        label = self.controls["method"].value
        chance = chance_level(config)

        def on_row(config, rows):
            self.curve = viz.history_figure(rows, title=f"{label}, seed {config.seed}: training", chance=chance)
            self.show(self.curve, self.curve_output)

        self.records = self.train(configs, self.store_path, self.progress, self.controls["device"].value, on_row)
        self.record = self.records[-1]
        self.curve = viz.history_figure(self.record["history"], title=f"{label}, seed {configs[-1].seed}: training",
                                        chance=chance)
        self.show(self.curve, self.curve_output)
        records = [r for r in ResultStore(self.store_path).records()
                   if r["config"].get("classes") == list(config.classes or [])
                   and r["config"].get("per_class") == config.per_class]
        self.show(viz.accuracy_bars(records, transfer_label, chance=chance,
                                    title=f"Target test accuracy, {config.per_class} images per class "
                                          "(mean ± std over the runs in your store)"))
        accs = ", ".join(f"{100 * r['metrics']['test_acc']:.1f}%" for r in self.records)
        self.say(f"{label}: target test accuracy {accs} (chance {100 * chance:.0f}%)")


def transfer_panel(store, base: Config | None = None) -> TransferPanel:
    """Run one transfer method (:data:`jkt_lab.nbtools.TRANSFER_RUNS`) on the offline shapes
    transfer task; shows its training curve and the target accuracy of every run in ``store``."""
    return TransferPanel(store, base)
