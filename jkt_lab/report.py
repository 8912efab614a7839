"""Tables and figures from a results file: ``REPORT.md`` (markdown tables) and ``report.html``
(the same tables with interactive plotly figures, plotly.js embedded so it opens offline)."""
from __future__ import annotations

import html
from collections.abc import Iterable, Mapping
from pathlib import Path

from .results import ResultStore, lookup, table, to_markdown
from .viz import accuracy_figure, noise_figure

__all__ = ["variant", "accuracy_table", "noise_table", "claims", "robustness_section", "write_report"]


def _fmt(mean, std, n):
    if mean is None:
        return ""
    return f"{100 * mean:.1f} ± {100 * std:.1f}" if std is not None and n > 1 else f"{100 * mean:.1f}"


def variant(record: Mapping) -> str:
    """A run's label: ``config.extra.variant`` when set (e.g. "kd+jacobian (squared)"), else the method."""
    return lookup(record, "config.extra.variant") or lookup(record, "config.method")


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
    for (method, per_class), by_sigma in groups.items():
        row = {"method": method, "per_class": "all" if per_class is None else per_class}
        for s in sorted(by_sigma, key=float):
            row[f"sigma={s}"] = f"{100 * sum(by_sigma[s]) / len(by_sigma[s]):.1f}"
        rows.append(row)
    return rows


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _by_per_class(records, name, value):
    out: dict = {}
    for r in records:
        if variant(r) == name:
            out.setdefault(lookup(r, "config.per_class"), []).append(value(r))
    return {k: _mean(v) for k, v in out.items()}


def _compare(records, better: str, worse: str, value, keep=lambda per_class: True) -> tuple[str, str]:
    """Verdict and a markdown table comparing two variants per ``per_class``."""
    a, b = _by_per_class(records, better, value), _by_per_class(records, worse, value)
    keys = sorted((k for k in a if k in b and keep(k) and a[k] is not None and b[k] is not None),
                  key=lambda v: (v is None, v or 0))
    if not keys:
        return "not measured", ""
    rows = [{"per_class": "all" if k is None else k, better: 100 * a[k], worse: 100 * b[k],
             "difference": 100 * (a[k] - b[k])} for k in keys]
    wins = sum(r["difference"] > 0 for r in rows)
    mean_diff = sum(r["difference"] for r in rows) / len(rows)
    if wins > len(rows) / 2 and mean_diff > 0:
        verdict = "supported"
    elif wins < len(rows) / 2 and mean_diff < 0:
        verdict = "not supported"
    else:
        verdict = "mixed"
    verdict += f" ({better} ahead in {wins} of {len(rows)} settings, mean difference {mean_diff:+.2f} points)"
    return verdict, to_markdown(rows, floatfmt=".2f")


def claims(records: Iterable[Mapping]) -> list[str]:
    """Markdown: the paper's claims, each with our numbers and a plain verdict."""
    records = list(records)
    dist = [r for r in records if lookup(r, "config.extra.part") in (None, "distillation")]
    transfer = [r for r in records if lookup(r, "config.extra.part") == "transfer"]
    test_acc = lambda r: lookup(r, "metrics.test_acc")  # noqa: E731
    out = ["## Claims of the paper", ""]
    verdict, tab = _compare(dist, "kd+jacobian", "kd", test_acc, keep=lambda k: k is not None and k <= 10)
    out += ["1. **Jacobian matching helps distillation when data is scarce** (test accuracy, %, per_class <= 10, "
            f"kd+jacobian vs. kd): **{verdict}**.", "", tab, ""]
    for sigma in ("0.1", "0.2"):
        verdict, tab = _compare(dist, "kd+jacobian", "kd", lambda r: (lookup(r, "metrics.noise_acc") or {}).get(sigma))
        out += [f"2. **Jacobian-matched students are more robust to Gaussian input noise** (test accuracy, %, "
                f"under noise sigma = {sigma}, kd+jacobian vs. kd): **{verdict}**.", "", tab, ""]
    for init in ("fine-tune", "scratch"):
        verdict, tab = _compare(transfer, f"at+jacobian ({init})", f"at ({init})", test_acc)
        out += [f"3. **Matching Jacobians of attention maps helps transfer learning** ({init}; test accuracy, %, "
                f"at+jacobian vs. at): **{verdict}**.", "", tab, ""]
    return out


def _spearman(xs, ys) -> float | None:
    """Spearman rank correlation (ties share their mean rank); None with fewer than 3 points."""
    if len(xs) < 3:
        return None

    def ranks(v):
        order = sorted(range(len(v)), key=v.__getitem__)
        r = [0.0] * len(v)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in order[i:j + 1]:
                r[k] = (i + j) / 2
            i = j + 1
        return r

    rx, ry = ranks(xs), ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    var = (sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry)) ** 0.5
    return cov / var if var else None


def robustness_section(records: Iterable[Mapping]) -> tuple[list[str], list]:
    """Markdown lines and figures of the robustness experiment (``jkt_lab.robustness``): the
    teachers' and students' accuracy under noise, the hyper-parameters chosen on the validation
    split, the mechanism (Jacobian norm, cosine to the teacher) with its figure, and the
    noise/Jacobian equivalence tested in training. Empty when ``records`` hold none of it."""
    from . import robustness as rb
    from .viz import mechanism_figure

    records = [r for r in records if lookup(r, "config.extra.experiment") == rb.EXPERIMENT]
    if not records:
        return [], []
    quick = any(lookup(r, "config.extra.quick") for r in records)
    datasets = sorted({d for r in records if (d := lookup(r, "config.dataset")) in rb.SETUPS})
    md, figs = [], []
    sigma = f"{rb.SELECT_SIGMA:g}"
    for dataset in datasets:
        s = rb.setup(dataset)
        mine = [r for r in records if lookup(r, "config.dataset") == dataset]
        grid = rb._grid_records(mine, s, quick)
        title = f"Robustness to noisy inputs on {dataset}" + (" (quick, toy size)" if quick else "")
        per_class = sorted({p for r in grid if lookup(r, "config.extra.part") == "grid"
                            and (p := lookup(r, "config.per_class")) is not None})
        seeds = sorted({lookup(r, "config.seed") for r in grid if lookup(r, "config.extra.part") == "grid"})
        md += [f"## {title}", "",
               "Teachers: standard and trained with Gaussian input noise (sigma "
               f"{s.teacher_sigma:g}); students: {', '.join(rb.VARIANTS)}; per_class {', '.join(map(str, per_class))}; "
               f"seeds {', '.join(map(str, seeds))}. Accuracy on test images under Gaussian noise of std sigma "
               "(pixel units, [0, 1] scale); mean ± std over seeds.", "",
               "### Test accuracy (%) under input noise", "", to_markdown(rb.robustness_table(mine, s, quick)), ""]
        sel = rb.selection_table(mine, s, quick)
        if sel:
            md += [f"### Hyper-parameters chosen on the validation split (accuracy at sigma {sigma}, per teacher, "
                   f"per_class {s.select_per_class}, seed 0)", "", to_markdown(sel, floatfmt=".1f"), ""]
        mech = rb.mechanism_table(mine, s, quick)
        md += ["### Mechanism: input-Jacobian norm and cosine to the teacher (test images)", "",
               "jacobian norm: mean over test images of ||d top-1 logit / dx|| (the model's own top-1 output, "
               "pixel units); cosine: teacher-student cosine of the Jacobians of the teacher's top-1 output.", "",
               to_markdown(mech, floatfmt=".3g"), ""]
        students = [r for r in grid if lookup(r, "config.extra.part") == "grid"]
        lines = []
        for per_class in sorted({lookup(r, "config.per_class") for r in students}, key=lambda v: v or 0):
            pts = [(lookup(r, "metrics.jacobian_norm"), (lookup(r, "metrics.noise_acc") or {}).get(sigma))
                   for r in students if lookup(r, "config.per_class") == per_class]
            pts = [(n, a) for n, a in pts if n and a is not None]
            rho = _spearman([p[0] for p in pts], [p[1] for p in pts])
            if rho is not None:
                lines.append(f"- per_class {per_class}: Spearman rank correlation between a student's Jacobian norm "
                             f"and its accuracy at sigma {sigma}: {rho:+.2f} over {len(pts)} students.")
        best: dict = {}
        for row in mech:
            if row["student"] != "teacher" and row[f"acc at sigma={sigma}"]:
                acc = float(row[f"acc at sigma={sigma}"].split(" ")[0])
                slot = (row["teacher"], row["per_class"])
                if slot not in best or acc > best[slot][0]:
                    best[slot] = (acc, row["student"])
        lines += [f"- most robust student at sigma {sigma} with the {t} teacher, per_class {pc}: {v[1]} ({v[0]:.1f}%)."
                  for (t, pc), v in best.items()]
        if lines:
            md += lines + [""]
        figs.append(mechanism_figure(grid, sigma=rb.SELECT_SIGMA,
                                     title=f"{title}: accuracy at sigma {sigma} against the Jacobian norm"))
        energy = rb.logit_energy_table(mine)
        if energy:
            md += ["### Proposition 1 at the teachers: where the noise leaves the linear region", "",
                   "E ||T(x + sigma z)||^2 over test images (one noise draw each) against the second-order prediction "
                   "||T(x)||^2 + sigma^2 ||J_T(x)||_F^2 (Proposition 1 with a zero student). A ratio near 1: noise of "
                   "this size probes the teacher's Jacobian; far above 1: it leaves the region where the teacher is "
                   "close to linear, and distillation on noisy inputs is no longer Jacobian matching.", "",
                   to_markdown(energy, floatfmt=".3g"), ""]
        eq = rb.equivalence_table(mine)
        if eq:
            outputs = sorted({lookup(r, "config.jacobian_output") for r in mine
                              if lookup(r, "config.extra.part") == "equivalence"
                              and lookup(r, "config.method") == "activations+jacobian"})
            md += ["### Proposition 1 in training: noise distillation vs. activations + sigma^2 x Jacobian", "",
                   "Students trained with the squared loss on noisy inputs (noise, one noise sample a step) against "
                   "students trained with activation matching plus sigma^2 times the squared distance of the "
                   f"Jacobians (activations+jacobian, jacobian_output {', '.join(outputs)}: 'random' is one random "
                   "projection a step, an unbiased estimate of the all-outputs distance), same teacher, data and "
                   "activation weight a (jacobian_weight = a sigma^2). cross / floor: mean over "
                   "pairs of one student of each method and different seeds / the larger mean over pairs of two "
                   "seeds of one method; relative distances on test images (logits; Jacobians of all outputs), "
                   "absolute accuracy differences in points. A quantity agrees when cross <= floor.", "",
                   to_markdown(eq), ""]
            agree = [r["sigma"] for r in eq if r["agree within the floor"].count(",") == len(rb.QUANTITIES) - 1]
            differ = [r["sigma"] for r in eq if r["sigma"] not in agree]
            md += ["The two trainings agree within the seed-to-seed floor on all four quantities at sigma "
                   + (", ".join(f"{a:g}" for a in agree) or "(none)") + "; not at "
                   + (", ".join(f"{a:g}" for a in differ) or "(none)") + ".", ""]
    return md, figs


def _section(title: str, records: list, plotlyjs) -> tuple[list[str], list]:
    md = [f"## {title}: test accuracy (%) by images per class", "", "Mean ± std over seeds.", "",
          to_markdown(accuracy_table(records)), ""]
    figs = [accuracy_figure(_labelled(records), color="variant", title=f"{title}: test accuracy against images per class")]
    noise = noise_table(records)
    if noise:
        md += [f"## {title}: test accuracy (%) under Gaussian input noise", "", to_markdown(noise), ""]
        figs.append(noise_figure(_labelled(records), color="variant", title=f"{title}: accuracy under input noise"))
    cos = table(_labelled(records), [], group_by=["variant", "config.per_class"], metric="metrics.saliency_cosine")
    cos = [r for r in cos if r["metrics.saliency_cosine.mean"] is not None]
    if cos:
        md += [f"## {title}: teacher-student saliency cosine (top-1 Jacobians, test images)", "",
               to_markdown([{"method": r["variant"], "per_class": r["config.per_class"],
                             "cosine": r["metrics.saliency_cosine.mean"], "n": r["n"]} for r in cos], floatfmt=".3f"), ""]
    return md, figs


def write_report(records_or_path, out_dir: str | Path, *, title: str = "jkt_lab results",
                 timings: Mapping[str, float] | None = None, plotlyjs: str = "inline") -> dict[str, Path]:
    """Write ``REPORT.md`` and ``report.html`` into ``out_dir``; returns their paths.

    Records with ``config.extra.part`` (from ``jkt-lab reproduce``) get one section per part
    and the "Claims of the paper" section. ``plotlyjs="inline"`` embeds plotly.js (the page
    opens offline); ``"cdn"`` links it (a small file, for committed reports).
    """
    if plotlyjs not in ("inline", "cdn"):
        raise ValueError(f"plotlyjs must be 'inline' or 'cdn', got {plotlyjs!r}")
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
    n_records = len(records)
    robust_md, robust_figs = robustness_section(records)  # the robustness experiment has its own section
    records = [r for r in records if lookup(r, "config.extra.experiment") != "robustness"]
    parts = {}
    for r in records:
        parts.setdefault(lookup(r, "config.extra.part") or "runs", []).append(r)
    md = [f"# {title}", "", f"{n_records} runs. Generated by `jkt-lab report`.", ""]
    teacher_acc = sorted({round(100 * v, 2) for r in records if (v := lookup(r, "metrics.teacher_test_acc"))})
    if teacher_acc:
        md += [f"Teacher test accuracy: {', '.join(f'{a:.2f}%' for a in teacher_acc)}.", ""]
    if timings:
        md += ["Wall time by part: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in timings.items()) + ".", ""]
    figs = []
    titles = {"runs": "Runs", "select": "Selection (validation)", "distillation": "Distillation",
              "transfer": "Transfer"}
    for part, recs in parts.items():
        if part == "select":
            rows = [{"variant": variant(r), **{k: lookup(r, f"config.{k}") for k in
                                                ("jacobian_weight", "sigma", "temperature")},
                     "val_acc": 100 * (lookup(r, "metrics.val_acc") or 0)} for r in recs]
            md += ["## Hyper-parameters chosen on the validation split", "", to_markdown(rows), ""]
            continue
        sec_md, sec_figs = _section(titles.get(part, part), recs, plotlyjs)
        md += sec_md
        figs += sec_figs
    if any(lookup(r, "config.extra.part") for r in records):
        md += claims(records)
    md += robust_md
    figs += robust_figs
    md_path = out / "REPORT.md"
    md_path.write_text("\n".join(md))
    body = [f"<h1>{html.escape(title)}</h1>", f"<pre>{html.escape(chr(10).join(md[2:]))}</pre>"]
    for i, fig in enumerate(figs):
        js = (i == 0) if plotlyjs == "inline" else ("cdn" if i == 0 else False)
        body.append(fig.to_html(full_html=False, include_plotlyjs=js, default_width="100%"))
    html_path = out / "report.html"
    html_path.write_text("<!doctype html><html><head><meta charset='utf-8'><title>" + html.escape(title)
                         + "</title></head><body>" + "\n".join(body) + "</body></html>")
    return {"markdown": md_path, "html": html_path}
