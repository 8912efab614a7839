"""Tables and figures from a results file: ``REPORT.md`` (markdown tables) and ``report.html``
(the same tables with interactive plotly figures, plotly.js embedded so it opens offline)."""
from __future__ import annotations

import html
from collections.abc import Iterable, Mapping
from pathlib import Path

from .results import ResultStore, lookup, table, to_markdown
from .viz import accuracy_figure, noise_figure

__all__ = ["accuracy_table", "noise_table", "write_report"]


def _fmt(mean, std, n):
    if mean is None:
        return ""
    return f"{100 * mean:.1f} ± {100 * std:.1f}" if std is not None and n > 1 else f"{100 * mean:.1f}"


def accuracy_table(records: Iterable[Mapping], metric: str = "metrics.test_acc") -> list[dict]:
    """One row per method, one column per ``per_class`` ("all" for None): mean ± std (%) over seeds."""
    records = list(records)
    rows = table(records, [], group_by=["config.method", "config.per_class"], metric=metric)
    per_class = sorted({r["config.per_class"] for r in rows}, key=lambda v: (v is None, v or 0))
    out: dict[str, dict] = {}
    for r in rows:
        row = out.setdefault(r["config.method"], {"method": r["config.method"]})
        col = "all" if r["config.per_class"] is None else str(r["config.per_class"])
        row[col] = _fmt(r[f"{metric}.mean"], r[f"{metric}.std"], r["n"])
    cols = ["method"] + ["all" if p is None else str(p) for p in per_class]
    return [{c: row.get(c, "") for c in cols} for row in out.values()]


def noise_table(records: Iterable[Mapping]) -> list[dict]:
    """One row per (method, per_class), one column per noise sigma: mean test accuracy (%)."""
    groups: dict[tuple, dict[str, list[float]]] = {}
    for r in records:
        accs = lookup(r, "metrics.noise_acc")
        if not accs:
            continue
        key = (lookup(r, "config.method"), lookup(r, "config.per_class"))
        for s, a in accs.items():
            groups.setdefault(key, {}).setdefault(s, []).append(a)
    rows = []
    for (method, per_class), by_sigma in groups.items():
        row = {"method": method, "per_class": "all" if per_class is None else per_class}
        for s in sorted(by_sigma, key=float):
            row[f"sigma={s}"] = f"{100 * sum(by_sigma[s]) / len(by_sigma[s]):.1f}"
        rows.append(row)
    return rows


def write_report(records_or_path, out_dir: str | Path, *, title: str = "jkt_lab results") -> dict[str, Path]:
    """Write ``REPORT.md`` and ``report.html`` into ``out_dir``; returns their paths."""
    if isinstance(records_or_path, (str, Path)):
        path = Path(records_or_path)
        if not path.exists():
            raise FileNotFoundError(f"results file {path} does not exist")
        records = ResultStore(path).records()
    else:
        records = list(records_or_path)
    if not records:
        raise ValueError("no results to report: the results file is empty")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    acc = accuracy_table(records)
    noise = noise_table(records)
    md = [f"# {title}", "", f"{len(records)} runs.", "", "## Test accuracy (%) by images per class",
          "", "Mean ± std over seeds.", "", to_markdown(acc), ""]
    if noise:
        md += ["## Test accuracy (%) under Gaussian input noise", "", to_markdown(noise), ""]
    cos = table(records, [], group_by=["config.method", "config.per_class"], metric="metrics.saliency_cosine")
    cos = [r for r in cos if r["metrics.saliency_cosine.mean"] is not None]
    if cos:
        md += ["## Teacher-student saliency cosine (top-1 Jacobians, test images)", "",
               to_markdown([{"method": r["config.method"], "per_class": r["config.per_class"],
                             "cosine": r["metrics.saliency_cosine.mean"], "n": r["n"]} for r in cos], floatfmt=".3f"), ""]
    md_path = out / "REPORT.md"
    md_path.write_text("\n".join(md))
    figs = [accuracy_figure(records)]
    if noise:
        figs.append(noise_figure(records))
    parts = [f"<h1>{html.escape(title)}</h1>", f"<pre>{html.escape(chr(10).join(md[2:]))}</pre>"]
    for i, fig in enumerate(figs):
        parts.append(fig.to_html(full_html=False, include_plotlyjs=(i == 0), default_width="100%"))
    html_path = out / "report.html"
    html_path.write_text("<!doctype html><html><head><meta charset='utf-8'><title>" + html.escape(title)
                         + "</title></head><body>" + "\n".join(parts) + "</body></html>")
    return {"markdown": md_path, "html": html_path}
