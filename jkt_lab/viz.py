"""Plotly figures. Each function reads results (records, sweeps, histories, tensors) and returns
a ``plotly.graph_objects.Figure``; nothing here computes what the library already computed."""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .results import lookup, table

__all__ = ["equivalence_figure", "accuracy_figure", "noise_figure", "history_figure", "saliency_grid",
           "METHOD_COLORS", "VARIANT_COLORS", "VARIANT_ALIASES", "variant_color", "equivalence_terms_figure", "maps_figure", "robustness_figure", "accuracy_bars",
           "attention_figure", "at_rounding", "slope_text", "reference_lines", "examples_figure", "ROUNDING",
           "accuracy_groups_figure", "training_curves_figure", "mechanism_figure", "ROBUSTNESS_COLORS"]

#: One colour per variant label, the same in every figure of the package (reports, notebooks,
#: panels): :func:`variant_color` reads it. Related variants share a hue family: fine-tuned
#: transfer runs in the full colour, their from-scratch versions in its light shade.
VARIANT_COLORS = {
    "teacher": "#000000",
    "ce": "#7f7f7f", "kd": "#1f77b4", "kd+jacobian": "#d62728", "kd+jacobian (squared)": "#ff7f0e",
    "kd+jacobian_norm": "#bcbd22", "noise": "#2ca02c", "noise (squared)": "#98df8a",
    "activations": "#17becf", "activations+jacobian": "#0e6e78", "activations+jacobian (squared)": "#9edae5",
    "ce (fine-tune)": "#3b3b3b", "lwf (fine-tune)": "#8c564b", "lwf (scratch)": "#c49c94",
    "at (fine-tune)": "#9467bd", "at (scratch)": "#c5b0d5",
    "at+jacobian (fine-tune)": "#e377c2", "at+jacobian (scratch)": "#f7b6d2",
}

#: Labels that name the same variant as a key of :data:`VARIANT_COLORS` (the robustness experiment
#: calls the paper's loss "kd+jacobian (normalised)"; ``jkt-lab reproduce`` writes "fine-tune (ce)";
#: notebook 05's "at" and "at+jacobian" train from scratch, its "lwf" is fine-tuned).
VARIANT_ALIASES = {
    "kd+jacobian (normalised)": "kd+jacobian", "kd+jacobian (normalized)": "kd+jacobian",
    "activations+jacobian (normalised)": "activations+jacobian", "ce (scratch)": "ce", "scratch (ce)": "ce",
    "fine-tune (ce)": "ce (fine-tune)", "lwf": "lwf (fine-tune)", "at": "at (scratch)",
    "at+jacobian": "at+jacobian (scratch)",
}

#: Colours of labels the table above does not know (picked by a stable hash of the label).
_OTHER_COLORS = ("#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#5254a3", "#8ca252", "#bd9e39",
                 "#ad494a", "#a55194")

#: Kept for code that imported it: the colour of each plain method name.
METHOD_COLORS = {k: v for k, v in VARIANT_COLORS.items() if " " not in k}


def variant_color(label) -> str:
    """The colour of a variant label (``"kd+jacobian (squared)"``, ``"at (scratch)"``, ``"teacher"``...),
    the same in every figure: :data:`VARIANT_COLORS` after :data:`VARIANT_ALIASES`; a label the
    tables do not know gets a colour of its own from a stable hash (never ``None``)."""
    import zlib
    key = " ".join(str(label).strip().split())
    key = VARIANT_ALIASES.get(key, key)
    if key in VARIANT_COLORS:
        return VARIANT_COLORS[key]
    return _OTHER_COLORS[zlib.crc32(key.encode()) % len(_OTHER_COLORS)]


#: A gap below this fraction of the loss is floating-point rounding, not a term of the expansion.
ROUNDING = 1e-12


def at_rounding(rows: Sequence[Mapping], key: str) -> list[bool]:
    """Per row of :func:`jkt_lab.theory.sigma_sweep`: is ``|monte_carlo - row[key]|`` at the level
    of float rounding (below :data:`ROUNDING` times the loss)? Such gaps are exact zeros up to
    rounding: they have no slope and no place on a log axis."""
    return [abs(r["monte_carlo"] - r[key]) <= ROUNDING * max(abs(r["monte_carlo"]), abs(r[key]), 1e-300)
            for r in rows]


def slope_text(sweep: Mapping, key: str) -> str:
    """The fitted log-log slope of ``|MC - key|`` as text, or "exact to float precision" when
    every gap is at rounding level (the fit of rounding noise would mean nothing)."""
    flags = at_rounding(sweep["rows"], key)
    if all(flags):
        return "exact to float precision"
    if any(flags):
        return "exact to float precision at some sigma (no slope)"
    slope = sweep.get(f"slope_{key}")
    return "n/a" if slope is None or not math.isfinite(slope) else f"{slope:.2f}"


def equivalence_figure(sweep: Mapping) -> go.Figure:
    """Log-log plot of ``|MC - noise_free|`` (slope 2) and ``|MC - prediction|`` (slope 4)
    against sigma, from :func:`jkt_lab.theory.sigma_sweep`. Gaps at rounding level
    (:func:`at_rounding`) are left off the log axis and named "exact to float precision"."""
    rows = sweep["rows"]
    sigmas = [r["sigma"] for r in rows]
    fig = go.Figure()
    series = [("noise_free", "|MC - noise-free|", "#1f77b4"), ("prediction", "|MC - prediction|", "#d62728")]
    if "slope_proposition1" in sweep and not math.isclose(rows[0]["curvature_term"], 0.0, abs_tol=1e-15):
        series.append(("proposition1", "|MC - Proposition 1|", "#ff7f0e"))
    exact = []
    for key, name, color in series:
        flags = at_rounding(rows, key)
        slope = slope_text(sweep, key)
        label = f"{name}  ({slope})" if slope.startswith("exact") else f"{name}  (slope {slope})"
        fig.add_trace(go.Scatter(x=[s for s, f in zip(sigmas, flags) if not f],
                                 y=[abs(r["monte_carlo"] - r[key]) for r, f in zip(rows, flags) if not f],
                                 mode="lines+markers", name=label, line={"color": color}))
        if any(flags):
            exact.append(name)
    _loglog(fig, "absolute gap", f"Noise vs. Jacobian: {rows[0]['loss']} loss")
    if exact:
        fig.add_annotation(text=f"{' and '.join(exact)}: exact to float precision (gap below {ROUNDING:g} x the "
                                f"loss), not drawn on the log axis", xref="paper", yref="paper", x=0.0, y=1.0,
                           xanchor="left", yanchor="bottom", showarrow=False, font={"size": 11})
    return fig


def _loglog(fig: go.Figure, ytitle: str, title: str) -> go.Figure:
    """Log-log axes against sigma, legend in the lower right (where the curves are not)."""
    fig.update_xaxes(type="log", title="sigma (input noise std)")
    fig.update_yaxes(type="log", title=ytitle)
    fig.update_layout(title=title, template="plotly_white",
                      legend={"x": 0.99, "y": 0.01, "xanchor": "right", "yanchor": "bottom",
                              "bgcolor": "rgba(255,255,255,0.8)"})
    return fig


def reference_lines(fig: go.Figure, *, chance: float | None = None, teacher: float | None = None,
                    row: int | None = None, col: int | None = None, outside: bool = False) -> go.Figure:
    """Dotted horizontal lines at chance and at the teacher's accuracy (fractions; drawn in %),
    so that a student's accuracy is read against both. Their labels sit at the top left of the
    line, or, with ``outside`` (bar charts, whose first bar would cover them), to the right of
    the plotting area, in a margin made for them."""
    where = {} if row is None else {"row": row, "col": col}
    for value, name, color in ((chance, "chance", "#7f7f7f"), (teacher, "teacher", "#000000")):
        if value is not None:
            fig.add_hline(y=100 * float(value), line={"dash": "dot", "color": color, "width": 1},
                          annotation_text=f"{name} {100 * float(value):.1f}%",
                          annotation_position="right" if outside else "top left",
                          annotation_font={"size": 10, "color": color}, **where)
    if outside and (chance is not None or teacher is not None):
        fig.update_layout(margin={"r": max(90, (fig.layout.margin.r or 0))})
    return fig


def _grouped(records, x: str, metric: str, color: str):
    rows = table(records, [x, color], group_by=[color, x], metric=metric)
    out: dict[str, list[tuple]] = {}
    for r in rows:
        if r[f"{metric}.mean"] is None or r[x] is None and x != "config.per_class":
            continue
        out.setdefault(str(r[color]), []).append((r[x], r[f"{metric}.mean"], r[f"{metric}.std"] or 0.0, r["n"]))
    return out


def accuracy_figure(records: Iterable[Mapping], *, x: str = "config.per_class", metric: str = "metrics.test_acc",
                    color: str = "config.method", title: str = "Test accuracy against images per class",
                    chance: float | None = None, teacher: float | None = None) -> go.Figure:
    """Mean (+- std over seeds) of ``metric`` against ``x``, one line per ``color`` value;
    ``chance`` and ``teacher`` (fractions) add reference lines."""
    records = list(records)
    fig = go.Figure()
    for name, pts in _grouped(records, x, metric, color).items():
        all_label = max((p[0] for p in pts if p[0] is not None), default=1) * 2
        pts = sorted(((p[0] if p[0] is not None else all_label), *p[1:]) for p in pts)
        fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[100 * p[1] for p in pts],
                                 error_y={"type": "data", "array": [100 * p[2] for p in pts]},
                                 mode="lines+markers", name=name, line={"color": variant_color(name)}))
    fig.update_xaxes(type="log" if x.endswith("per_class") else "linear", title=x.split(".")[-1])
    fig.update_yaxes(title="accuracy (%)")
    fig.update_layout(title=title, template="plotly_white")
    return reference_lines(fig, chance=chance, teacher=teacher)


def _per_class_title(per_class) -> str:
    if per_class is None:
        return "all images"
    return f"{per_class} image{'s' if per_class != 1 else ''} per class"


def noise_figure(records: Iterable[Mapping], *, color: str = "config.method",
                 title: str = "Accuracy under Gaussian input noise", chance: float | None = None,
                 teacher: float | None = None) -> go.Figure:
    """Accuracy against noise sigma (from ``metrics.noise_acc``), one line per ``color`` value and
    one panel per ``config.per_class`` (sizes are never pooled): each point the mean over the
    records of that variant and size (seeds), its error bar their sample std (the spread over
    seeds alone; none for a single run), as the title says. ``chance``/``teacher`` add lines."""
    import statistics
    records = list(records)
    curves: dict = {}
    for r in records:
        accs = lookup(r, "metrics.noise_acc") or {}
        for s, acc in accs.items():
            if acc is None:
                continue
            curves.setdefault(lookup(r, "config.per_class"), {}).setdefault(str(lookup(r, color)), {}) \
                .setdefault(float(s), []).append(float(acc))
    panels = sorted(curves, key=lambda v: (v is None, v or 0)) or [None]
    n_cols = min(len(panels), 3)
    n_rows = math.ceil(len(panels) / n_cols)
    fig = make_subplots(rows=n_rows, cols=n_cols, shared_yaxes=True, shared_xaxes=True, vertical_spacing=0.12,
                        subplot_titles=[_per_class_title(p) for p in panels] if len(panels) > 1 else None)
    shown, n_max = set(), 1
    for i, per_class in enumerate(panels):
        row, col = 1 + i // n_cols, 1 + i % n_cols
        for name, by_sigma in curves.get(per_class, {}).items():
            sig = sorted(by_sigma)
            n_max = max([n_max] + [len(by_sigma[s]) for s in sig])
            fig.add_trace(go.Scatter(
                x=sig, y=[100 * statistics.fmean(by_sigma[s]) for s in sig],
                error_y={"type": "data", "array": [100 * statistics.stdev(by_sigma[s]) if len(by_sigma[s]) > 1 else 0.0
                                                   for s in sig]},
                mode="lines+markers", name=name, legendgroup=name, showlegend=name not in shown,
                line={"color": variant_color(name)},
                hovertext=[f"{name}, {_per_class_title(per_class)}: n = {len(by_sigma[s])}" for s in sig]), row, col)
            shown.add(name)
        if row == n_rows or i + n_cols >= len(panels):                 # the lowest panel of its column
            fig.update_xaxes(title="noise sigma ([0, 1] pixels)", showticklabels=True, row=row, col=col)
        if col == 1:
            fig.update_yaxes(title="accuracy (%)", row=row, col=1)
    spread = "error bars: std over seeds" if n_max > 1 else "one run per point, no error bars"
    where = "one panel per images-per-class setting" if len(panels) > 1 else _per_class_title(panels[0])
    fig.update_layout(title=f"{title}<br><sup>mean over seeds; {spread} ({where})</sup>", template="plotly_white",
                      height=140 + 300 * n_rows, margin={"t": 110})
    for i in range(len(panels)):
        reference_lines(fig, chance=chance, teacher=teacher, row=1 + i // n_cols, col=1 + i % n_cols)
    return fig


def history_figure(history: Sequence[Mapping], *, title: str = "Training", chance: float | None = None,
                   teacher: float | None = None) -> go.Figure:
    """Loss terms (left) and accuracies (middle) against the training step; when the history
    rows carry ``jacobian_cosine/<split>`` keys, the teacher-student Jacobian cosine (right).
    ``chance`` and ``teacher`` (fractions) add reference lines to the accuracy panel."""
    steps = [h["step"] for h in history]
    keys = list(dict.fromkeys(k for h in history for k in h))
    cosines = [k for k in keys if k.startswith("jacobian_cosine/")]
    titles = ("loss terms", "accuracy") + (("teacher-student Jacobian cosine",) if cosines else ())
    fig = make_subplots(rows=1, cols=len(titles), subplot_titles=titles)
    terms = [k for k in keys if k.startswith("loss/")]
    if len(terms) == 2 and "loss/loss" in terms:  # one term: the total is the same curve
        terms.remove("loss/loss")
    for k in terms:
        fig.add_trace(go.Scatter(x=steps, y=[h.get(k) for h in history], name=k[5:], mode="lines"), 1, 1)
    for k in ("train_acc", "val_acc"):
        if k in keys:
            fig.add_trace(go.Scatter(x=steps, y=[None if h.get(k) is None else 100 * h[k] for h in history],
                                     name=k, mode="lines+markers"), 1, 2)
    for k in cosines:
        fig.add_trace(go.Scatter(x=steps, y=[h.get(k) for h in history], name=f"cosine ({k.split('/', 1)[1]})",
                                 mode="lines+markers"), 1, 3)
    fig.update_xaxes(title="step")
    fig.update_yaxes(type="log", row=1, col=1)
    fig.update_yaxes(title="%", row=1, col=2)
    if cosines:
        fig.update_yaxes(range=[-0.05, 1.0], row=1, col=3)
    fig.update_layout(title=title, template="plotly_white")
    return reference_lines(fig, chance=chance, teacher=teacher, row=1, col=2)


def _square(fig: go.Figure) -> go.Figure:
    """Square pixels in every subplot that shows a map or an image (scaleanchor y to x)."""
    for trace in fig.data:
        if trace.type not in ("heatmap", "image"):
            continue
        xa, ya = trace.xaxis or "x", trace.yaxis or "y"
        fig.layout[f"yaxis{ya[1:]}"].update(scaleanchor=xa, scaleratio=1, constrain="domain")
        fig.layout[f"xaxis{xa[1:]}"].update(constrain="domain")
    return fig


def saliency_grid(images, maps: Mapping[str, object], *, titles: Sequence[str] | None = None,
                  title: str = "Saliency (input Jacobian)") -> go.Figure:
    """Images in the first row, one row of saliency maps per entry of ``maps`` (name -> (N,H,W))."""
    import torch

    images = images.detach().cpu()
    n = images.shape[0]
    names = list(maps)
    fig = make_subplots(rows=1 + len(names), cols=n, horizontal_spacing=0.01, vertical_spacing=0.03,
                        row_titles=["input", *names], column_titles=list(titles) if titles else None)
    for j in range(n):
        img = images[j]
        if img.shape[0] == 1:
            img = img.expand(3, -1, -1)
        rgb = (img.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        fig.add_trace(go.Image(z=rgb), 1, j + 1)
        for i, name in enumerate(names):
            m = maps[name][j].detach().cpu().float()
            m = m / m.max().clamp(min=1e-12)
            fig.add_trace(go.Heatmap(z=m.flip(0).numpy(), colorscale="Inferno", showscale=False, zmin=0, zmax=1),
                          i + 2, j + 1)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_layout(title=title, template="plotly_white", height=170 * (1 + len(names)) + 60,
                      width=max(480, 150 * n + 80), margin={"l": 60, "r": 10, "t": 80, "b": 10})
    return _square(fig)


# --------------------------------------------------------------------------- notebook figures


def equivalence_terms_figure(sweep: Mapping) -> go.Figure:
    """The sigma^2 term itself, log-log: the measured ``|MC - noise_free|`` next to Proposition 1's
    ``sigma^2 |jacobian_term|`` and the full second order ``sigma^2 |jacobian_term + curvature_term|``
    (from :func:`jkt_lab.theory.sigma_sweep`)."""
    rows = sweep["rows"]
    sigmas = [r["sigma"] for r in rows]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=sigmas, y=[max(abs(r["monte_carlo"] - r["noise_free"]), 1e-300) for r in rows],
                             mode="markers", marker={"size": 10, "color": "#1f77b4"},
                             name="measured: |MC - noise-free|"))
    fig.add_trace(go.Scatter(x=sigmas, y=[max(abs(r["proposition1"] - r["noise_free"]), 1e-300) for r in rows],
                             mode="lines", line={"color": "#ff7f0e", "dash": "dash"},
                             name="Proposition 1: sigma^2 |Jacobian term|"))
    fig.add_trace(go.Scatter(x=sigmas, y=[max(abs(r["prediction"] - r["noise_free"]), 1e-300) for r in rows],
                             mode="lines", line={"color": "#d62728"},
                             name="second order: sigma^2 |Jacobian + curvature|"))
    return _loglog(fig, "increase of the expected loss", f"The sigma^2 term: {rows[0]['loss']} loss")


def _to_rgb(img):
    import torch
    img = img.detach().cpu().float()
    if img.shape[0] == 1:
        img = img.expand(3, -1, -1)
    return (img.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def maps_figure(image, rows: Mapping[str, Mapping[str, object]], *, title: str = "Saliency (input Jacobian)",
                normalize: bool = True, colorscale: str = "Inferno", max_cols: int = 5) -> go.Figure:
    """One input image (C, H, W) on the left, then a grid of 2-D maps: ``rows`` maps a row name
    to ``{column name: (h, w) tensor}`` (maps may differ in size, e.g. attention maps of several
    layers). A row with more than ``max_cols`` maps wraps onto further lines, so the figure stays
    narrow enough for a notebook; pixels are square. Each map is scaled to [0, 1] by its maximum
    when ``normalize``."""
    names = list(rows)
    n_cols = max((len(rows[r]) for r in names), default=0)
    if not names or n_cols == 0:
        raise ValueError("rows must hold at least one row with at least one map")
    if not isinstance(max_cols, int) or max_cols < 1:
        raise ValueError(f"max_cols must be a positive int, got {max_cols!r}")
    cols = min(n_cols, max_cols)
    lines = []                                   # (row name, [(column name, map), ...]) per grid line
    for r in names:
        items = list(rows[r].items())
        lines += [(r, items[i:i + cols]) for i in range(0, len(items), cols)]
    titles = []
    for i, (_, items) in enumerate(lines):
        titles += ["input" if i == 0 else ""] + [str(c) for c, _ in items] + [""] * (cols - len(items))
    row_titles = [r if i == 0 or lines[i - 1][0] != r else "" for i, (r, _) in enumerate(lines)]
    fig = make_subplots(rows=len(lines), cols=1 + cols, horizontal_spacing=0.01,
                        vertical_spacing=min(0.08, 0.3 / len(lines)) if len(lines) > 1 else 0.0,
                        subplot_titles=titles, row_titles=row_titles if len(names) > 1 else None)
    fig.add_trace(go.Image(z=_to_rgb(image), name="input"), 1, 1)
    for i, (r, items) in enumerate(lines):
        for j, (col, m) in enumerate(items):
            m = m.detach().cpu().float()
            if normalize:
                m = m / m.abs().max().clamp(min=1e-12)
            fig.add_trace(go.Heatmap(z=m.flip(0).numpy(), colorscale=colorscale, showscale=False,
                                     zmin=0 if normalize else None, zmax=1 if normalize else None,
                                     name=f"{r}: {col}"), i + 1, j + 2)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_layout(title=title, template="plotly_white", height=170 * len(lines) + 120,
                      width=max(420, 150 * (1 + cols) + 60), margin={"l": 60, "r": 10, "t": 110, "b": 10})
    return _square(fig)


def robustness_figure(curves: Mapping[str, Sequence[Mapping]], *,
                      title: str = "Accuracy under Gaussian input noise", chance: float | None = None) -> go.Figure:
    """Accuracy against noise sigma, one line per model: ``curves`` maps a name to the rows of
    :func:`jkt_lab.train.robustness` (each with ``sigma`` and ``acc``); ``chance`` adds a line."""
    fig = go.Figure()
    for name, rows in curves.items():
        rows = sorted(rows, key=lambda r: r["sigma"])
        fig.add_trace(go.Scatter(x=[r["sigma"] for r in rows], y=[100 * r["acc"] for r in rows],
                                 mode="lines+markers", name=str(name),
                                 line={"color": variant_color(name), "dash": "dot" if name == "teacher" else None}))
    fig.update_xaxes(title="noise sigma (pixel units, [0, 1] scale)")
    fig.update_yaxes(title="accuracy (%)")
    fig.update_layout(title=title, template="plotly_white")
    return reference_lines(fig, chance=chance)


def accuracy_bars(records: Iterable[Mapping], label, *, metric: str = "metrics.test_acc",
                  title: str = "Test accuracy", chance: float | None = None, teacher: float | None = None) -> go.Figure:
    """Bars of the mean ``metric`` (%) per label, error bars the sample std over the records
    (e.g. seeds; none for a single record), ``n`` under each label; ``label(record)`` names a
    record's bar. Bars keep the order labels first appear in; ``chance``/``teacher`` add lines."""
    import statistics
    groups: dict[str, list[float]] = {}
    for r in records:
        v = lookup(r, metric)
        if v is not None:
            groups.setdefault(str(label(r)), []).append(100 * float(v))
    names = list(groups)
    means = [statistics.fmean(groups[n]) for n in names]
    stds = [statistics.stdev(groups[n]) if len(groups[n]) > 1 else 0.0 for n in names]
    fig = go.Figure(go.Bar(x=names, y=means, error_y={"type": "data", "array": stds},
                           marker={"color": [variant_color(n) for n in names]},
                           text=[f"{m:.1f}" for m in means], textposition="inside", insidetextanchor="middle",
                           name=metric.split(".")[-1]))
    fig.update_xaxes(tickvals=names, ticktext=[f"{n}<br>n={len(groups[n])}" for n in names])
    fig.update_yaxes(title="accuracy (%)", rangemode="tozero")
    fig.update_layout(title=title, template="plotly_white")
    return reference_lines(fig, chance=chance, teacher=teacher, outside=True)


def attention_figure(model, image, *, p: float = 2.0, title: str = "Attention maps and their Jacobians") -> go.Figure:
    """For one image (C, H, W): each feature tap's attention map (:func:`jkt_lab.losses.attention_map`,
    channel mean of |A|^p) and the saliency of its Jacobian (:func:`jkt_lab.losses.attention_jacobians`,
    the input gradient of the map's largest value; max over colour channels of its absolute value)."""
    import torch
    from .losses import attention_jacobians, attention_map

    was = model.training
    model.eval()
    try:
        x = image.detach().unsqueeze(0).requires_grad_(True)
        with torch.enable_grad():
            _, feats = model.forward_features(x)
            taps = list(model.feature_taps)
            jac = attention_jacobians([feats[t] for t in taps], x, p)
    finally:
        model.train(was)
    att = {t: attention_map(feats[t].detach(), p, normalize=False)[0].reshape(feats[t].shape[-2:]) for t in taps}
    sal = {t: jac[0, i].abs().amax(dim=0) for i, t in enumerate(taps)}
    return maps_figure(image, {"attention map": att, "Jacobian of its max": sal}, title=title)


def examples_figure(images, labels, classes: Sequence[str], *, per_class: int = 8,
                    title: str = "Training images, one row per class") -> go.Figure:
    """A mosaic of the first ``per_class`` images (C, H, W in [0, 1]) of every class, one row per
    class, labelled with the class names (one image, so it draws fast)."""
    import torch

    images, labels = images.detach().cpu(), labels.detach().cpu()
    c, h, w = images.shape[1:]
    pad = 2
    k = len(classes)
    mosaic = torch.ones(3, k * (h + 2 * pad), per_class * (w + 2 * pad)) * 0.85
    for ci in range(k):
        idx = torch.nonzero(labels == ci).flatten()[:per_class].tolist()
        for j, i in enumerate(idx):
            top, left = ci * (h + 2 * pad), j * (w + 2 * pad)
            img = images[i] if c == 3 else images[i].expand(3, -1, -1)
            mosaic[:, top + pad:top + pad + h, left + pad:left + pad + w] = img.clamp(0, 1)
    fig = go.Figure(go.Image(z=_to_rgb(mosaic), name="images", hoverinfo="skip"))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(tickvals=[ci * (h + 2 * pad) + h / 2 + pad for ci in range(k)], ticktext=list(classes),
                     showgrid=False, zeroline=False)
    fig.update_layout(title=title, template="plotly_white", width=min(900, 120 + per_class * 60),
                      height=80 + k * 58, margin={"l": 110, "r": 10, "t": 50, "b": 10})
    return fig


# --------------------------------------------------------------------------- report figures


def accuracy_groups_figure(records: Iterable[Mapping], *, x: str = "config.per_class",
                           metric: str = "metrics.test_acc", color: str = "config.method",
                           title: str = "Test accuracy by images per class",
                           reference: Mapping[str, float] | None = None) -> go.Figure:
    """Grouped bars of the mean ``metric`` (%, error bars: std over seeds) on a categorical ``x``
    axis (for few settings, where a line on a log axis would show single points), one bar per
    ``color`` value. ``reference`` draws dotted horizontal lines, e.g. ``{"chance": 0.1}``."""
    groups = _grouped(list(records), x, metric, color)
    values = list(dict.fromkeys(p[0] for pts in groups.values() for p in pts))  # first seen, numbers sorted
    if all(v is None or isinstance(v, (int, float)) for v in values):
        values.sort(key=lambda v: (v is None, v or 0))
    label = {v: "all" if v is None else str(v) for v in values}
    fig = go.Figure()
    for name, pts in groups.items():
        pts = sorted(pts, key=lambda p: values.index(p[0]))
        fig.add_trace(go.Bar(x=[label[p[0]] for p in pts], y=[100 * p[1] for p in pts], name=name,
                             error_y={"type": "data", "array": [100 * p[2] for p in pts]},
                             text=[f"{100 * p[1]:.1f}" for p in pts], textposition="inside", insidetextanchor="start",
                             marker={"color": variant_color(name)}, hovertext=[f"n = {p[3]}" for p in pts]))
    for name, value in (reference or {}).items():     # labels right of the plot, where no bar covers them
        fig.add_hline(y=100 * value, line={"dash": "dot", "color": "#555555"}, annotation_text=f"{name} {100 * value:.0f}%",
                      annotation_position="right", annotation_font={"size": 10})
    if reference:
        fig.update_layout(margin={"r": 90})
    axis = {"per_class": "images per class", "variant": "method", "method": "method"}.get(x.split(".")[-1], x)
    fig.update_xaxes(type="category", title=axis, categoryorder="array",
                     categoryarray=[label[v] for v in values])
    fig.update_yaxes(title=f"{metric.split('.')[-1].replace('_', ' ')} (%)", rangemode="tozero")
    fig.update_layout(title=title, template="plotly_white", barmode="group")
    return fig


def training_curves_figure(records: Iterable[Mapping], *, color: str = "config.method",
                           title: str = "Training curves (mean over seeds, band: min to max)") -> go.Figure:
    """From each record's ``history``: validation accuracy (left) and the cross-entropy on the
    labels, the loss term every method has (right), against the step; one line per ``color``
    value, the mean over its records at each step, with a band from the lowest to the highest."""
    curves: dict[str, dict[str, dict[int, list[float]]]] = {}
    for r in records:
        name = str(lookup(r, color))
        for h in r.get("history") or []:
            for key in ("val_acc", "loss/ce"):
                if h.get(key) is not None:
                    curves.setdefault(name, {}).setdefault(key, {}).setdefault(h["step"], []).append(float(h[key]))
    fig = make_subplots(rows=1, cols=2, subplot_titles=("validation accuracy (%)",
                                                        "training cross-entropy on the labels (term ce)"))
    for name, by_key in curves.items():
        for col, key in ((1, "val_acc"), (2, "loss/ce")):
            pts = by_key.get(key)
            if not pts:
                continue
            steps = sorted(pts)
            scale = 100.0 if key == "val_acc" else 1.0
            mean = [scale * sum(pts[s]) / len(pts[s]) for s in steps]
            lo, hi = [scale * min(pts[s]) for s in steps], [scale * max(pts[s]) for s in steps]
            c = variant_color(name)
            fig.add_trace(go.Scatter(x=steps + steps[::-1], y=hi + lo[::-1], fill="toself", fillcolor=c, opacity=0.15,
                                     line={"width": 0}, hoverinfo="skip", showlegend=False, legendgroup=name), 1, col)
            fig.add_trace(go.Scatter(x=steps, y=mean, mode="lines", name=name, line={"color": c}, legendgroup=name,
                                     showlegend=col == 1), 1, col)
    fig.update_xaxes(title="step")
    fig.update_yaxes(title="%", row=1, col=1)
    fig.update_yaxes(title="cross-entropy", row=1, col=2)
    fig.update_layout(title=title, template="plotly_white")
    return fig


#: Kept for code that imported it: the robustness experiment's variants, coloured by :func:`variant_color`.
ROBUSTNESS_COLORS = {v: variant_color(v) for v in ("kd", "kd+jacobian (normalised)", "kd+jacobian (squared)",
                                                   "noise", "kd+jacobian_norm", "teacher")}
TEACHER_SYMBOLS = {"standard": "circle", "noise-trained": "diamond"}


LOG_TICKS = (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500)


def _mechanism_part(r: Mapping) -> str | None:
    """"teacher", "student" (a run of the grid), or None (another experiment's run: left out)."""
    part, variant = lookup(r, "config.extra.part"), lookup(r, "config.extra.variant")
    if part == "teacher" or (part is None and variant == "teacher"):
        return "teacher"
    if part == "grid" or (part is None and variant not in (None, "teacher")):
        return "student"
    return None


def mechanism_figure(records: Iterable[Mapping], *, sigma: float = 0.1,
                     title: str = "Robust accuracy against the input-Jacobian norm") -> go.Figure:
    """Accuracy under noise at ``sigma`` against the mean norm of the top-1 input Jacobian (log x),
    one point per model (``metrics.noise_acc``, ``metrics.jacobian_norm``), coloured by
    ``config.extra.variant`` (:func:`variant_color`; "teacher" for teachers' rows), shaped by
    ``config.extra.teacher``; one panel per ``per_class`` (teachers appear in every panel). Only
    the grid's students (``config.extra.part`` "grid") and the teachers are drawn, not the runs of
    other parts (the equivalence runs). The legend lies below the plot, teachers first."""
    records = [r for r in records if lookup(r, "metrics.jacobian_norm") and _mechanism_part(r) is not None and
               (lookup(r, "metrics.noise_acc") or {}).get(f"{sigma:g}") is not None]
    students = [r for r in records if _mechanism_part(r) == "student"]
    teachers = [r for r in records if _mechanism_part(r) == "teacher"]
    panels = sorted({lookup(r, "config.per_class") for r in students}, key=lambda v: (v is None, v or 0)) or [None]
    fig = make_subplots(rows=1, cols=len(panels), shared_yaxes=True,
                        subplot_titles=[f"per_class = {p}" if p is not None else "all" for p in panels])
    seen = set()
    for col, per_class in enumerate(panels, start=1):
        here = teachers + [r for r in students if lookup(r, "config.per_class") == per_class]
        groups: dict[tuple, list] = {}
        for r in here:
            groups.setdefault((str(lookup(r, "config.extra.variant")), str(lookup(r, "config.extra.teacher"))),
                              []).append(r)
        for rank, ((variant, teacher), rs) in enumerate(groups.items()):
            is_teacher = _mechanism_part(rs[0]) == "teacher"
            name = f"{teacher} teacher" if is_teacher else f"{variant}, {teacher} teacher"
            fig.add_trace(go.Scatter(
                x=[lookup(r, "metrics.jacobian_norm") for r in rs],
                y=[100 * lookup(r, "metrics.noise_acc")[f"{sigma:g}"] for r in rs],
                mode="markers", name=name, legendgroup=name, showlegend=name not in seen,
                legendrank=(1 if is_teacher else 100) + rank,
                marker={"color": variant_color("teacher" if is_teacher else variant), "size": 14 if is_teacher else 9,
                        "symbol": TEACHER_SYMBOLS.get(teacher, "square") + ("-open" if is_teacher else ""),
                        "line": {"width": 2 if is_teacher else 0.5}},
                hovertext=[f"{name}, seed {lookup(r, 'config.seed')}; clean "
                           f"{100 * (lookup(r, 'metrics.test_acc') or 0):.1f}%" for r in rs]), 1, col)
            seen.add(name)
        fig.update_xaxes(type="log", title="mean ||d top-1 logit / dx|| (test images, log)", row=1, col=col,
                         tickvals=LOG_TICKS, ticktext=[f"{t:g}" for t in LOG_TICKS])   # every tick its full value
    fig.update_yaxes(title=f"test accuracy at sigma = {sigma:g} (%)", row=1, col=1)
    n_entries = len(seen)
    fig.update_layout(title=title, template="plotly_white", height=480 + 22 * ((n_entries + 2) // 3),
                      legend={"orientation": "h", "x": 0.0, "xanchor": "left", "y": -0.18, "yanchor": "top",
                              "traceorder": "normal"},
                      margin={"b": 60 + 22 * ((n_entries + 2) // 3)})
    return fig
