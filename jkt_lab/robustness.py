"""Robustness to noisy inputs, examined: which students resist Gaussian input noise, and why.

The paper (Section 5) reports that Jacobian-matched students are more robust to Gaussian input
noise. This module runs the experiment that asks why (``jkt-lab robustness``):

* teachers (:data:`TEACHERS`): ``standard`` and ``noise-trained`` (Gaussian input noise while
  the teacher trains, ``teacher_train_sigma``);
* students (:data:`VARIANTS`): kd; kd + normalised Jacobian matching (Section 3.2, the paper's
  loss); kd + squared Jacobian matching (Proposition 1); noise distillation (Section 3); kd + a
  penalty on the student's own Jacobian norm (``kd+jacobian_norm``: double backpropagation,
  reference [1]); each at a few-shot and a larger ``per_class``, over :data:`SEEDS`;
* every model, teachers included, evaluated at each ``sigma`` of
  :data:`~jkt_lab.experiments.NOISE_SIGMAS`, with the mechanism measured on the same test
  images: the mean norm of the input Jacobian of its top-1 output (``jacobian_norm``) and the
  teacher-student Jacobian cosine (``saliency_cosine``), both recorded by
  :func:`~jkt_lab.experiments.run`.

Hyper-parameters (``jacobian_weight``; ``sigma`` for noise distillation) are chosen for each
teacher on the validation split, at the larger ``per_class`` and seed 0, by validation accuracy
under noise at :data:`SELECT_SIGMA` (ties: clean validation accuracy). Why not clean accuracy:
the grid asks how robust each objective can make a student; chosen for clean accuracy, a penalty
would get its weakest weight and the grid would measure the tuning, not the mechanism. Clean
accuracy is reported beside robust accuracy, so what robustness costs stays visible. Test
images are never used to choose. The selection runs at the chosen value are the grid's seed-0
runs (the same config: nothing runs twice).

:func:`equivalence_in_training` tests Proposition 1 where it matters, in training: students
distilled on noisy inputs (squared loss, ``sigma``) against students trained with activation
matching plus ``sigma^2`` times the squared Jacobian distance, compared with the spread between
two seeds of one method (the noise floor).

Every run goes to one results store (resumable). The report section is
:func:`jkt_lab.report.robustness_section`.
"""
from __future__ import annotations

import itertools
import math
import statistics
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .config import Config
from .data import add_noise
from .experiments import NOISE_SIGMAS, PROBE, get_teacher, load_data, measure, quick_config, run, trained_student
from .jacobian import input_jacobian
from .pretrained import shipped_for
from .analysis.compare import paired_compare
from .reproduce import SCALES
from .results import ResultStore, config_hash, lookup
from .train import resolve_device

__all__ = ["EXPERIMENT", "TEACHERS", "VARIANTS", "SEEDS", "SELECT_SIGMA", "PARTS", "Setup", "SETUPS", "setup",
           "teacher_configs", "grid_configs", "selection_configs", "select", "chosen_configs", "teacher_rows",
           "run_teachers", "robustness_experiment", "robustness_table", "mechanism_table", "selection_table",
           "equivalence_configs", "equivalence_in_training", "equivalence_table", "logit_energy",
           "logit_energy_table", "scale_invariance_table", "findings", "spearman", "grid_records", "compare_prediction",
           "mean_accuracy", "versus_kd"]

EXPERIMENT = "robustness"
SEEDS = (0, 1, 2)
SELECT_SIGMA = 0.1   # validation accuracy under noise at this sigma chooses the hyper-parameters
PARTS = ("teachers", "grid", "equivalence")
TEACHERS = ("standard", "noise-trained")
VARIANTS = {  # label -> (method, config changes)
    "kd": ("kd", {}),
    "kd+jacobian (normalised)": ("kd+jacobian", {"jacobian_kind": "normalized", "jacobian_output": "top1"}),
    "kd+jacobian (squared)": ("kd+jacobian", {"jacobian_kind": "squared", "jacobian_output": "top1"}),
    "noise": ("noise", {"noise_loss": "kd", "n_samples": 1}),
    "kd+jacobian_norm": ("kd+jacobian_norm", {"jacobian_output": "top1"}),
}
EQUIVALENCE = ("noise (squared)", "activations+jacobian (squared)")
# Searched on the validation split. The normalised loss is at most 4 per example whatever the
# Jacobians' size; the squared distance and the norm penalty grow with the squared norm (the
# shapes teacher's top-1 Jacobian has norm about 8 in pixel units, a squared distance near 70
# for a flat student), so their weights sit two decades lower.
SELECTION = {"kd+jacobian (normalised)": {"jacobian_weight": [0.1, 1.0, 10.0]},
             "kd+jacobian (squared)": {"jacobian_weight": [0.01, 0.1, 1.0]},
             "noise": {"sigma": [0.05, 0.1, 0.2]},
             "kd+jacobian_norm": {"jacobian_weight": [0.01, 0.1, 1.0]}}


@dataclass(frozen=True)
class Setup:
    """The robustness experiment on one dataset.

    ``base``: the Config fields every run shares (the teacher's included); ``per_class``: the
    few-shot and the larger setting; ``teacher_sigma``: the noise-trained teacher's
    ``teacher_train_sigma``; ``selection``: variant -> {field: values} searched on the validation
    split; ``equivalence_sigmas``: the sigmas of :func:`equivalence_in_training`;
    ``parts``: what ``jkt-lab robustness`` runs by default; ``shipped``: whether the teachers are
    the package's shipped teachers (then never trained here, outside quick mode).
    """

    dataset: str
    base: dict
    per_class: tuple[int, int]
    teacher_sigma: float
    selection: dict
    equivalence_sigmas: tuple[float, ...] = ()
    parts: tuple[str, ...] = ("teachers", "grid")
    shipped: bool = False
    seeds: tuple[int, ...] = SEEDS
    notes: dict = field(default_factory=dict)

    @property
    def select_per_class(self) -> int:
        return self.per_class[-1]


SETUPS = {
    # The shapes experiment of results/specs/shapes_few_shot.yaml; the teacher trains with batch 64
    # (the course's recipe; the default 128 leaves the tiny teacher at about 64% after 8 epochs).
    "shapes": Setup("shapes", dict(dataset="shapes", n_train=4000, n_test=1000, teacher="tiny", teacher_width=32,
                                   teacher_epochs=8, teacher_batch_size=64, student="tiny", student_width=16,
                                   steps=300, batch_size=64, lr=0.05, temperature=4.0),
                    per_class=(20, 100), teacher_sigma=0.1,
                    selection=SELECTION,
                    equivalence_sigmas=(0.02, 0.05, 0.1, 0.2), parts=PARTS),
    # CPU scale with the shipped CIFAR-10 teachers (cifar10, cifar10-noise: vgg9 width 32, 30 epochs).
    # A history row evaluates 5000 validation images and two Jacobian probes; at the default of
    # about 20 rows a run they cost more than a kd run's steps, so rows come every 50 epochs (1 to
    # 3 a run, the last always).
    "cifar10": Setup("cifar10", dict(SCALES["cpu"].base, dataset="cifar10", eval_every=50),
                     per_class=(10, 100), teacher_sigma=0.1,
                     selection=SELECTION,
                     shipped=True),
}


def setup(dataset: str | Setup) -> Setup:
    """The :class:`Setup` of ``dataset`` (one of :data:`SETUPS`), or ``dataset`` itself."""
    if isinstance(dataset, Setup):
        return dataset
    if dataset not in SETUPS:
        raise ValueError(f"dataset must be one of {', '.join(SETUPS)} for the robustness experiment, got {dataset!r}")
    return SETUPS[dataset]


def _tag(config: Config, part: str, **tags) -> Config:
    return config.replace(extra={**config.extra, "experiment": EXPERIMENT, "part": part, **tags})


def _quick(configs: Iterable[Config], quick: bool) -> list[Config]:
    """Quick mode: each run at toy size (:func:`~jkt_lab.experiments.quick_config`), tagged
    ``extra.quick`` so that a report finds which grid its records belong to."""
    if not quick:
        return list(configs)
    unique: dict[str, Config] = {}  # toy sizes can merge settings (per_class is capped at 20)
    for q in map(quick_config, configs):
        q = q.replace(extra={**q.extra, "quick": True})
        unique.setdefault(config_hash(q.to_dict()), q)
    return list(unique.values())


def _knob(c: Config) -> str:
    """The hyper-parameter a variant's selection searches, as ``name=value`` (or "")."""
    if c.method == "noise":
        return f", sigma={c.sigma:g}"
    return f", jacobian_weight={c.jacobian_weight:g}" if "jacobian" in c.method else ""


def teacher_configs(s: str | Setup, quick: bool = False) -> dict[str, Config]:
    """Teacher name -> the base config that uses that teacher (students are built on it)."""
    s = setup(s)
    base = Config(**s.base)
    out = {"standard": base, "noise-trained": base.replace(teacher_train_sigma=s.teacher_sigma)}
    return {name: (quick_config(c) if quick else c) for name, c in out.items()}


def _student(base: Config, teacher: str, variant: str, per_class: int, seed: int, **changes) -> Config:
    method, fixed = VARIANTS[variant]
    return _tag(base, "grid", teacher=teacher, variant=variant).replace(method=method, per_class=per_class,
                                                                        seed=seed, **fixed, **changes)


def selection_configs(s: str | Setup, quick: bool = False) -> list[Config]:
    """The validation runs: every value of each variant's grid, for each teacher, at the larger
    ``per_class``, seed 0 (the run at the chosen value is also the grid's seed-0 run)."""
    s = setup(s)
    out = []
    for teacher, base in teacher_configs(s).items():
        for variant, grid in s.selection.items():
            (key, values), = grid.items()
            out += [_student(base, teacher, variant, s.select_per_class, 0, **{key: v}) for v in values]
    return _quick(out, quick)


def select(records: Iterable[Mapping], s: str | Setup, quick: bool | None = None) -> dict[tuple[str, str], dict]:
    """(teacher, variant) -> ``{field: chosen value, "val_noise_acc": ..., "val_acc": ...}``, from
    the selection runs among ``records``: highest validation accuracy under noise at
    :data:`SELECT_SIGMA`, ties broken by clean validation accuracy. Missing runs are skipped."""
    records = list(records)
    quick = _is_quick(records) if quick is None else quick
    by_key = {r.get("key") or config_hash(r["config"]): r for r in records}
    best: dict[tuple[str, str], tuple] = {}
    for c in selection_configs(s, quick):
        r = by_key.get(config_hash(c.to_dict()))
        if r is None:
            continue
        robust = (lookup(r, "metrics.val_noise_acc") or {}).get(f"{SELECT_SIGMA:g}")
        clean = lookup(r, "metrics.val_acc")
        if robust is None or clean is None:
            continue
        (key, _), = setup(s).selection[c.extra["variant"]].items()
        slot = (c.extra["teacher"], c.extra["variant"])
        if slot not in best or (robust, clean) > best[slot][:2]:
            best[slot] = (robust, clean, {key: getattr(c, key)})
    return {slot: {**v[2], "val_noise_acc": v[0], "val_acc": v[1]} for slot, v in best.items()}


def _is_quick(records: Iterable[Mapping]) -> bool:
    """Whether ``records`` come from quick mode (their configs carry ``extra.quick``)."""
    return any(lookup(r, "config.extra.quick") for r in records)


def grid_configs(s: str | Setup, chosen: Mapping | None = None, quick: bool = False) -> list[Config]:
    """Teacher x variant x ``per_class`` x seed, with the hyper-parameters in ``chosen`` (from
    :func:`select`; variants without a choice keep the base values)."""
    s, chosen = setup(s), chosen or {}
    out = []
    for teacher, base in teacher_configs(s).items():
        for per_class in s.per_class:
            for variant in VARIANTS:
                picked = {k: v for k, v in chosen.get((teacher, variant), {}).items() if not k.startswith("val_")}
                out += [_student(base, teacher, variant, per_class, seed, **picked) for seed in s.seeds]
    return _quick(out, quick)


def chosen_configs(records: Sequence[Mapping], s: str | Setup, quick: bool | None = None) -> list[Config]:
    """The grid with the hyper-parameters the selection runs in ``records`` chose (``quick``:
    None infers it from the records)."""
    records = list(records)
    quick = _is_quick(records) if quick is None else quick
    return grid_configs(s, select(records, s, quick), quick)


# --------------------------------------------------------------------------- teachers' own rows


def teacher_rows(s: str | Setup, quick: bool = False) -> dict[str, Config]:
    """Teacher name -> the config of its own row: the teacher's config, evaluated on the
    students' test images (``n_test`` of the base), tagged ``part="teacher"``."""
    out = {}
    for name, base in teacher_configs(s, quick).items():
        tconf = base.teacher_config().replace(n_test=base.n_test)
        out[name] = _tag(tconf, "teacher", teacher=name, variant="teacher", **({"quick": True} if quick else {}))
    return out


def logit_energy(model: torch.nn.Module, x: torch.Tensor, sigmas: Iterable[float] = NOISE_SIGMAS, *,
                 seed: int = 0) -> dict[str, dict[str, float]]:
    """Proposition 1 at the teacher, with the student set to zero: the measured mean squared
    logit norm under noise, ``E ||T(x + sigma z)||^2`` (one noise draw per image), against its
    second-order prediction ``||T(x)||^2 + sigma^2 ||J_T(x)||_F^2`` (all outputs' Jacobians,
    eval mode), averaged over the images ``x``. Where the two part, the noise leaves the region
    where the network is close to linear, and noise distillation stops being Jacobian matching.
    Returns ``{"measured": {sigma: value}, "predicted": {sigma: value}}`` (sigma as ``"%g"``)."""
    model.eval()
    with torch.no_grad():
        clean = float(model(x).double().pow(2).sum(1).mean())
    frobenius = float(input_jacobian(model, x).double().pow(2).flatten(1).sum(1).mean())
    out: dict[str, dict[str, float]] = {"measured": {}, "predicted": {}}
    for sigma in sigmas:
        with torch.no_grad():
            noisy = model(add_noise(x, float(sigma), seed=seed)).double()
        out["measured"][f"{sigma:g}"] = float(noisy.pow(2).sum(1).mean())
        out["predicted"][f"{sigma:g}"] = clean + float(sigma) ** 2 * frobenius
    return out


def _check_shipped(s: Setup, quick: bool) -> None:
    if not s.shipped or quick:
        return
    for name, base in teacher_configs(s).items():
        if shipped_for(base.teacher_config()) is None:
            raise ValueError(
                f"the {name} teacher of the {s.dataset} robustness experiment is not shipped with the package yet "
                "(jkt_lab/teachers/remake.sh trains it; hours on a CPU); run with --quick meanwhile")


def run_teachers(store: ResultStore, s: str | Setup, *, quick: bool = False, device="auto",
                 progress: bool = True) -> list[dict]:
    """Each teacher's own row (accuracy at every sigma, Jacobian norm), appended once to ``store``."""
    s = setup(s)
    _check_shipped(s, quick)
    records = []
    bases = teacher_configs(s, quick)
    for name, row in teacher_rows(s, quick).items():
        if store.done(row.to_dict()):
            records.append(store.get(row.to_dict()))
            continue
        t0 = time.perf_counter()
        teacher, info = get_teacher(bases[name], device=device, progress=progress)
        data = load_data(bases[name]).to(resolve_device(device))
        metrics = measure(teacher, data)
        metrics["test_acc"] = metrics["noise_acc"]["0"]
        metrics["logit_energy"] = logit_energy(teacher, data.x_test[:PROBE])
        records.append(store.append({"config": row.to_dict(), "metrics": metrics,
                                     "wall_time_s": time.perf_counter() - t0, "device": str(data.device),
                                     "extra": {"teacher_key": info["key"], "shipped": info.get("shipped")}}))
    return records


# --------------------------------------------------------------------------- the experiment


def robustness_experiment(store: str | Path | ResultStore, dataset: str | Setup = "shapes", *,
                          parts: Iterable[str] | None = None, quick: bool = False, device="auto",
                          progress: bool = True, log=print) -> dict[str, float]:
    """Run the parts in order (finished runs are skipped) and return wall times by part (s).

    ``teachers``: each teacher's own row; ``grid``: the selection runs, then the rest of the
    grid with the chosen hyper-parameters; ``equivalence``: :func:`equivalence_in_training`.
    """
    s = setup(dataset)
    parts = list(s.parts if parts is None else parts)
    for p in parts:
        if p not in PARTS:
            raise ValueError(f"unknown part {p!r}; valid parts: {', '.join(PARTS)}")
    store = store if isinstance(store, ResultStore) else ResultStore(store)
    _check_shipped(s, quick)
    times: dict[str, float] = {}

    def batch(name, configs):
        todo = [c for c in configs if not store.done(c.to_dict())]
        log(f"{name}: {len(configs)} runs, {len(configs) - len(todo)} already done")
        for i, c in enumerate(todo):
            log(f"  [{i + 1}/{len(todo)}] teacher {c.extra['teacher']}, {c.extra['variant']}{_knob(c)}, "
                f"per_class={c.per_class}, seed={c.seed}")
            run(c, store=store, device=device, progress=progress, val_noise_sigmas=(SELECT_SIGMA,))

    if "teachers" in parts:
        t0 = time.perf_counter()
        for r in run_teachers(store, s, quick=quick, device=device, progress=progress):
            log(f"teacher {r['config']['extra']['teacher']}: test accuracy {100 * r['metrics']['test_acc']:.1f}%, "
                f"at sigma {SELECT_SIGMA:g}: {100 * r['metrics']['noise_acc'][f'{SELECT_SIGMA:g}']:.1f}%, "
                f"Jacobian norm {r['metrics']['jacobian_norm']:.3g}")
        times["teachers"] = time.perf_counter() - t0
    if "grid" in parts:
        t0 = time.perf_counter()
        batch("selection (validation split)", selection_configs(s, quick))
        chosen = select(store.records(), s, quick)
        for (teacher, variant), v in chosen.items():
            log(f"  chosen for {variant} with the {teacher} teacher: "
                + ", ".join(f"{k}={v[k]:g}" for k in v if not k.startswith("val_"))
                + f" (val accuracy at sigma {SELECT_SIGMA:g}: {100 * v['val_noise_acc']:.1f}%)")
        batch("grid", grid_configs(s, chosen, quick))
        times["grid"] = time.perf_counter() - t0
    if "equivalence" in parts:
        t0 = time.perf_counter()
        equivalence_in_training(store, s, quick=quick, device=device, progress=progress, log=log)
        times["equivalence"] = time.perf_counter() - t0
    return times


# --------------------------------------------------------------------------- tables


def _of(records, part):
    return [r for r in records if lookup(r, "config.extra.experiment") == EXPERIMENT
            and lookup(r, "config.extra.part") == part]


def _mean_std(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def _pct(values, unit: str = "") -> str:
    mean, std = _mean_std(values)
    if mean is None:
        return ""
    return f"{100 * mean:.1f}{unit}" + (f" ± {100 * std:.1f}" if std is not None else "")


def _groups(records) -> dict[tuple, list[dict]]:
    """(teacher, variant, per_class) -> records, teachers' rows first, then in grid order."""
    out: dict[tuple, list[dict]] = {}
    for r in _of(records, "teacher"):
        out.setdefault((r["config"]["extra"]["teacher"], "teacher", None), []).append(r)
    order = {v: i for i, v in enumerate(VARIANTS)}
    students = sorted(_of(records, "grid"), key=lambda r: (TEACHERS.index(r["config"]["extra"]["teacher"])
                                                          if r["config"]["extra"]["teacher"] in TEACHERS else 9,
                                                          r["config"]["per_class"] or 0,
                                                          order.get(r["config"]["extra"]["variant"], 9)))
    for r in students:
        out.setdefault((r["config"]["extra"]["teacher"], r["config"]["extra"]["variant"], r["config"]["per_class"]),
                       []).append(r)
    return out


def grid_records(records: Sequence[Mapping], s: str | Setup | None, quick: bool | None = None) -> list[dict]:
    """The grid's runs among ``records``: the selection runs at values not chosen are left out
    (``quick``: None infers it from the records); with ``s`` None, every record."""
    records = list(records)
    if s is None:
        return records
    quick = _is_quick(records) if quick is None else quick
    tried = {config_hash(c.to_dict()) for c in selection_configs(s, quick)}
    keep = {config_hash(c.to_dict()) for c in chosen_configs(records, s, quick)}
    return [r for r in records if r.get("key") not in tried or r.get("key") in keep]


def robustness_table(records: Sequence[Mapping], s: str | Setup | None = None, quick: bool | None = None) -> list[dict]:
    """One row per teacher and per (teacher, variant, per_class): test accuracy (%, mean ± std
    over seeds) at each noise sigma. With a setup ``s``, only the grid's chosen runs count."""
    rows = []
    for (teacher, variant, per_class), recs in _groups(grid_records(records, s, quick)).items():
        sigmas = sorted({k for r in recs for k in (lookup(r, "metrics.noise_acc") or {})}, key=float)
        row = {"teacher": teacher, "student": variant, "per_class": "" if per_class is None else per_class,
               "n": len(recs)}
        for sg in sigmas:
            row[f"sigma={sg}"] = _pct([(lookup(r, "metrics.noise_acc") or {}).get(sg) for r in recs])
        rows.append(row)
    return rows


def mechanism_table(records: Sequence[Mapping], s: str | Setup | None = None, quick: bool | None = None,
                    sigma: float = SELECT_SIGMA) -> list[dict]:
    """One row per teacher and per (teacher, variant, per_class): clean and robust (at ``sigma``)
    test accuracy (%), the mean top-1 input-Jacobian norm (pixel units), its ratio to the
    teacher's on the same images, and the teacher-student Jacobian cosine (means over seeds)."""
    rows = []
    key = f"{sigma:g}"
    for (teacher, variant, per_class), recs in _groups(grid_records(records, s, quick)).items():
        norm, _ = _mean_std([lookup(r, "metrics.jacobian_norm") for r in recs])
        t_norm, _ = _mean_std([lookup(r, "metrics.teacher_jacobian_norm") for r in recs])
        cos, _ = _mean_std([lookup(r, "metrics.saliency_cosine") for r in recs])
        rows.append({"teacher": teacher, "student": variant, "per_class": "" if per_class is None else per_class,
                     "clean acc": _pct([lookup(r, "metrics.test_acc") for r in recs]),
                     f"acc at sigma={key}": _pct([(lookup(r, "metrics.noise_acc") or {}).get(key) for r in recs]),
                     "jacobian norm": norm,
                     "norm / teacher's": None if norm is None or not t_norm else norm / t_norm,
                     "cosine to teacher": cos, "n": len(recs)})
    return rows


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Spearman rank correlation (ties share their mean rank); None with fewer than 3 points."""
    if len(xs) != len(ys):
        raise ValueError(f"xs and ys must have the same length, got {len(xs)} and {len(ys)}")
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

    rx, ry = ranks(list(xs)), ranks(list(ys))
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    var = math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))
    return cov / var if var else None


def mean_accuracy(records: Sequence[Mapping], s: str | Setup | None = None, quick: bool | None = None,
                  sigma: float = SELECT_SIGMA) -> dict[tuple, float]:
    """(teacher, student, per_class) -> test accuracy at ``sigma`` (a fraction, mean over seeds);
    teachers' rows have student "teacher" and per_class None."""
    key = f"{sigma:g}"
    out = {}
    for group, recs in _groups(grid_records(records, s, quick)).items():
        mean, _ = _mean_std([(lookup(r, "metrics.noise_acc") or {}).get(key) for r in recs])
        if mean is not None:
            out[group] = mean
    return out


def versus_kd(records: Sequence[Mapping], s: str | Setup | None = None, quick: bool | None = None,
              sigma: float = SELECT_SIGMA) -> dict[str, dict]:
    """Each student against the kd student of the same teacher and per_class: ``{variant:
    {"settings": n, "norm_ratio": mean of its Jacobian norm / kd's, "gain": mean of its accuracy at
    sigma minus kd's (a fraction)}}``, over the (teacher, per_class) settings where both ran."""
    groups = _groups(grid_records(records, s, quick))
    acc = mean_accuracy(records, s, quick, sigma)
    norm = {g: _mean_std([lookup(r, "metrics.jacobian_norm") for r in recs])[0] for g, recs in groups.items()}
    out = {}
    for variant in VARIANTS:
        if variant == "kd":
            continue
        pairs = [((t, v, pc), (t, "kd", pc)) for (t, v, pc) in groups if v == variant]
        pairs = [(g, k) for g, k in pairs if norm.get(g) and norm.get(k) and g in acc and k in acc]
        if pairs:
            out[variant] = {"settings": len(pairs),
                            "norm_ratio": statistics.fmean(norm[g] / norm[k] for g, k in pairs),
                            "gain": statistics.fmean(acc[g] - acc[k] for g, k in pairs)}
    return out


def findings(records: Sequence[Mapping], s: str | Setup | None = None, quick: bool | None = None,
             sigma: float = SELECT_SIGMA) -> list[str]:
    """What the grid's records show, in sentences with their numbers (recomputed from whatever
    records are given): each teacher's accuracy and Jacobian norm; per teacher and ``per_class``
    the most robust student at ``sigma`` against kd; for each Jacobian variant its Jacobian norm
    and robust accuracy relative to kd's (means over seeds and ``per_class``); and the rank
    correlation between the students' Jacobian norms and their robust accuracy."""
    key = f"{sigma:g}"
    groups = _groups(grid_records(records, s, quick))
    acc = lambda recs: _mean_std([(lookup(r, "metrics.noise_acc") or {}).get(key) for r in recs])[0]  # noqa: E731
    norm = lambda recs: _mean_std([lookup(r, "metrics.jacobian_norm") for r in recs])[0]  # noqa: E731
    clean = lambda recs: _mean_std([lookup(r, "metrics.test_acc") for r in recs])[0]  # noqa: E731
    out = []
    for (teacher, variant, _), recs in groups.items():
        if variant == "teacher" and acc(recs) is not None:
            out.append(f"The {teacher} teacher: {100 * clean(recs):.1f}% clean, {100 * acc(recs):.1f}% at sigma {key}; "
                       f"Jacobian norm {norm(recs):.3g}.")
    slots = sorted({(t, pc) for (t, v, pc) in groups if v != "teacher"}, key=lambda k: (TEACHERS.index(k[0])
                                                                                       if k[0] in TEACHERS else 9, k[1]))
    for teacher, pc in slots:
        here = {v: recs for (t, v, p), recs in groups.items() if t == teacher and p == pc and acc(recs) is not None}
        if not here:
            continue
        best = max(here, key=lambda v: acc(here[v]))
        versus = f" (kd: {100 * acc(here['kd']):.1f}%)" if "kd" in here and best != "kd" else ""
        out.append(f"Most robust at sigma {key} with the {teacher} teacher, per_class {pc}: {best}, "
                   f"{100 * acc(here[best]):.1f}%{versus}.")
    students_only = [r for (_, v, _), recs in groups.items() if v != "teacher" for r in recs]
    setting = lambda r: f"{r['config']['extra']['teacher']}/{r['config']['per_class']}"  # noqa: E731
    label = lambda r: r["config"]["extra"]["variant"]  # noqa: E731
    noisy = lambda r: (lookup(r, "metrics.noise_acc") or {}).get(key)  # noqa: E731
    drop = lambda r: None if noisy(r) is None else noisy(r) - lookup(r, "metrics.test_acc")  # noqa: E731
    for variant, v in versus_kd(records, s, quick, sigma).items():
        n = v["settings"]
        absolute = paired_compare(students_only, variant, "kd", noisy, label=label, setting=setting)
        relative = paired_compare(students_only, variant, "kd", drop, label=label, setting=setting)
        out.append(f"{variant} against kd (same teacher and per_class, {n} setting{'s' if n > 1 else ''}, "
                   f"paired by seed): Jacobian norm x {v['norm_ratio']:.2f}; accuracy at sigma {key}: "
                   f"{absolute.verdict} ({100 * v['gain']:+.1f} points on average); drop from clean accuracy "
                   f"(robustness itself, a clean gain not counted): {relative.sentence(what='teacher/per_class')}")
    students = [r for rs in (recs for (_, v, _), recs in groups.items() if v != "teacher") for r in rs]
    for pc in sorted({lookup(r, "config.per_class") for r in students}, key=lambda v: v or 0):
        pts = [(lookup(r, "metrics.jacobian_norm"), (lookup(r, "metrics.noise_acc") or {}).get(key))
               for r in students if lookup(r, "config.per_class") == pc]
        pts = [(n, a) for n, a in pts if n and a is not None]
        rho = spearman([p[0] for p in pts], [p[1] for p in pts])
        if rho is not None:
            out.append(f"per_class {pc}: rank correlation between a student's Jacobian norm and its accuracy at "
                       f"sigma {key}: {rho:+.2f} over {len(pts)} students.")
    return out


def compare_prediction(prediction: str | None, records: Sequence[Mapping], s: str | Setup | None = None, *,
                       teacher: str = "standard", per_class: int | None = None, quick: bool | None = None,
                       sigma: float = SELECT_SIGMA) -> str:
    """Notebook 04's predict-then-run: the student the learner predicted to be most robust at
    ``sigma`` (one of :data:`VARIANTS`), against the measured ranking of the grid's students with
    ``teacher`` at ``per_class`` (default: the setup's few-shot setting), with each mean ± std over
    seeds; says whether the prediction is the best, or within one spread of it."""
    if prediction is not None and prediction not in VARIANTS:
        raise ValueError(f"prediction must be one of {', '.join(map(repr, VARIANTS))} (or None), got {prediction!r}")
    if teacher not in TEACHERS:
        raise ValueError(f"teacher must be one of {', '.join(TEACHERS)}, got {teacher!r}")
    key = f"{sigma:g}"
    if per_class is None:
        per_class = setup(s).per_class[0] if s is not None else min(
            lookup(r, "config.per_class") for r in _of(records, "grid"))
    accs = {v: [(lookup(r, "metrics.noise_acc") or {}).get(key) for r in recs]
            for (t, v, pc), recs in _groups(grid_records(records, s, quick)).items() if t == teacher and pc == per_class}
    here = {v: stats for v, a in accs.items() if (stats := _mean_std(a))[0] is not None}
    if not here:
        raise ValueError(f"no grid results with the {teacher} teacher at per_class {per_class} in these records")
    ranking = sorted(here, key=lambda v: -here[v][0])
    line = "; ".join(f"{v} {_pct(accs[v], unit='%')}" for v in ranking)
    measured = f"Measured at sigma {key}, {teacher} teacher, per_class {per_class} (best first): {line}."
    if prediction is None:
        return "No prediction recorded (set prediction above, then run this cell). " + measured
    best, (b_mean, b_std) = ranking[0], here[ranking[0]]
    mean, std = here[prediction]
    if prediction == best:
        verdict = f"You predicted {prediction}: it is the most robust"
        if len(ranking) > 1:
            second, (s_mean, s_std) = ranking[1], here[ranking[1]]
            close = b_mean - s_mean <= max(b_std or 0.0, s_std or 0.0)
            verdict += (f", though within one standard deviation over seeds of {second}." if close else
                        f", {100 * (b_mean - s_mean):.1f} points ahead of {second}.")
        else:
            verdict += "."
    elif b_mean - mean <= max(b_std or 0.0, std or 0.0):
        verdict = (f"You predicted {prediction}: rank {ranking.index(prediction) + 1} of {len(ranking)}, within one "
                   f"standard deviation over seeds of the best ({best}): the seeds cannot separate them.")
    else:
        verdict = (f"You predicted {prediction}: rank {ranking.index(prediction) + 1} of {len(ranking)}, "
                   f"{100 * (b_mean - mean):.1f} points behind {best}.")
    return verdict + " " + measured


def selection_table(records: Sequence[Mapping], s: str | Setup, quick: bool | None = None) -> list[dict]:
    """Every selection run: teacher, variant, value tried, validation accuracy (clean and at
    :data:`SELECT_SIGMA`, %), and whether it was chosen."""
    s, records = setup(s), list(records)
    quick = _is_quick(records) if quick is None else quick
    by_key = {r["key"]: r for r in records if "key" in r}
    chosen = select(records, s, quick)
    rows = []
    for c in selection_configs(s, quick):
        r = by_key.get(config_hash(c.to_dict()))
        if r is None:
            continue
        (key, _), = s.selection[c.extra["variant"]].items()
        slot = (c.extra["teacher"], c.extra["variant"])
        rows.append({"teacher": c.extra["teacher"], "student": c.extra["variant"], "field": key,
                     "value": f"{getattr(c, key):g}", "val acc": 100 * lookup(r, "metrics.val_acc"),
                     f"val acc at sigma={SELECT_SIGMA:g}":
                         100 * (lookup(r, "metrics.val_noise_acc") or {}).get(f"{SELECT_SIGMA:g}", math.nan),
                     "chosen": "yes" if chosen.get(slot, {}).get(key) == getattr(c, key) else ""})
    return rows


def scale_invariance_table(scales: Iterable[float] = (0.1, 0.5, 1.0, 2.0, 10.0), *, teacher_norm: float = 8.0,
                           sigma: float = SELECT_SIGMA, shape: tuple[int, ...] = (3, 32, 32), seed: int = 0) -> list[dict]:
    """What each Jacobian loss sees of a student whose top-1 Jacobian is ``c`` times the teacher's
    (same direction): the normalised loss (Section 3.2; 0 whatever ``c``), the squared loss
    ``(c - 1)^2 ||J_T||^2`` (Proposition 1), the norm penalty ``c^2 ||J_T||^2`` (``kd+jacobian_norm``),
    and the first-order standard deviation ``sigma c ||J_T||`` of the student's output under
    noise of std ``sigma``. ``J_T``: a random direction of norm ``teacher_norm``, computed with
    :func:`~jkt_lab.losses.jacobian_loss`."""
    from .losses import jacobian_loss
    j_t = torch.randn((1, 1, *shape), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    j_t = j_t * (teacher_norm / j_t.norm())
    rows = []
    for c in scales:
        j_s = float(c) * j_t
        # the normalised loss is 0 to float precision (1e-32 left over from the division): shown as 0
        rows.append({"scale c": float(c), "normalised loss": round(float(jacobian_loss(j_s, j_t, "normalized")), 12),
                     "squared loss": float(jacobian_loss(j_s, j_t, "squared")),
                     "norm penalty": float(jacobian_loss(j_s, torch.zeros_like(j_s), "squared")),
                     f"output std at sigma={sigma:g}": sigma * float(j_s.norm())})
    return rows


def logit_energy_table(records: Sequence[Mapping]) -> list[dict]:
    """One row per teacher and sigma: measured ``E ||T(x + sigma z)||^2``, the second-order
    prediction and their ratio (from the teachers' rows, :func:`logit_energy`)."""
    rows = []
    for r in _of(records, "teacher"):
        energy = lookup(r, "metrics.logit_energy")
        if not energy:
            continue
        for sg, measured in energy["measured"].items():
            predicted = energy["predicted"][sg]
            rows.append({"teacher": r["config"]["extra"]["teacher"], "sigma": float(sg), "measured": measured,
                         "second-order prediction": predicted, "measured / predicted": measured / predicted})
    return rows


# --------------------------------------------------------------------------- the equivalence, in training


def equivalence_configs(s: str | Setup, sigmas: Iterable[float] | None = None, *, activation_weight: float = 0.1,
                        jacobian_output: str = "random", seeds: Iterable[int] | None = None,
                        quick: bool = False) -> list[Config]:
    """Pairs of objectives that Proposition 1 says agree to order sigma^2, for each sigma.

    ``noise (squared)``: ``ce + a * E_z ||T(x + sigma z) - S(x + sigma z)||^2`` (method
    ``noise``, ``noise_loss="squared"``, one noise sample a step); ``activations+jacobian
    (squared)``: ``ce + a * ||T(x) - S(x)||^2 + a sigma^2 * sum_i ||dT_i/dx - dS_i/dx||^2``
    (``jacobian_kind="squared"``, ``jacobian_output`` "random": one random projection a step, an
    unbiased estimate of the all-outputs distance, as one noise sample a step is of the noisy
    loss; "all" computes every output's Jacobian: ten backward passes with a graph, about five
    times the cost of a one-output Jacobian step, ``benchmarks/README.md``). The package's :func:`~jkt_lab.losses.activation_loss` and
    :func:`~jkt_lab.losses.jacobian_loss` both sum over outputs (no 1/2) and average over the
    batch, and noise and Jacobian are both in pixel units, so the constant is exactly sigma^2:
    ``activation_weight = a`` and ``jacobian_weight = a * sigma^2`` make the two objectives agree
    term by term. ``a = 0.1`` is the package's activation weight; at ``a = 1`` on shapes (lr 0.05)
    both students stalled in a probe of 60 steps and the noise student's loss reached 1e17. The
    standard teacher, the larger ``per_class``; the configs carry ``sigma`` (the noise method's;
    unused by the other) so the two are grouped by it.
    """
    s = setup(s)
    sigmas = s.equivalence_sigmas if sigmas is None else tuple(sigmas)
    seeds = s.seeds if seeds is None else tuple(seeds)
    base = teacher_configs(s)["standard"].replace(per_class=s.select_per_class, activation_weight=activation_weight)
    out = []
    for sigma in sigmas:
        sigma = float(sigma)
        pair = {EQUIVALENCE[0]: dict(method="noise", noise_loss="squared", n_samples=1),
                EQUIVALENCE[1]: dict(method="activations+jacobian", jacobian_kind="squared",
                                     jacobian_output=jacobian_output, jacobian_weight=activation_weight * sigma ** 2)}
        for variant, changes in pair.items():
            for seed in seeds:
                out.append(_tag(base, "equivalence", teacher="standard", variant=variant)
                           .replace(sigma=sigma, seed=seed, **changes))
    return _quick(out, quick)


def _outputs(model, x):
    model.eval()
    with torch.no_grad():
        logits = model(x)
    return logits, input_jacobian(model, x)


def _relative_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """``sqrt(mean ||a - b||^2 / mean (||a||^2 + ||b||^2) / 2)`` over examples: 0 for equal
    values, about 1.41 for unrelated ones of equal size."""
    a, b = a.flatten(1).double(), b.flatten(1).double()
    scale = 0.5 * (a.pow(2).sum(1).mean() + b.pow(2).sum(1).mean())
    return float(((a - b).pow(2).sum(1).mean() / scale.clamp_min(1e-300)).sqrt())


def _pairs_record(configs: Sequence[Config], store: ResultStore, device, progress) -> dict:
    """Pairwise distances between the students of one sigma, on the first PROBE test images."""
    outputs, records = {}, {}
    x = None
    for c in configs:
        model, record = trained_student(c, store=store, device=device, progress=progress)
        if x is None:
            x = load_data(c).x_test[:PROBE].to(next(model.parameters()).device)
        outputs[record["key"]] = _outputs(model, x)
        records[record["key"]] = (c, record)
    pairs = []
    for ka, kb in itertools.combinations(outputs, 2):
        (ca, ra), (cb, rb) = records[ka], records[kb]
        va, vb = ca.extra["variant"], cb.extra["variant"]
        pairs.append({"a": ka, "b": kb, "kind": "cross" if va != vb else va, "same_seed": ca.seed == cb.seed,
                      "logit_distance": _relative_distance(outputs[ka][0], outputs[kb][0]),
                      "jacobian_distance": _relative_distance(outputs[ka][1], outputs[kb][1]),
                      "test_acc_difference": abs(ra["metrics"]["test_acc"] - rb["metrics"]["test_acc"]),
                      "robust_acc_difference": abs(ra["metrics"]["noise_acc"][f"{SELECT_SIGMA:g}"]
                                                   - rb["metrics"]["noise_acc"][f"{SELECT_SIGMA:g}"])})
    return {"pairs": pairs, "n_probe": int(x.shape[0])}


def equivalence_in_training(store: str | Path | ResultStore, s: str | Setup = "shapes",
                            sigmas: Iterable[float] | None = None, *, activation_weight: float = 0.1,
                            jacobian_output: str = "random", quick: bool = False, device="auto", progress: bool = True,
                            log=print) -> list[dict]:
    """Train the students of :func:`equivalence_configs` (skipping those in ``store``), measure
    every pair's distance on test images (logits and all-output input Jacobians, relative; test
    accuracy and accuracy at :data:`SELECT_SIGMA`), store one record per sigma, and return
    :func:`equivalence_table` of them.

    Pairs of different methods and *different* seeds are compared with pairs of the same method
    and different seeds (the noise floor): the trainings agree on a quantity when the mean
    cross-method distance is at most the larger of the two methods' mean seed-to-seed distance.
    """
    store = store if isinstance(store, ResultStore) else ResultStore(store)
    configs = equivalence_configs(s, sigmas, activation_weight=activation_weight, jacobian_output=jacobian_output,
                                  quick=quick)
    todo = [c for c in configs if not store.done(c.to_dict())]
    log(f"equivalence in training: {len(configs)} runs, {len(configs) - len(todo)} already done")
    for i, c in enumerate(todo):
        log(f"  [{i + 1}/{len(todo)}] {c.extra['variant']}, sigma={c.sigma:g}, seed={c.seed}")
        run(c, store=store, device=device, progress=progress)
    by_sigma: dict[float, list[Config]] = {}
    for c in configs:
        by_sigma.setdefault(c.sigma, []).append(c)
    for sigma, group in by_sigma.items():
        conf = {"extra": {"experiment": EXPERIMENT, "part": "equivalence-pairs", **({"quick": True} if quick else {})},
                "dataset": group[0].dataset, "sigma": sigma, "runs": sorted(config_hash(c.to_dict()) for c in group)}
        if not store.done(conf):
            store.append({"config": conf, "metrics": _pairs_record(group, store, device, progress)})
    return equivalence_table(store.records())


def _agreement(pairs: list[dict], quantity: str) -> tuple[float | None, float | None]:
    cross = [p[quantity] for p in pairs if p["kind"] == "cross" and not p["same_seed"]]
    floors = [statistics.fmean(v) for kind in EQUIVALENCE
              if (v := [p[quantity] for p in pairs if p["kind"] == kind])]
    if not cross or not floors:
        return None, None
    return statistics.fmean(cross), max(floors)


QUANTITIES = {"logit_distance": "logits", "jacobian_distance": "Jacobians", "test_acc_difference": "test acc",
              "robust_acc_difference": f"acc at sigma={SELECT_SIGMA:g}"}


def equivalence_table(records: Sequence[Mapping]) -> list[dict]:
    """One row per sigma from the stored equivalence records: each method's test accuracy and
    accuracy at :data:`SELECT_SIGMA` (%, mean ± std over seeds); for each quantity the mean
    cross-method distance (different seeds) / the noise floor (the larger mean seed-to-seed
    distance of one method); and which quantities agree within the floor."""
    by_key = {r["key"]: r for r in records if "key" in r}
    rows = []
    for rec in sorted(_of(records, "equivalence-pairs"), key=lambda r: r["config"]["sigma"]):
        runs = [by_key[k] for k in rec["config"]["runs"] if k in by_key]
        row = {"sigma": rec["config"]["sigma"]}
        for variant in EQUIVALENCE:
            mine = [r for r in runs if lookup(r, "config.extra.variant") == variant]
            short = variant.split(" ")[0]
            row[f"{short} test acc"] = _pct([lookup(r, "metrics.test_acc") for r in mine])
            row[f"{short} acc at sigma={SELECT_SIGMA:g}"] = _pct(
                [(lookup(r, "metrics.noise_acc") or {}).get(f"{SELECT_SIGMA:g}") for r in mine])
        agree = []
        for quantity, label in QUANTITIES.items():
            cross, floor = _agreement(rec["metrics"]["pairs"], quantity)
            scale = 100 if "acc" in quantity else 1
            row[f"{label}: cross / floor"] = (f"{scale * cross:.3g} / {scale * floor:.3g}"
                                              if cross is not None else "")
            if cross is not None and cross <= floor:
                agree.append(label)
        row["agree within the floor"] = ", ".join(agree) if agree else "none"
        rows.append(row)
    return rows
