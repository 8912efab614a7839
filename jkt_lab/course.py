"""The notebooks as a course: the runs each notebook compares (several seeds), one progress bar
with the time left over a list of runs, tables that say what was averaged, and :func:`prepare`,
which builds every cache the notebooks use before a class (``jkt-lab prepare-course``).

    from jkt_lab import course
    records = course.run_all(course.distillation_configs())   # teachers first, then a runs bar
    course.runs_table(records)                                  # grouped by every setting that differs
    course.prepare()                                            # everything notebooks 02-05 train

Quick mode (``JKT_LAB_QUICK=1``) sizes every run down and uses one seed instead of three.
"""
from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from .config import Config, quick_mode
from .analysis.compare import paired_compare
from .nbtools import DISTILLATION_METHODS, TRANSFER_RUNS, course_config, course_store, transfer_config
from .results import ResultStore, flatten, lookup

__all__ = ["seeds", "distillation_configs", "transfer_configs", "object_mask_configs", "panel_example_config",
           "run_all", "prepare", "runs_table", "beside_committed", "attention_distances", "fit_summary", "chance_level",
           "compare", "try_jacobian_step"]


def seeds(quick: bool | None = None) -> tuple[int, ...]:
    """The seeds of every experiment that compares methods: 0, 1, 2 in full mode; in quick mode
    only 0 (quick mode checks that the code runs, and keeps the notebook tests short)."""
    return (0,) if (quick_mode() if quick is None else quick) else (0, 1, 2)


def distillation_configs(quick: bool | None = None, **changes) -> list[Config]:
    """Notebooks 02-04: one student per method (``ce``, ``kd``, ``kd+jacobian``) and seed."""
    base = course_config(quick=quick, **changes)
    return [base.replace(method=m, seed=s) for m in DISTILLATION_METHODS for s in seeds(quick)]


def transfer_configs(quick: bool | None = None, **changes) -> list[Config]:
    """Notebook 05: every transfer run (:data:`jkt_lab.nbtools.TRANSFER_RUNS`) and seed."""
    base = transfer_config(quick=quick, **changes)
    return [base.replace(**run, seed=s) for run in TRANSFER_RUNS.values() for s in seeds(quick)]


def object_mask_configs(quick: bool | None = None) -> list[Config]:
    """Notebook 02, section 6 (saliency on the object): the seed-0 students on shapes, the one
    course dataset with object masks, whatever the course's dataset."""
    return [course_config(quick=quick, dataset="shapes", method=m) for m in DISTILLATION_METHODS]


def panel_example_config(quick: bool | None = None) -> Config:
    """The run notebook 03 makes from its panel (a ``ce`` student at 5 images per class, with the
    panel's history rows: :func:`jkt_lab.nbtools.panel_config`)."""
    from .nbtools import panel_config
    return panel_config(course_config(quick=quick, method="ce", per_class=5))


def _needs_teacher(config: Config) -> bool:
    from .methods import get_method
    return get_method(config.method).needs_teacher or config.init == "finetune"


def _teachers(configs: Iterable[Config]) -> list[Config]:
    from .results import config_hash
    found: dict[str, Config] = {}
    for c in configs:
        if _needs_teacher(c):
            found.setdefault(config_hash(c.teacher_config().to_dict()), c)
    return list(found.values())


def _bar(**kw):
    """The course's progress bar (tqdm's notebook widget under Jupyter): :func:`jkt_lab.progress.bar`."""
    from .progress import bar
    return bar(**kw)


def run_all(configs: Sequence[Config], store: str | Path | ResultStore | None = None, *, device="auto",
            progress: bool = True, desc: str = "runs", bar=None, on_run=None) -> list[dict]:
    """Run every config not yet in ``store`` (default :func:`jkt_lab.nbtools.course_store`) and
    return all their records, in order.

    Teachers come first, each with its own progress bar; then one bar over the runs shows how
    many are done and the time left (tqdm's estimate from the runs so far), with the current
    run's bar below it. Resumable: finished runs are skipped, a killed teacher resumes from its
    checkpoint. ``bar``: a bar of the caller's (:func:`prepare`'s, over several lists), advanced
    by one for each run trained here and left open; ``on_run(config, seconds)`` after each.
    """
    from tqdm.auto import tqdm

    from . import experiments
    from .pretrained import shipped_for
    configs = list(configs)
    for i, c in enumerate(configs):
        if not isinstance(c, Config):
            raise TypeError(f"configs[{i}] must be a jkt_lab.Config, got {type(c).__name__}")
    store = store if isinstance(store, ResultStore) else ResultStore(course_store() if store is None else store)
    todo = [c for c in configs if not store.done(c.to_dict())]
    for c in _teachers(todo):
        t = c.teacher_config()
        if progress:
            shipped = shipped_for(t)
            print(f"teacher: {t.student} (width {t.student_width}) on {t.dataset}, {t.epochs} epochs; " +
                  (f"the shipped teacher '{shipped}'" if shipped else "trained once, then loaded from the cache"),
                  flush=True)
        experiments.get_teacher(c, device=device, progress=progress)
    own = bar is None
    if own:
        bar = tqdm(total=len(configs), initial=len(configs) - len(todo), desc=desc, unit="run", disable=not progress,
                   dynamic_ncols=True)
    records = []
    try:
        for c in configs:
            if store.done(c.to_dict()):
                records.append(store.get(c.to_dict()))
                continue
            if own:
                bar.set_postfix_str(f"{c.method}, {c.per_class} per class, seed {c.seed}")
            t0 = time.perf_counter()
            records.append(experiments.run(c, store=store, device=device, progress=progress))
            bar.update(1)
            if on_run is not None:
                on_run(c, time.perf_counter() - t0)
    finally:
        if own:
            bar.close()
    return records


def _plan(parts, store: ResultStore) -> tuple[list[dict], dict]:
    """Per part: its runs, those to train, and what the committed runs of the same settings took
    (:func:`jkt_lab.nbtools.reference_time`); each run counted once, in the first part naming it."""
    from .nbtools import reference_time
    from .results import config_hash
    seen: set[str] = set()
    rows, reference = [], {}
    for name, configs in parts:
        row = {"part": name, "runs": len(configs), "new": 0, "reference_s": 0.0, "unknown": 0}
        for c in configs:
            key = config_hash(c.to_dict())
            if key in seen or store.done(c.to_dict()):
                continue
            seen.add(key)
            row["new"] += 1
            ref = reference_time(c)
            reference[key] = ref["run_s"] if ref else None
            if ref:
                row["reference_s"] += ref["run_s"]
            else:
                row["unknown"] += 1
        rows.append(row)
    return rows, reference


def prepare(quick: bool | None = None, *, device="auto", progress: bool = True,
            store: str | Path | None = None) -> list[dict]:
    """Build every cache the notebooks use, so that a class runs them without waiting: the data,
    the teachers, and the students of notebooks 02-05 (every seed), in the course's store
    (``JKT_LAB_RUNS``). Resumable: run it again after an interruption and it goes on where it
    stopped. Returns one row per part: runs, how many were new, seconds.

    It says first what it will do: the runs of each part, how many are still to train, and an
    overall estimate (the committed runs' times, :func:`jkt_lab.nbtools.reference_time`); then
    one bar over every run, whose time left is that estimate scaled by how fast the runs go
    here. When they go far slower than the committed runs, it says so once, with what to do.

    The online transfer of notebook 05 (MIT Indoor-67) is not prepared: it needs the dataset.
    """
    from . import experiments
    from .progress import duration, slow_advice
    from .results import config_hash
    quick = quick_mode() if quick is None else quick
    store = ResultStore(course_store() if store is None else store)
    distillation = distillation_configs(quick)
    parts = [("notebooks 02-04: ce / kd / kd+jacobian students", distillation),
             ("notebook 03: the panel's example run", [panel_example_config(quick)]),
             ("notebook 05: transfer students", transfer_configs(quick))]
    if distillation[0].dataset != "shapes":
        parts.insert(2, ("notebook 02: shapes students for the object masks", object_mask_configs(quick)))
    plan, reference = _plan(parts, store)
    n_runs = len({config_hash(c.to_dict()) for _, cs in parts for c in cs})
    n_new = sum(r["new"] for r in plan)
    known = sum(r["reference_s"] for r in plan)
    unknown = sum(r["unknown"] for r in plan)
    if progress:
        print(f"prepare-course: {n_runs} runs in {len(parts)} parts, {n_new} to train "
              f"({n_runs - n_new} already in {store.path})", flush=True)
        for r in plan:
            print(f"  {r['part']}: {r['runs']} runs, {r['new']} to train", flush=True)
        if n_new == 0:
            print("estimated time: nothing to train", flush=True)
        elif known > 0:
            print(f"estimated time: {duration(known)} of training on 2 idle CPU cores (what the committed runs of "
                  f"the same settings took)" + (f", plus {unknown} runs with no committed run to go by" if unknown
                                                else "")
                  + "; a machine shared with other jobs is slower, and the bar's time left follows the runs here",
                  flush=True)
        else:
            print("estimated time: no committed run of these settings to go by; the bar's time left starts after "
                  "the first run", flush=True)
    rows = []
    t0 = time.perf_counter()
    for config in {c.dataset: c for _, cs in parts for c in cs}.values():
        experiments.load_data(config)          # decodes and caches real datasets once
    rows.append({"part": "data", "runs": 0, "new": 0, "seconds": round(time.perf_counter() - t0, 1)})
    bar = _bar(total=n_runs, initial=n_runs - n_new, desc="course", unit="run", progress=progress)
    pace = {"measured": 0.0, "reference": 0.0, "left": known, "said": False}

    def on_run(config, seconds):
        ref = reference.get(config_hash(config.to_dict()))
        if ref:
            pace["measured"] += seconds
            pace["reference"] += ref
            pace["left"] -= ref
        if not pace["reference"]:
            return
        ratio = pace["measured"] / pace["reference"]
        advice = slow_advice(pace["measured"], pace["reference"], "the committed runs on 2 idle cores")
        bar.set_postfix_str(f"{duration(max(pace['left'], 0.0) * ratio)} left"
                            + (f" ({ratio:.0f}x slower than the committed runs)" if advice else ""))
        if advice and not pace["said"] and progress:
            pace["said"] = True
            from tqdm.auto import tqdm
            tqdm.write("these runs go " + advice)
    try:
        for name, configs in parts:
            t0 = time.perf_counter()
            new = sum(not store.done(c.to_dict()) for c in configs)
            bar.set_description_str(name.split(":")[0])
            run_all(configs, store, device=device, progress=progress, bar=bar, on_run=on_run)
            rows.append({"part": name, "runs": len(configs), "new": new,
                         "seconds": round(time.perf_counter() - t0, 1)})
    finally:
        bar.close()
    return rows


# --------------------------------------------------------------------------- tables that say what they average


def _mean_std(values: Sequence[float], percent: bool = True) -> str:
    """``"mean ± std"`` (sample std; the mean alone for one value), in % when ``percent``."""
    if not values:
        return ""
    scale, fmt = (100, ".1f") if percent else (1, ".3f")
    mean = scale * statistics.fmean(values)
    if len(values) == 1:
        return format(mean, fmt)
    return f"{format(mean, fmt)} ± {format(scale * statistics.stdev(values), fmt)}"


def _groups(records: Sequence[Mapping], ignore: Iterable[str] = ("seed",), always: Iterable[str] = ("method",)
            ) -> tuple[list[str], dict]:
    """The config settings that differ between records (``ignore`` aside; ``always`` shown) and
    the records grouped by them."""
    ignore, always = set(ignore), list(always)
    flat = [flatten(r.get("config", {})) for r in records]
    keys = list(dict.fromkeys(k for f in flat for k in f))
    varying = [k for k in keys if k not in ignore and (k in always or
               len({json.dumps(f.get(k), sort_keys=True, default=str) for f in flat}) > 1)]
    groups: dict[str, list[Mapping]] = {}
    for r, f in zip(records, flat):
        groups.setdefault(json.dumps([f.get(k) for k in varying], default=str), []).append(r)
    return varying, groups


def _show(value):
    if value is None:
        return "none"
    return ", ".join(map(str, value)) if isinstance(value, (list, tuple)) else value


def runs_table(records: Iterable[Mapping], metric: str = "metrics.test_acc", label: str = "test accuracy %", *,
               percent: bool = True) -> list[dict]:
    """One row per group of runs that differ only in their seed: the method and every config
    setting that differs between any two runs get a column, then ``label`` (mean ± std over the group, in % when
    ``percent``) and ``n`` (runs averaged), so that a lambda-10 run is never averaged with a
    lambda-1 run."""
    records = [r for r in records if lookup(r, metric) is not None]
    varying, groups = _groups(records)
    rows = []
    for members in groups.values():
        config = flatten(members[0]["config"])
        row = {k: _show(config.get(k)) for k in varying}
        row[label] = _mean_std([float(lookup(m, metric)) for m in members], percent)
        row["n"] = len(members)
        row["seeds"] = ", ".join(str(s) for s in sorted({lookup(m, "config.seed") for m in members}, key=str))
        rows.append(row)
    return rows


def beside_committed(records: Iterable[Mapping], committed: Iterable[Mapping],
                     methods: Sequence[str] = DISTILLATION_METHODS) -> list[dict]:
    """Your runs beside the committed ones, one row per method: test accuracy % (mean ± std, n)
    of ``records`` and of the committed runs of the same variant, ``per_class`` and dataset, and
    the settings in which the committed runs differ from yours (seeds and labels aside), so that
    a gap between the two columns can be read for what it is."""
    from .report import variant
    records, committed = list(records), list(committed)
    rows = []
    for method in methods:
        mine = [r for r in records if variant(r) == method]
        if not mine:
            continue
        here = flatten(mine[0]["config"])
        theirs = [r for r in committed if variant(r) == method
                  and lookup(r, "config.extra.part") in (None, "distillation")
                  and all(lookup(r, f"config.{k}") == here.get(k) for k in ("dataset", "per_class"))]
        differ = set()
        for r in theirs:
            f = flatten(r["config"])
            differ |= {k for k in set(f) | set(here) if k not in ("seed", "extra", "extra.variant", "extra.part")
                       and f.get(k) != here.get(k)}
        rows.append({"method": method,
                     "yours: test %": _mean_std([lookup(r, "metrics.test_acc") for r in mine]), "n (yours)": len(mine),
                     "committed: test %": _mean_std([lookup(r, "metrics.test_acc") for r in theirs]),
                     "n (committed)": len(theirs),
                     "committed runs differ in": ", ".join(sorted(differ)) if theirs else "no committed runs"})
    return rows


def attention_distances(students: Mapping, teacher, x) -> list[dict]:
    """Notebook 05: how close each student's attention is to the teacher's on images ``x``, as the
    two training terms measure it before their weights (Section 4.3): the attention-transfer
    loss and the attention-Jacobian loss (``2 - 2 cos`` per layer), summed over the feature taps
    that training pairs (:func:`jkt_lab.methods.tap_pairs`: the deepest ones both models have)."""
    from .losses import attention_jacobian_loss, attention_transfer_loss
    from .methods import tap_pairs
    x = x.detach().clone().requires_grad_(True)
    rows = []
    for name, student in students.items():
        s_taps, t_taps = tap_pairs(student, teacher)
        (_, s_feats), (_, t_feats) = student.forward_features(x), teacher.forward_features(x)
        s_f, t_f = [s_feats[k] for k in s_taps], [t_feats[k] for k in t_taps]
        rows.append({"student": name, "layer pairs": len(s_taps),
                     "attention transfer loss": float(attention_transfer_loss(s_f, t_f).detach()),
                     "attention-Jacobian loss": float(attention_jacobian_loss(s_f, t_f, x).detach())})
    return rows


def chance_level(config: Config | Mapping) -> float:
    """1 / number of classes of a run (its ``classes``, else its dataset's)."""
    from .data import SHAPE_CLASSES
    from .experiments import load_data
    config = config if isinstance(config, Config) else Config.from_dict(dict(config))
    if config.classes:
        return 1.0 / len(config.classes)
    if config.dataset == "shapes":      # generated: no need to make the images to count the classes
        return 1.0 / len(SHAPE_CLASSES)
    return 1.0 / load_data(config).num_classes


def fit_summary(records: Iterable[Mapping], group: str = "config.method") -> list[dict]:
    """Per ``group`` value (mean over seeds, %): final train, validation and test accuracy, the
    train - validation gap, test accuracy above chance (in binomial standard errors of a
    chance-level classifier on the test set), and how far Jacobian matching trained: the
    training-batch cosine implied by the history's ``loss/jacobian`` (one matched output per
    example: ``cos = 1 - loss / (2 jacobian_weight)``) in the first and last rows ("cosine in
    the loss": the training batches, as the step saw them), and the ``jacobian_cosine/<split>``
    values of the last row when the history records them ("cosine measured on train /
    validation images": fixed images, eval mode)."""
    records = list(records)
    by: dict[str, list[Mapping]] = {}
    for r in records:
        by.setdefault(str(lookup(r, group)), []).append(r)
    rows = []
    for name, members in by.items():
        c = members[0]["config"]
        chance = chance_level(c)
        def mean(key):
            values = [float(v) for m in members if (v := lookup(m, key)) is not None]
            return statistics.fmean(values) if values else float("nan")
        test, train, val = mean("metrics.test_acc"), mean("metrics.train_acc"), mean("metrics.val_acc")
        n_test = c.get("n_test") or 1000
        se = math.sqrt(chance * (1 - chance) / n_test)
        row = {group.split(".")[-1]: name, "n": len(members), "train %": 100 * train, "validation %": 100 * val,
               "test %": 100 * test, "train - validation": 100 * (train - val), "chance %": 100 * chance,
               "test above chance (s.e.)": (test - chance) / se}
        if c.get("method") in ("kd+jacobian", "activations+jacobian") and c.get("jacobian_kind") == "normalized" \
                and c.get("jacobian_output") in ("top1", "label") \
                and all(m.get("history") and "loss/jacobian" in m["history"][0] for m in members):
            # one matched output per example: loss/jacobian = weight * (2 - 2 cos), batch mean
            cos = lambda h: 1 - h["loss/jacobian"] / (2 * c["jacobian_weight"])  # noqa: E731
            row["cosine in the loss, first row"] = statistics.fmean(cos(m["history"][0]) for m in members)
            row["cosine in the loss, last row"] = statistics.fmean(cos(m["history"][-1]) for m in members)
        for split in ("train", "val"):
            values = [m["history"][-1].get(f"jacobian_cosine/{split}") for m in members if m.get("history")]
            values = [v for v in values if v is not None]
            if values:
                row[f"cosine measured on {'train' if split == 'train' else 'validation'} images, last row"] = \
                    statistics.fmean(values)
        rows.append(row)
    return rows


def compare(records: Iterable[Mapping], better: str, worse: str, *, label=None, metric: str = "metrics.test_acc",
            percent: bool = True) -> dict:
    """Does ``better`` beat ``worse`` (two labels: ``label(record)``, default the method) on
    ``metric``? Judged by the package's one paired rule (:func:`jkt_lab.analysis.paired_compare`):
    the per-seed difference, its 95% t interval and the paired t-test. Returns the means, sample
    stds, ``n``, the mean paired ``difference``, its ``interval``, and ``verdict``: "ahead" when
    the seeds show ``better`` ahead (p < 0.05), "behind" when they show it behind, "not shown" when
    the interval includes 0, "one seed, no interval" with one paired seed; ``sentence`` says it."""
    label = label or (lambda r: lookup(r, "config.method"))
    records = list(records)
    values: dict[str, list[float]] = {better: [], worse: []}
    for r in records:
        name, v = label(r), lookup(r, metric)
        if name in values and v is not None:
            values[name].append(float(v))
    for name, vs in values.items():
        if not vs:
            raise ValueError(f"no record with a {metric} labelled {name!r}")
    scale = 100 if percent else 1
    mean = {k: scale * statistics.fmean(v) for k, v in values.items()}
    std = {k: scale * statistics.stdev(v) if len(v) > 1 else None for k, v in values.items()}
    c = paired_compare(records, better, worse, lambda r: lookup(r, metric), label=label, scale=scale)
    if not c.settings:
        raise ValueError(f"no seed has a {metric} for both {better!r} and {worse!r}: nothing to pair")
    s = c.settings[0]
    verdict = ("one seed, no interval" if s.low is None else
               {"shown": "ahead", "opposite": "behind", "not shown": "not shown"}[s.status])
    unit = " points" if percent else ""
    fmt = ".1f" if percent else ".3f"
    spread = lambda k: f" ± {std[k]:{fmt}}" if std[k] is not None else ""  # noqa: E731
    interval = None if s.low is None else (s.low, s.high)
    said = {"ahead": "the seeds show it ahead", "behind": "the seeds show it behind",
            "not shown": "not shown (the interval includes 0)", "one seed, no interval": "one seed, no interval"}[verdict]
    sentence = (f"{better} {format(mean[better], fmt)}{spread(better)} (n={len(values[better])}) vs. {worse} "
                f"{format(mean[worse], fmt)}{spread(worse)} (n={len(values[worse])}): paired difference "
                f"{s.mean:+{fmt}}{unit}"
                + (f", 95% interval [{s.low:+{fmt}}, {s.high:+{fmt}}] over {s.n} seeds" if interval else "")
                + f": {said}.")
    return {"better": better, "worse": worse, "mean": mean, "std": std, "n": {k: len(v) for k, v in values.items()},
            "difference": s.mean, "interval": interval, "verdict": verdict, "sentence": sentence}


def try_jacobian_step(step, config: Config | None = None, *, steps: int = 40, batch_size: int = 32,
                      device="cpu") -> list[dict]:
    """Train a fresh student with ``step`` alone (the signature of exercise ``03.jacobian_step``)
    on the few-shot images of ``config``, in eval mode (each example's own Jacobian), and return
    one row per step: the loss it returned and the mean teacher-student cosine of top-1 Jacobians
    on the batch (``1 - loss / (2 * jacobian_weight)``)."""
    import torch

    from .experiments import build_student, get_teacher, load_data
    config = config or course_config()
    teacher, _ = get_teacher(config, device=device, progress=False)
    data = load_data(config, classes=config.classes, per_class=config.per_class).to(device)
    student = build_student(config.replace(method="kd+jacobian"), data, teacher).to(device).eval()
    optimizer = torch.optim.SGD(student.parameters(), lr=config.lr, momentum=config.momentum)
    gen = torch.Generator().manual_seed(config.seed)
    rows = []
    for i in range(steps):
        pick = torch.randperm(data.x_train.shape[0], generator=gen)[:batch_size].to(device)
        loss = float(step(student, teacher, data.x_train[pick], optimizer, jacobian_weight=config.jacobian_weight))
        rows.append({"step": i + 1, "loss": loss, "cosine": 1 - loss / (2 * config.jacobian_weight)})
    return rows
