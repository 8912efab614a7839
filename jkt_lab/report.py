"""Reports from stored records: ``REPORT.md`` (markdown tables) and ``report.html`` (HTML tables and
plotly figures; plotly.js embedded once, so the page opens from disk without a network).

:func:`write_report` renders any results file (``jkt-lab report``, sweeps, ``reproduce``);
:func:`write_demo_report` renders the main job's (``jkt-lab demo``): a verdict computed from the
numbers, saliency maps of the teacher and each student on the same test images, training
curves, accuracy under noise, and the exact command and config that produced it.
"""
from __future__ import annotations

import html
import json
import math
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from .analysis.claims import control_comparisons, paper_claims, variant
from .analysis.compare import paired_compare
from .results import ResultStore, lookup, table
from .viz import (accuracy_figure, accuracy_groups_figure, noise_figure, saliency_grid,
                  training_curves_figure)

__all__ = ["variant", "accuracy_table", "noise_table", "claims", "write_report", "Document", "method_summary",
           "verdict", "write_demo_report", "add_robustness_section",
           "check_plotlyjs", "copy_plotlyjs", "SHARED_PLOTLYJS"]


# --------------------------------------------------------------------------- a document: markdown and HTML

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.7em; } h2 { font-size: 1.3em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; font-size: 0.95em; }
th, td { padding: 4px 12px; border-bottom: 1px solid #e3e3e3; text-align: left; }
th { background: #f4f4f4; } td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
caption { caption-side: top; text-align: left; color: #555; padding-bottom: 4px; }
pre { background: #f6f8fa; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
code { background: #f6f8fa; padding: 0 3px; }
.verdict { background: #eef6ee; border-left: 4px solid #2ca02c; padding: 0.4em 1em; }
.figure { margin: 1em 0 2em; }
"""


def _inline(text: str) -> str:
    """Escaped HTML of one line of our markdown: ``**bold**`` and ```code``` only."""
    out = html.escape(text, quote=False)
    out = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", out)


class Document:
    """A report as a list of blocks (headings, paragraphs, lists, tables, figures, code), rendered
    both to markdown (:meth:`markdown`, figures named only) and to HTML (:meth:`html`)."""

    def __init__(self, title: str):
        self.title = str(title)
        self.blocks: list[tuple] = []

    def heading(self, text: str, level: int = 2) -> "Document":
        self.blocks.append(("heading", str(text), int(level)))
        return self

    def text(self, text: str, css: str | None = None) -> "Document":
        """A paragraph (``**bold**`` and ```code``` allowed)."""
        self.blocks.append(("text", str(text), css))
        return self

    def items(self, lines: Sequence[str], css: str | None = None) -> "Document":
        """A bulleted list."""
        self.blocks.append(("items", [str(line) for line in lines], css))
        return self

    def table(self, rows: Sequence[Mapping], columns: Sequence[str] | None = None, floatfmt: str = ".2f") -> "Document":
        self.blocks.append(("table", list(rows), columns, floatfmt))
        return self

    def figure(self, fig) -> "Document":
        self.blocks.append(("figure", fig))
        return self

    def code(self, text: str, summary: str | None = None) -> "Document":
        """Preformatted text; with ``summary``, folded in HTML (a ``<details>`` that opens on click)."""
        self.blocks.append(("code", str(text), summary))
        return self

    @property
    def n_figures(self) -> int:
        return sum(b[0] == "figure" for b in self.blocks)

    def markdown_lines(self, *, title: bool = True) -> list[str]:
        out = [f"# {self.title}", ""] if title else []
        for block in self.blocks:
            kind = block[0]
            if kind == "heading":
                out += ["#" * block[2] + " " + block[1], ""]
            elif kind == "text":
                out += [block[1], ""]
            elif kind == "items":
                out += [f"- {line}" for line in block[1]] + [""]
            elif kind == "table":
                out += [_markdown_table(block[1], block[2], block[3]), ""]
            elif kind == "figure":
                out += [f"*Figure (in report.html): {_figure_name(block[1])}*", ""]
            elif kind == "code":
                out += ([block[2] + ":", ""] if block[2] else []) + ["```", block[1], "```", ""]
        return out

    def markdown(self) -> str:
        return "\n".join(self.markdown_lines())

    def html(self, plotlyjs: str = "inline") -> str:
        """The page. ``plotlyjs`` (:func:`check_plotlyjs`): ``"inline"``, plotly.js embedded once
        (in the first figure), so the page opens offline; ``"cdn"``, loaded from the CDN; or a
        relative path to a ``.js`` file (``"../plotly.min.js"``), a copy kept beside the page,
        linked once: a small page that opens offline (:meth:`write` puts the copy there)."""
        plotlyjs = check_plotlyjs(plotlyjs)
        body = [f"<h1>{html.escape(self.title)}</h1>"]
        if plotlyjs == "cdn" and any(block[0] == "figure" for block in self.blocks):
            body.append('<p class="note">The figures load plotly.js from cdn.plot.ly: offline they stay blank. '
                        "To see them offline, write this page again with <code>--plotlyjs inline</code>.</p>")
        head = (f'<script src="{html.escape(plotlyjs)}" charset="utf-8"></script>'
                if plotlyjs.endswith(".js") and self.n_figures else "")
        n_fig = 0
        for block in self.blocks:
            kind = block[0]
            if kind == "heading":
                body.append(f"<h{block[2]}>{_inline(block[1])}</h{block[2]}>")
            elif kind == "text":
                css = f' class="{block[2]}"' if block[2] else ""
                body.append(f"<p{css}>{_inline(block[1])}</p>")
            elif kind == "items":
                css = f' class="{block[2]}"' if block[2] else ""
                body.append(f"<ul{css}>" + "".join(f"<li>{_inline(line)}</li>" for line in block[1]) + "</ul>")
            elif kind == "table":
                body.append(_html_table(block[1], block[2], block[3]))
            elif kind == "figure":
                js = {"cdn": "cdn", "inline": True}.get(plotlyjs, False) if n_fig == 0 else False
                body.append('<div class="figure">' + block[1].to_html(full_html=False, include_plotlyjs=js,
                                                                      default_width="100%") + "</div>")
                n_fig += 1
            elif kind == "code":
                pre = f"<pre>{html.escape(block[1])}</pre>"
                body.append(f"<details><summary>{_inline(block[2])}</summary>{pre}</details>" if block[2] else pre)
        return ("<!doctype html>\n<html lang='en'><head><meta charset='utf-8'>"
                f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>{html.escape(self.title)}"
                f"</title><style>{_STYLE}</style>{head}</head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n")

    def write(self, out_dir: str | Path, plotlyjs: str = "inline") -> dict[str, Path]:
        """``REPORT.md`` and ``report.html`` in ``out_dir`` (each written to a temporary file and
        renamed, so a crash never leaves half a report). ``plotlyjs`` a relative ``.js`` path: the
        installed plotly's own ``plotly.min.js`` is copied there when no file is; ``"cdn"``: a
        shared :data:`SHARED_PLOTLYJS` in ``out_dir`` or its parent (the committed reports' copy,
        ``results/plotly.min.js``) is linked instead of the CDN, so those pages draw offline."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        plotlyjs = check_plotlyjs(plotlyjs)
        if plotlyjs == "cdn":
            shared = next((rel for rel in (SHARED_PLOTLYJS, f"../{SHARED_PLOTLYJS}") if (out / rel).is_file()), None)
            plotlyjs = shared or plotlyjs
        if plotlyjs.endswith(".js") and self.n_figures:
            copy_plotlyjs(out / plotlyjs)
        paths = {"markdown": out / "REPORT.md", "html": out / "report.html"}
        for key, text in (("markdown", self.markdown()), ("html", self.html(plotlyjs))):
            tmp = paths[key].with_name(paths[key].name + ".tmp")
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(paths[key])
        return paths


#: The name of the one plotly.js copy that the committed reports share (``results/plotly.min.js``).
SHARED_PLOTLYJS = "plotly.min.js"


def check_plotlyjs(value: str) -> str:
    """``"inline"``, ``"cdn"``, or a relative path to a ``.js`` file (no scheme, not absolute)."""
    if value in ("inline", "cdn"):
        return value
    if isinstance(value, str) and value.endswith(".js") and "://" not in value and not value.startswith("/") \
            and "\\" not in value and not Path(value).is_absolute():
        return value
    raise ValueError(f"plotlyjs must be 'inline', 'cdn' or a relative path to a .js file, got {value!r}")


def copy_plotlyjs(path: str | Path) -> Path:
    """The installed plotly package's ``plotly.min.js`` at ``path`` (written only when no file is
    there: one copy serves every report that links it). The copy matches the figures' plotly."""
    path = Path(path)
    if not path.is_file():
        from plotly.offline import get_plotlyjs
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(get_plotlyjs(), encoding="utf-8")
        tmp.replace(path)
    return path


def _column_formats(rows, columns, floatfmt: str) -> dict[str, str]:
    """Each column's float format, so that every cell of a column has the same decimals: a ``g``
    format (significant digits: "0.912" beside "12.3" and "1.23e+03") becomes, per column, the
    fixed format that keeps its digits for the column's smallest non-zero value (at most 4
    decimals); a fixed format is kept."""
    import math
    if not floatfmt.endswith("g"):
        return {c: floatfmt for c in columns}
    try:
        digits = int(floatfmt.strip(".g") or 6)
    except ValueError:
        return {c: floatfmt for c in columns}
    out = {}
    for c in columns:
        values = [abs(float(v)) for r in rows if isinstance(v := r.get(c), float) and math.isfinite(v) and v != 0]
        decimals = digits - 1 - math.floor(math.log10(min(values))) if values else 2
        out[c] = f".{min(max(decimals, 0), 4)}f"
    return out


def _table_cells(rows, columns, floatfmt: str) -> tuple[list[str], list[bool], list[list[str]]]:
    """(columns, which are numeric, each row's cell texts) of a report table, floats per column
    (:func:`_column_formats`)."""
    from numbers import Real
    rows = [dict(r) for r in rows]
    columns = list(columns) if columns else list(dict.fromkeys(k for r in rows for k in r))
    formats = _column_formats(rows, columns, floatfmt)
    is_num = lambda v: isinstance(v, Real) and not isinstance(v, bool)  # noqa: E731
    numeric = [any(r.get(c) is not None for r in rows) and all(r.get(c) is None or is_num(r.get(c)) for r in rows)
               for c in columns]

    def text(v, c):
        if v is None:
            return ""
        if isinstance(v, float):
            return format(v, formats[c])
        return str(v) if isinstance(v, (str, int)) else json.dumps(v, default=str)
    return columns, numeric, [[text(r.get(c), c) for c in columns] for r in rows]


def _markdown_table(rows, columns, floatfmt: str) -> str:
    columns, numeric, cells = _table_cells(rows, columns, floatfmt)
    if not columns:
        return ""
    esc = lambda t: str(t).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(esc(c) for c in columns) + " |", "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    lines += ["| " + " | ".join(esc(t) for t in row) + " |" for row in cells]
    return "\n".join(lines) + "\n"


def _html_table(rows, columns, floatfmt: str) -> str:
    columns, numeric, cells = _table_cells(rows, columns, floatfmt)
    if not columns:
        return ""
    cls = [' class="num"' if n else "" for n in numeric]
    head = "".join(f"<th{k}>{html.escape(str(c))}</th>" for c, k in zip(columns, cls))
    body = "".join("<tr>" + "".join(f"<td{k}>{html.escape(t)}</td>" for t, k in zip(row, cls)) + "</tr>"
                   for row in cells)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _figure_name(fig) -> str:
    """A figure's title as plain text (a ``<br><sup>subtitle</sup>`` in parentheses)."""
    name = fig.layout.title.text or "figure"
    name = re.sub(r"<br>\s*<sup>(.*?)</sup>", r" (\1)", name)
    return re.sub(r"<[^>]+>", " ", name).strip()


# --------------------------------------------------------------------------- tables


def _fmt(mean, std, n):
    if mean is None:
        return ""
    return f"{100 * mean:.1f} ± {100 * std:.1f}" if std is not None and n > 1 else f"{100 * mean:.1f}"


def _labelled(records):
    return [{**r, "variant": variant(r)} for r in records]


def accuracy_table(records: Iterable[Mapping], metric: str = "metrics.test_acc") -> list[dict]:
    """One row per method (variant), one column per ``per_class`` ("all" for None): mean ± std (%) over seeds."""
    records = _labelled(records)
    rows = table(records, [], group_by=["variant", "config.per_class"], metric=metric)
    per_class = sorted({r["config.per_class"] for r in rows}, key=lambda v: (v is None, v or 0))
    out: dict[str, dict] = {}
    for r in rows:
        row = out.setdefault(r["variant"], {"method": r["variant"]})
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
        key = (variant(r), lookup(r, "config.per_class"))
        for s, a in accs.items():
            groups.setdefault(key, {}).setdefault(s, []).append(a)
    rows = []
    order = {name: i for i, name in enumerate(dict.fromkeys(m for m, _ in groups))}  # methods as first met
    for (method, per_class), by_sigma in sorted(groups.items(), key=lambda g: (g[0][1] is None, g[0][1] or 0,
                                                                                order[g[0][0]])):
        row = {"method": method, "per_class": "all" if per_class is None else per_class}
        for s in sorted(by_sigma, key=float):
            row[f"sigma={s}"] = f"{100 * sum(by_sigma[s]) / len(by_sigma[s]):.1f}"
        rows.append(row)
    return rows


def _add_claims(doc: Document, records: list, equivalence_rows=None) -> None:
    """The verdict box: the paper's claims (a)-(e) by the paired rule (:mod:`jkt_lab.analysis`),
    the controls, and whether the Jacobians aligned."""
    doc.heading("Claims of the paper")
    doc.text("Each claim is judged by one rule (`jkt_lab.analysis.compare`): per setting (images per class), the "
             "paired difference over seeds with its 95% t interval; Holm's correction across the settings of a claim; "
             "**supported** when at least one setting is shown, none shows the opposite and the first method is ahead "
             "in more than half the settings.")
    doc.items([c.markdown() for c in paper_claims(records, equivalence_rows)], css="verdict")
    controls = control_comparisons(records)
    if controls:
        doc.heading("Controls: is it the teacher's Jacobian, or any regulariser?", 3)
        doc.text("kd+jacobian against each control at every per_class (test accuracy, paired by seed). The claim that "
                 "matching the teacher's Jacobian transfers knowledge holds only where kd+jacobian beats them.")
        doc.table([{"control": name, "verdict (kd+jacobian better)": c.verdict, "ahead in": f"{c.wins} of {len(c.settings)}",
                    "mean difference (points)": f"{statistics.fmean(x.mean for x in c.settings):+.1f}" if c.settings else "",
                    "shown at per_class": ", ".join(str(x.setting) for x in c.shown) or "none",
                    "opposite at per_class": ", ".join(str(x.setting) for x in c.opposite) or "none"}
                   for name, c in controls])
    dist = [r for r in records if lookup(r, "config.extra.part") == "distillation"]
    cos = paired_compare(dist, "kd+jacobian", "kd", lambda r: lookup(r, "metrics.saliency_cosine"), label=variant,
                         setting=lambda r: lookup(r, "config.per_class"), scale=1.0)
    if cos.settings:
        doc.heading("Did the Jacobians align? Teacher-student cosine on test images", 3)
        doc.table(cos.rows(digits=3), floatfmt=".3f")


def claims(records: Iterable[Mapping], equivalence_rows=None, letters: str = "abcde") -> list[str]:
    """Markdown lines: the paper's claims (``letters`` of (a)-(e)), each with its verdict and numbers."""
    return [c.markdown() for c in paper_claims(list(records), equivalence_rows) if c.letter in letters]


def selection_rows(records: Iterable[Mapping]) -> list[dict]:
    """One row per selection run: the variant, the settings its grid varied (the others are left
    blank), validation accuracy (%) and "chosen" on the best run of each variant (the first on ties)."""
    by_variant: dict[str, list[Mapping]] = {}
    for r in records:
        by_variant.setdefault(variant(r), []).append(r)
    rows = []
    for name, recs in by_variant.items():
        varied = [k for k in recs[0]["config"] if k not in ("extra", "seed")
                  and len({json.dumps(r["config"].get(k), sort_keys=True) for r in recs}) > 1]
        best = max(range(len(recs)), key=lambda i: (lookup(recs[i], "metrics.val_acc") or -1, -i))
        for i, r in enumerate(recs):
            rows.append({"variant": name, "searched": ", ".join(f"{k}={r['config'][k]:g}"
                                                               if isinstance(r["config"][k], float)
                                                               else f"{k}={r['config'][k]}" for k in varied),
                         "validation accuracy (%)": 100 * (lookup(r, "metrics.val_acc") or 0),
                         "chosen": "chosen" if i == best else ""})
    return rows


def _accuracy_plot(records: list, title: str):
    """A log axis of images per class when there are three settings or more, else grouped bars
    on a categorical axis (no single-point lines on a log axis)."""
    n_settings = len({lookup(r, "config.per_class") for r in records})
    if n_settings >= 3:
        return accuracy_figure(records, color="variant", title=title)
    return accuracy_groups_figure(records, color="variant", title=title)


def _section(doc: Document, title: str, records: list) -> None:
    labelled = _labelled(records)
    doc.heading(f"{title}: test accuracy (%) by images per class")
    doc.text("Mean ± std over seeds.")
    doc.table(accuracy_table(records))
    doc.figure(_accuracy_plot(labelled, f"{title}: test accuracy against images per class"))
    noise = noise_table(records)
    if noise:
        doc.heading(f"{title}: test accuracy (%) under Gaussian input noise")
        doc.table(noise)
        doc.figure(noise_figure(labelled, color="variant", title=f"{title}: accuracy under input noise"))
    # a transfer student's output k is not the source teacher's output k: no cosine to compare there
    same_task = [r for r in labelled if lookup(r, "config.teacher_classes") == lookup(r, "config.classes")]
    cos = table(same_task, [], group_by=["variant", "config.per_class"], metric="metrics.saliency_cosine")
    cos = [r for r in cos if r["metrics.saliency_cosine.mean"] is not None]
    if cos:
        doc.heading(f"{title}: teacher-student saliency cosine (top-1 Jacobians, test images)")
        doc.table([{"method": r["variant"], "per_class": r["config.per_class"],
                    "cosine": r["metrics.saliency_cosine.mean"], "n": r["n"]} for r in cos], floatfmt=".3f")
    with_history = [r for r in labelled if r.get("history")]
    if with_history:
        settings = sorted({lookup(r, "config.per_class") for r in with_history}, key=lambda v: (v is None, v or 0))
        few = [r for r in with_history if lookup(r, "config.per_class") == settings[0]]
        shown = "all images" if settings[0] is None else \
            f"{settings[0]} image{'s' if settings[0] != 1 else ''} per class"
        doc.figure(training_curves_figure(few, color="variant",
                                          title=f"{title}: training curves at {shown} (mean over seeds, band: min to max)"))


def add_robustness_section(doc: Document, records: Iterable[Mapping]) -> bool:
    """Add the robustness experiment (``jkt_lab.robustness``) to ``doc``: the teachers' and
    students' accuracy under noise, the hyper-parameters chosen on the validation split, the
    mechanism (Jacobian norm, cosine to the teacher) with its figure, Proposition 1 at the
    teachers and in training. Returns False (and adds nothing) when ``records`` hold none of it."""
    from . import robustness as rb
    from .viz import mechanism_figure

    records = [r for r in records if lookup(r, "config.extra.experiment") == rb.EXPERIMENT]
    if not records:
        return False
    quick = any(lookup(r, "config.extra.quick") for r in records)
    sigma = f"{rb.SELECT_SIGMA:g}"
    for dataset in sorted({d for r in records if (d := lookup(r, "config.dataset")) in rb.SETUPS}):
        s = rb.setup(dataset)
        mine = [r for r in records if lookup(r, "config.dataset") == dataset]
        grid = rb.grid_records(mine, s, quick)
        students = [r for r in grid if lookup(r, "config.extra.part") == "grid"]
        per_class = sorted({p for r in students if (p := lookup(r, "config.per_class")) is not None})
        seeds = sorted({lookup(r, "config.seed") for r in students})
        title = f"Robustness to noisy inputs on {dataset}" + (" (quick, toy size)" if quick else "")
        sub = 3
        if title != doc.title:             # a section of a larger report; the report of its own: the page's title
            doc.heading(title)
        else:
            sub = 2
        doc.text(f"Teachers: standard and trained with Gaussian input noise (sigma {s.teacher_sigma:g}); students: "
                 f"{', '.join(rb.VARIANTS)}; per_class {', '.join(map(str, per_class))}; seeds "
                 f"{', '.join(map(str, seeds))}. Accuracy on test images under Gaussian noise of std sigma (pixel "
                 "units, [0, 1] scale); mean ± std over seeds.")
        doc.heading("Test accuracy (%) under input noise", sub)
        doc.table(rb.robustness_table(mine, s, quick))
        sel = rb.selection_table(mine, s, quick)
        if sel:
            doc.heading(f"Hyper-parameters chosen on the validation split (accuracy at sigma {sigma}, per teacher, "
                        f"per_class {s.select_per_class}, seed 0)", sub)
            doc.table(sel, floatfmt=".1f")
        doc.heading("Mechanism: input-Jacobian norm and cosine to the teacher (test images)", sub)
        doc.text("jacobian norm: mean over test images of ||d top-1 logit / dx|| (the model's own top-1 output, "
                 "pixel units); cosine: teacher-student cosine of the Jacobians of the teacher's top-1 output.")
        mech = rb.mechanism_table(mine, s, quick)
        doc.table(mech, floatfmt=".3g")
        lines = rb.findings(mine, s, quick)
        if lines:
            doc.items(lines)
        doc.figure(mechanism_figure(grid, sigma=rb.SELECT_SIGMA,
                                    title=f"{title}: accuracy at sigma {sigma} against the Jacobian norm"))
        energy = rb.logit_energy_table(mine)
        if energy:
            doc.heading("Proposition 1 at the teachers: where the noise leaves the linear region", sub)
            doc.text("E ||T(x + sigma z)||^2 over test images (one noise draw each) against the second-order "
                     "prediction ||T(x)||^2 + sigma^2 ||J_T(x)||_F^2 (Proposition 1 with a zero student). A ratio near "
                     "1: noise of this size probes the teacher's Jacobian; far from 1 (above or below): it leaves the region where "
                     "the teacher is close to linear, and distillation on noisy inputs is no longer Jacobian matching.")
            doc.table(energy, floatfmt=".3g")
        eq = rb.equivalence_table(mine)
        if eq:
            outputs = sorted({lookup(r, "config.jacobian_output") for r in mine
                              if lookup(r, "config.extra.part") == "equivalence"
                              and lookup(r, "config.method") == "activations+jacobian"})
            doc.heading("Proposition 1 in training: noise distillation vs. activations + sigma^2 x Jacobian", sub)
            doc.text("Students trained with the squared loss on noisy inputs (noise, one noise sample a step) against "
                     "students trained with activation matching plus sigma^2 times the squared distance of the "
                     f"Jacobians (activations+jacobian, jacobian_output {', '.join(outputs)}: 'random' is one random "
                     "projection a step, an unbiased estimate of the all-outputs distance), same teacher, data and "
                     "activation weight a (jacobian_weight = a sigma^2). cross / floor: mean over pairs of one student "
                     "of each method and different seeds / the larger mean over pairs of two seeds of one method; "
                     "relative distances on test images (logits; Jacobians of all outputs), absolute accuracy "
                     "differences in points. A quantity agrees when cross <= floor.")
            doc.table(eq)
            agree = [r["sigma"] for r in eq if r["agree within the floor"].count(",") == len(rb.QUANTITIES) - 1]
            differ = [r["sigma"] for r in eq if r["sigma"] not in agree]
            doc.text("The two trainings agree within the seed-to-seed floor on all four quantities at sigma "
                     + (", ".join(f"{a:g}" for a in agree) or "(none)") + "; not at "
                     + (", ".join(f"{a:g}" for a in differ) or "(none)") + ".", css="verdict")
    return True


def _load(records_or_path) -> list[dict]:
    if isinstance(records_or_path, (str, Path)):
        path = Path(records_or_path)
        if not path.exists():
            raise FileNotFoundError(f"results file {path} does not exist")
        records = ResultStore(path).records()
    else:
        records = list(records_or_path)
    if not records:
        raise ValueError("no results to report: the results file is empty")
    return records


def recorded_time(records: Iterable[Mapping]) -> str:
    """One sentence: the training wall time the runs themselves recorded, summed by part and device
    (a results file filled across sittings, or on more than one machine, says so here)."""
    sums: dict[str, dict[str, float]] = {}
    for r in records:
        if r.get("wall_time_s") is None:   # a summary record (e.g. equivalence pairs), not a run
            continue
        part = lookup(r, "config.extra.part") or lookup(r, "config.extra.experiment") or "runs"
        by_device = sums.setdefault(part, {})
        device = str(r.get("device") or "?").split(":")[0]  # cuda:0 and cuda are one device
        by_device[device] = by_device.get(device, 0.0) + r["wall_time_s"]
    return ("Training wall time recorded in the runs (the sum of each run's own time, by part and device): "
            + "; ".join(f"{part} " + ", ".join(f"{t / 60:.1f} min on {d}" for d, t in by_device.items())
                        for part, by_device in sums.items()) + ".")


def write_report(records_or_path, out_dir: str | Path, *, title: str = "jkt_lab results",
                 timings: Mapping[str, float] | None = None, plotlyjs: str = "inline") -> dict[str, Path]:
    """Write ``REPORT.md`` and ``report.html`` into ``out_dir``; returns their paths.

    Records with ``config.extra.part`` (from ``jkt-lab reproduce``) get one section per part
    and the "Claims of the paper" section. ``plotlyjs="inline"`` embeds plotly.js once (the page
    opens offline); ``"cdn"`` links it (a small file, for committed reports).
    """
    check_plotlyjs(plotlyjs)
    records = _load(records_or_path)
    n_records = len(records)
    robust = [r for r in records if lookup(r, "config.extra.experiment") == "robustness"]  # a section of its own
    records = [r for r in records if lookup(r, "config.extra.experiment") != "robustness"]
    parts: dict[str, list] = {}
    for r in records:
        parts.setdefault(lookup(r, "config.extra.part") or "runs", []).append(r)
    doc = Document(title)
    doc.text(f"{n_records} runs. Generated by `jkt-lab report`.")
    # a transfer teacher (other classes than the student's) measured on the student's labels says nothing
    teacher_acc = sorted({(round(100 * v, 2), lookup(r, "config.n_test")) for r in records
                          if (v := lookup(r, "metrics.teacher_test_acc"))
                          and lookup(r, "config.teacher_classes") == lookup(r, "config.classes")},
                         key=lambda t: (t[0], t[1] or 0))
    if teacher_acc:
        doc.text("Teacher test accuracy, on the test images the students are scored on: "
                 + ", ".join(f"{a:.2f}% ({'all test images' if n is None else f'the first {n} test images'})"
                             for a, n in teacher_acc)
                 + " (a shipped teacher's card gives its accuracy on all test images).")
    if timings and sum(timings.values()) >= 1.0:   # a resumed call that ran nothing says nothing here
        doc.text("Wall time of this invocation by part (runs already in the results file are not run again): "
                 + ", ".join(f"{k} {v / 60:.1f} min" for k, v in timings.items()) + ".")
    doc.text(recorded_time(robust + records))
    if any(lookup(r, "config.extra.part") in ("distillation", "transfer") for r in records):
        from . import robustness as rb
        _add_claims(doc, records, rb.equivalence_table(robust) or None)
    titles = {"runs": "Runs", "select": "Selection (validation)", "distillation": "Distillation",
              "transfer": "Transfer"}
    for part, recs in parts.items():
        if part == "select":
            doc.heading("Hyper-parameters chosen on the validation split")
            doc.text("Each variant's grid at 10 images per class on a seed that no final run uses; the chosen point "
                     "(highest validation accuracy) is marked. Only the settings a variant searched are shown.")
            doc.table(selection_rows(recs), floatfmt=".1f")
            continue
        _section(doc, titles.get(part, part), recs)
    add_robustness_section(doc, robust)
    return doc.write(out_dir, plotlyjs)


# --------------------------------------------------------------------------- the main job's report


def _stats(values) -> tuple[float | None, float | None, int]:
    values = [float(v) for v in values if v is not None]
    if not values:
        return None, None, 0
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None), len(values)


def _pm(values, scale: float = 100.0, digits: int = 1) -> str:
    mean, std, n = _stats(values)
    if mean is None:
        return ""
    return f"{scale * mean:.{digits}f}" + (f" ± {scale * std:.{digits}f}" if std is not None else "")


def _groups(records) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in records:
        out.setdefault(variant(r), []).append(r)
    return out


def method_summary(records: Iterable[Mapping], *, sigma: str = "0.1") -> list[dict]:
    """One row per method: seeds, validation and test accuracy, accuracy under noise ``sigma``
    and the teacher-student saliency cosine, each as mean ± std over seeds (accuracies in %)."""
    rows = []
    for name, recs in _groups(records).items():
        rows.append({"method": name, "seeds": len(recs),
                     "val acc (%)": _pm(lookup(r, "metrics.val_acc") for r in recs),
                     "test acc (%)": _pm(lookup(r, "metrics.test_acc") for r in recs),
                     f"test acc, noise sigma={sigma} (%)": _pm((lookup(r, "metrics.noise_acc") or {}).get(sigma)
                                                                for r in recs),
                     "saliency cosine to teacher": _pm((lookup(r, "metrics.saliency_cosine") for r in recs),
                                                       scale=1.0, digits=3)})
    return rows


def _smoke_test(records, chance, teacher_acc, quick) -> str | None:
    """Why a demo's numbers judge nothing (None when they can)."""
    if chance is not None and teacher_acc is not None:
        n_test = max((lookup(r, "config.n_test") or 0 for r in records), default=0) or 1000
        if teacher_acc <= chance + 3 * math.sqrt(chance * (1 - chance) / n_test):
            return (f"the teacher's test accuracy ({100 * teacher_acc:.1f}%) is not above chance "
                    f"({100 * chance:.0f}%)")
    return "--quick runs at toy size" if quick else None


def verdict(records: Iterable[Mapping], *, chance: float | None = None, metric: str = "metrics.test_acc",
            comparisons: Sequence[tuple[str, str]] = (("kd", "ce"), ("kd+jacobian", "kd"), ("kd+jacobian", "ce")),
            sigma: str = "0.1", teacher_acc: float | None = None, quick: bool = False) -> list[str]:
    """Plain-language sentences computed from the records: the best method, each comparison
    judged by the paired rule (:func:`jkt_lab.analysis.paired_compare`: the per-seed difference,
    its 95% t interval, shown or not), whether the students beat ``chance``, and accuracy under
    input noise ``sigma`` (mean ± std over seeds).

    A smoke test judges nothing, and says so first: at toy size (``quick``), or when ``teacher_acc``
    is not above ``chance`` by more than 3 binomial standard errors on the test images (its
    students have nothing to learn from it)."""
    groups = _groups(records)
    if not groups:
        raise ValueError("verdict needs at least one record")
    what = "validation" if metric.endswith("val_acc") else "test"
    stats = {name: _stats(lookup(r, metric) for r in recs) for name, recs in groups.items()}
    stats = {k: v for k, v in stats.items() if v[0] is not None}
    if not stats:
        return [f"No {what} accuracy was recorded."]
    best = max(stats, key=lambda k: stats[k][0])
    why = _smoke_test(records, chance, teacher_acc, quick)
    out = [f"Smoke test, not a verdict: {why}, so no difference between the students is judged; "
           "`jkt-lab demo` without --quick judges them."] if why else []
    out += [f"Best student on the {what} images: **{best}**, {100 * stats[best][0]:.1f}% "
           f"(mean over {stats[best][2]} seed{'s' if stats[best][2] != 1 else ''})."]
    if chance is not None:
        worst = min(stats, key=lambda k: stats[k][0])
        low = stats[worst][0]
        out.append(f"The weakest student, {worst}, reaches {100 * low:.1f}%: {low / chance:.1f} times chance "
                   f"({100 * chance:.0f}% for {round(1 / chance)} classes).")
    records = [r for recs in groups.values() for r in recs]
    for a, b in comparisons if not why else ():
        if a not in stats or b not in stats:
            continue
        c = paired_compare(records, a, b, lambda r: lookup(r, metric), label=variant)
        s = c.settings[0] if c.settings else None
        if s is None:
            continue
        if s.low is None:
            out.append(f"{a} vs. {b}: {s.mean:+.1f} points, from one seed (no spread measured: run more seeds).")
            continue
        word = {"shown": "a difference the seeds show", "opposite": f"{b} is better, and the seeds show it",
                "not shown": "not shown: the interval includes 0"}[s.status]
        out.append(f"{a} vs. {b}: {s.mean:+.1f} points, 95% interval [{s.low:+.1f}, {s.high:+.1f}] over {s.n} "
                   f"paired seeds: {word}.")
    noisy = {name: _stats((lookup(r, "metrics.noise_acc") or {}).get(sigma) for r in recs)
             for name, recs in groups.items()}
    noisy = {k: v for k, v in noisy.items() if v[0] is not None}
    if len(noisy) > 1:
        order = sorted(noisy, key=lambda k: -noisy[k][0])
        several = any(v[1] is not None for v in noisy.values())
        out.append(f"Under Gaussian input noise of sigma {sigma}" + (" (mean ± std over seeds)" if several else "")
                   + ": " + ", ".join(f"{k} {100 * noisy[k][0]:.1f}"
                                      + (f" ± {100 * noisy[k][1]:.1f}" if noisy[k][1] is not None else "") + "%"
                                      for k in order) + ".")
    return out


def _saliency_figure(records: list, *, n_images: int, device) -> object:
    """Saliency of the teacher and of each method's first-seed student on the same test images
    (one per class, in class order): the input Jacobian of the teacher's top-1 class logit, the
    output that ``kd+jacobian`` matches (Section 3.2)."""
    import torch
    from .config import Config
    from .experiments import get_teacher, load_data, trained_student
    from .saliency import saliency

    first = {}
    for r in sorted(records, key=lambda r: lookup(r, "config.seed") or 0):
        first.setdefault(variant(r), r)
    config = Config.from_dict(next(iter(first.values()))["config"])
    teacher, _ = get_teacher(config, device=device, progress=False)
    data = load_data(config, classes=config.classes)
    picks = []
    for c in range(data.num_classes):
        where = (data.y_test == c).nonzero().flatten()
        if len(where):
            picks.append(int(where[0]))
        if len(picks) == n_images:
            break
    x = data.x_test[picks].to(next(teacher.parameters()).device)
    with torch.no_grad():
        reference = teacher(x)
    maps = {"teacher": saliency(teacher, x, "top1", reference=reference)}
    for name, r in first.items():
        student, _ = trained_student(Config.from_dict(r["config"]), device=device, progress=False)
        maps[name] = saliency(student, x, "top1", reference=reference)
    names = data.classes or [str(i) for i in range(data.num_classes)]
    return saliency_grid(x, maps, titles=[names[int(data.y_test[i])] for i in picks],
                         title="Saliency: |input Jacobian| of the teacher's top-1 logit, same test images")


def write_demo_report(records: Iterable[Mapping], out_dir: str | Path, *, command: str, teacher_info: Mapping,
                      chance: float, elapsed_s: float | None = None, saliency_images: int = 6, device="cpu",
                      plotlyjs: str = "inline", next_steps: Sequence[str] = (), quick: bool = False) -> dict[str, Path]:
    """The main job's report from its stored records: summary table, verdict, accuracy figure,
    saliency maps (teacher and each student, same test images; models loaded from the runs
    directory), training curves, accuracy against noise, per-seed table, command and config."""
    records = _load(records)
    labelled = _labelled(records)
    configs = [r["config"] for r in records]
    base = configs[0]
    varying = sorted(k for k in base if k != "extra" and any(c.get(k) != base.get(k) for c in configs))
    teacher_acc = (teacher_info.get("metrics") or {}).get("test_acc")
    where = "shipped with the package" if teacher_info.get("shipped") else "trained and cached"
    doc = Document("jkt_lab demo: knowledge transfer with Jacobian matching, few images per class")
    doc.text(f"A {base['teacher']} teacher ({where}; test accuracy "
             f"{'n/a' if teacher_acc is None else f'{100 * teacher_acc:.1f}%'}) and {base['student']} students "
             f"trained on **{base['per_class']} images per class** of the `{base['dataset']}` dataset "
             f"({len(records)} runs: {', '.join(_groups(records))}; seeds "
             f"{', '.join(str(s) for s in sorted({c['seed'] for c in configs}))}). Chance is {100 * chance:.0f}%.")
    doc.heading("Verdict")
    doc.items(verdict(records, chance=chance, teacher_acc=teacher_acc, quick=quick), css="verdict")
    doc.text("The setting was chosen on the validation split (benchmarks/select_demo.py); the test images "
             "were not used to choose it.")
    doc.heading("Students, mean ± std over seeds")
    doc.table(method_summary(records))
    reference = {"chance": chance, **({"teacher": teacher_acc} if teacher_acc is not None else {})}
    doc.figure(accuracy_groups_figure(labelled, x="variant", color="variant", reference=reference,
                                      title="Test accuracy by method (error bars: std over seeds)"))
    doc.heading("Where the models look: saliency maps")
    doc.text("Each column is one test image; each row a model. Brighter: a larger input gradient of the "
             "logit of the teacher's top-1 class. Jacobian matching trains the student's map towards the teacher's.")
    doc.figure(_saliency_figure(records, n_images=saliency_images, device=device))
    doc.heading("Training curves")
    doc.figure(training_curves_figure(labelled, color="variant"))
    doc.heading("Accuracy against input noise")
    doc.table(noise_table(records))
    doc.figure(noise_figure(labelled, color="variant", title="Test accuracy under Gaussian input noise"))
    doc.heading("Every run")
    doc.table([{"method": variant(r), "seed": lookup(r, "config.seed"),
                "val acc (%)": 100 * (lookup(r, "metrics.val_acc") or 0.0),
                "test acc (%)": 100 * (lookup(r, "metrics.test_acc") or 0.0),
                "train acc (%)": 100 * (lookup(r, "metrics.train_acc") or 0.0),
                "steps": lookup(r, "metrics.steps"), "wall time (s)": r.get("wall_time_s")} for r in records],
              floatfmt=".1f")
    doc.heading("How this was made")
    doc.text("Command:")
    doc.code(command)
    timing = f" in {elapsed_s:.0f} s" if elapsed_s is not None else ""
    versions = records[-1].get("versions") or {}
    doc.text(f"Ran on {records[-1].get('device', 'unknown')}{timing}; "
             + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".")
    from .config import Config
    defaults = Config().to_dict()
    doc.text("The runs differ only in " + (", ".join(f"`{k}`" for k in varying) or "nothing") +
             "; every other setting (`jkt_lab.Config` fields that differ from the defaults):")
    doc.table([{"field": k, "value": json.dumps(v), "default": json.dumps(defaults.get(k))}
               for k, v in base.items() if k not in varying and k in defaults and v != defaults[k]])
    doc.code(json.dumps({k: v for k, v in base.items() if k not in varying}, indent=1),
             summary="the whole config (JSON; `Config.from_dict` reads it)")
    doc.code(json.dumps(teacher_info.get("config", {}), indent=1),
             summary="the teacher's config (`Config.teacher_config()`)")
    if next_steps:
        doc.heading("Next steps")
        doc.items(next_steps)
    return doc.write(out_dir, plotlyjs)
