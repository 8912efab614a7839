"""Plotly figures. Each function reads results (records, sweeps, histories, tensors) and returns
a ``plotly.graph_objects.Figure``; nothing here computes what the library already computed."""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .results import lookup, table

__all__ = ["equivalence_figure", "accuracy_figure", "noise_figure", "history_figure", "saliency_grid",
           "METHOD_COLORS", "equivalence_terms_figure", "maps_figure", "robustness_figure", "accuracy_bars",
           "attention_figure", "mechanism_figure", "ROBUSTNESS_COLORS"]

METHOD_COLORS = {
    "ce": "#7f7f7f", "kd": "#1f77b4", "activations": "#17becf", "kd+jacobian": "#d62728",
    "activations+jacobian": "#ff7f0e", "noise": "#2ca02c", "at": "#9467bd", "at+jacobian": "#e377c2",
    "lwf": "#8c564b", "teacher": "#000000",
}


def _color(name: str) -> str | None:
    return METHOD_COLORS.get(str(name).split(" ")[0])


def equivalence_figure(sweep: Mapping) -> go.Figure:
    """Log-log plot of ``|MC - noise_free|`` (slope 2) and ``|MC - prediction|`` (slope 4)
    against sigma, from :func:`jkt_lab.theory.sigma_sweep`."""
    rows = sweep["rows"]
    sigmas = [r["sigma"] for r in rows]
    fig = go.Figure()
    series = [("noise_free", f"|MC - noise-free|  (slope {sweep['slope_noise_free']:.2f})", "#1f77b4"),
              ("prediction", f"|MC - prediction|  (slope {sweep['slope_prediction']:.2f})", "#d62728")]
    if "slope_proposition1" in sweep and not math.isclose(rows[0]["curvature_term"], 0.0, abs_tol=1e-15):
        series.append(("proposition1", f"|MC - Proposition 1|  (slope {sweep['slope_proposition1']:.2f})", "#ff7f0e"))
    for key, name, color in series:
        gaps = [max(abs(r["monte_carlo"] - r[key]), 1e-300) for r in rows]
        fig.add_trace(go.Scatter(x=sigmas, y=gaps, mode="lines+markers", name=name, line={"color": color}))
    return _loglog(fig, "absolute gap", f"Noise vs. Jacobian: {rows[0]['loss']} loss")


def _loglog(fig: go.Figure, ytitle: str, title: str) -> go.Figure:
    """Log-log axes against sigma, legend in the lower right (where the curves are not)."""
    fig.update_xaxes(type="log", title="sigma (input noise std)")
    fig.update_yaxes(type="log", title=ytitle)
    fig.update_layout(title=title, template="plotly_white",
                      legend={"x": 0.99, "y": 0.01, "xanchor": "right", "yanchor": "bottom",
                              "bgcolor": "rgba(255,255,255,0.8)"})
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
                    color: str = "config.method", title: str = "Test accuracy against images per class") -> go.Figure:
    """Mean (+- std over seeds) of ``metric`` against ``x``, one line per ``color`` value."""
    records = list(records)
    fig = go.Figure()
    for name, pts in _grouped(records, x, metric, color).items():
        all_label = max((p[0] for p in pts if p[0] is not None), default=1) * 2
        pts = sorted(((p[0] if p[0] is not None else all_label), *p[1:]) for p in pts)
        fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[100 * p[1] for p in pts],
                                 error_y={"type": "data", "array": [100 * p[2] for p in pts]},
                                 mode="lines+markers", name=name, line={"color": _color(name)}))
    fig.update_xaxes(type="log" if x.endswith("per_class") else "linear", title=x.split(".")[-1])
    fig.update_yaxes(title="accuracy (%)")
    fig.update_layout(title=title, template="plotly_white")
    return fig


def noise_figure(records: Iterable[Mapping], *, color: str = "config.method",
                 title: str = "Accuracy under Gaussian input noise") -> go.Figure:
    """Accuracy against noise sigma (from ``metrics.noise_acc``), mean over records per ``color``."""
    curves: dict[str, dict[float, list[float]]] = {}
    for r in records:
        accs = lookup(r, "metrics.noise_acc") or {}
        for s, acc in accs.items():
            curves.setdefault(str(lookup(r, color)), {}).setdefault(float(s), []).append(acc)
    fig = go.Figure()
    for name, by_sigma in curves.items():
        sig = sorted(by_sigma)
        fig.add_trace(go.Scatter(x=sig, y=[100 * sum(by_sigma[s]) / len(by_sigma[s]) for s in sig],
                                 mode="lines+markers", name=name, line={"color": _color(name)}))
    fig.update_xaxes(title="noise sigma (pixel units, [0, 1] scale)")
    fig.update_yaxes(title="accuracy (%)")
    fig.update_layout(title=title, template="plotly_white")
    return fig


def history_figure(history: Sequence[Mapping], *, title: str = "Training") -> go.Figure:
    """Loss terms (left) and accuracies (right) against the training step."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("loss terms", "accuracy"))
    steps = [h["step"] for h in history]
    keys = list(dict.fromkeys(k for h in history for k in h))
    terms = [k for k in keys if k.startswith("loss/")]
    if len(terms) == 2 and "loss/loss" in terms:  # one term: the total is the same curve
        terms.remove("loss/loss")
    for k in terms:
        fig.add_trace(go.Scatter(x=steps, y=[h.get(k) for h in history], name=k[5:], mode="lines"), 1, 1)
    for k in ("train_acc", "val_acc"):
        if k in keys:
            fig.add_trace(go.Scatter(x=steps, y=[None if h.get(k) is None else 100 * h[k] for h in history],
                                     name=k, mode="lines+markers"), 1, 2)
    fig.update_xaxes(title="step")
    fig.update_yaxes(type="log", row=1, col=1)
    fig.update_yaxes(title="%", row=1, col=2)
    fig.update_layout(title=title, template="plotly_white")
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
                      margin={"l": 60, "r": 10, "t": 60, "b": 10})
    return fig


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
                normalize: bool = True, colorscale: str = "Inferno") -> go.Figure:
    """One input image (C, H, W) on the left, then a grid of 2-D maps: ``rows`` maps a row name
    to ``{column name: (h, w) tensor}`` (maps may differ in size, e.g. attention maps of several
    layers). Each map is scaled to [0, 1] by its maximum when ``normalize``."""
    names = list(rows)
    n_cols = max((len(rows[r]) for r in names), default=0)
    if not names or n_cols == 0:
        raise ValueError("rows must hold at least one row with at least one map")
    titles = []
    for r in names:
        cols = list(rows[r])
        titles += ["input" if not titles else ""] + [f"{c}" for c in cols] + [""] * (n_cols - len(cols))
    fig = make_subplots(rows=len(names), cols=1 + n_cols, horizontal_spacing=0.01,
                        vertical_spacing=0.08 if len(names) > 1 else 0.0, subplot_titles=titles,
                        row_titles=names if len(names) > 1 else None)
    fig.add_trace(go.Image(z=_to_rgb(image), name="input"), 1, 1)
    for i, r in enumerate(names):
        for j, (col, m) in enumerate(rows[r].items()):
            m = m.detach().cpu().float()
            if normalize:
                m = m / m.abs().max().clamp(min=1e-12)
            fig.add_trace(go.Heatmap(z=m.flip(0).numpy(), colorscale=colorscale, showscale=False,
                                     zmin=0 if normalize else None, zmax=1 if normalize else None,
                                     name=f"{r}: {col}"), i + 1, j + 2)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_layout(title=title, template="plotly_white", height=190 * len(names) + 90,
                      width=max(420, 150 * (1 + n_cols)), margin={"l": 60, "r": 10, "t": 80, "b": 10})
    return fig


def robustness_figure(curves: Mapping[str, Sequence[Mapping]], *,
                      title: str = "Accuracy under Gaussian input noise") -> go.Figure:
    """Accuracy against noise sigma, one line per model: ``curves`` maps a name to the rows of
    :func:`jkt_lab.train.robustness` (each with ``sigma`` and ``acc``)."""
    fig = go.Figure()
    for name, rows in curves.items():
        rows = sorted(rows, key=lambda r: r["sigma"])
        fig.add_trace(go.Scatter(x=[r["sigma"] for r in rows], y=[100 * r["acc"] for r in rows],
                                 mode="lines+markers", name=str(name),
                                 line={"color": _color(name), "dash": "dot" if name == "teacher" else None}))
    fig.update_xaxes(title="noise sigma (pixel units, [0, 1] scale)")
    fig.update_yaxes(title="accuracy (%)")
    fig.update_layout(title=title, template="plotly_white")
    return fig


def accuracy_bars(records: Iterable[Mapping], label, *, metric: str = "metrics.test_acc",
                  title: str = "Test accuracy") -> go.Figure:
    """Bars of the mean ``metric`` (%, +- std over records) per label; ``label(record)`` names a
    record's bar (e.g. method and initialisation). Bars keep the order labels first appear in."""
    import statistics
    groups: dict[str, list[float]] = {}
    for r in records:
        v = lookup(r, metric)
        if v is not None:
            groups.setdefault(str(label(r)), []).append(100 * float(v))
    names = list(groups)
    fig = go.Figure(go.Bar(x=names, y=[statistics.fmean(groups[n]) for n in names],
                           error_y={"type": "data", "array": [statistics.pstdev(groups[n]) for n in names]},
                           marker={"color": [_color(n) or "#7f7f7f" for n in names]},
                           text=[f"{statistics.fmean(groups[n]):.1f}" for n in names], textposition="outside",
                           name=metric.split(".")[-1]))
    fig.update_yaxes(title="accuracy (%)", rangemode="tozero")
    fig.update_layout(title=title, template="plotly_white")
    return fig


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


ROBUSTNESS_COLORS = {
    "kd": "#1f77b4", "kd+jacobian (normalised)": "#d62728", "kd+jacobian (squared)": "#ff7f0e", "noise": "#2ca02c",
    "kd+jacobian_norm": "#9467bd", "teacher": "#000000",
}
TEACHER_SYMBOLS = {"standard": "circle", "noise-trained": "diamond"}


def mechanism_figure(records: Iterable[Mapping], *, sigma: float = 0.1,
                     title: str = "Robust accuracy against the input-Jacobian norm") -> go.Figure:
    """Accuracy under noise at ``sigma`` against the mean norm of the top-1 input Jacobian (log x),
    one point per model (``metrics.noise_acc``, ``metrics.jacobian_norm``), coloured by
    ``config.extra.variant`` ("teacher" for teachers' rows), shaped by ``config.extra.teacher``;
    one panel per ``per_class`` (teachers appear in every panel)."""
    records = [r for r in records if lookup(r, "metrics.jacobian_norm") and
               (lookup(r, "metrics.noise_acc") or {}).get(f"{sigma:g}") is not None]
    students = [r for r in records if lookup(r, "config.extra.variant") != "teacher"]
    teachers = [r for r in records if lookup(r, "config.extra.variant") == "teacher"]
    panels = sorted({lookup(r, "config.per_class") for r in students}, key=lambda v: (v is None, v or 0)) or [None]
    fig = make_subplots(rows=1, cols=len(panels), shared_yaxes=True,
                        subplot_titles=[f"per_class = {p}" if p is not None else "all" for p in panels])
    seen = set()
    for col, per_class in enumerate(panels, start=1):
        here = [r for r in students if lookup(r, "config.per_class") == per_class] + teachers
        groups: dict[tuple, list] = {}
        for r in here:
            groups.setdefault((str(lookup(r, "config.extra.variant")), str(lookup(r, "config.extra.teacher"))),
                              []).append(r)
        for (variant, teacher), rs in groups.items():
            name = f"{variant}, {teacher} teacher" if variant != "teacher" else f"{teacher} teacher"
            fig.add_trace(go.Scatter(
                x=[lookup(r, "metrics.jacobian_norm") for r in rs],
                y=[100 * lookup(r, "metrics.noise_acc")[f"{sigma:g}"] for r in rs],
                mode="markers", name=name, legendgroup=name, showlegend=name not in seen,
                marker={"color": ROBUSTNESS_COLORS.get(variant, "#7f7f7f"), "size": 14 if variant == "teacher" else 9,
                        "symbol": TEACHER_SYMBOLS.get(teacher, "square") + ("-open" if variant == "teacher" else ""),
                        "line": {"width": 2 if variant == "teacher" else 0.5}},
                hovertext=[f"{name}, seed {lookup(r, 'config.seed')}; clean "
                           f"{100 * (lookup(r, 'metrics.test_acc') or 0):.1f}%" for r in rs]), 1, col)
            seen.add(name)
        fig.update_xaxes(type="log", title="mean ||d top-1 logit / dx|| (test images, log)", row=1, col=col)
    fig.update_yaxes(title=f"test accuracy at sigma = {sigma:g} (%)", row=1, col=1)
    fig.update_layout(title=title, template="plotly_white")
    return fig
