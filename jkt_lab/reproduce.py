"""The paper's three experiments as one resumable pipeline (``jkt-lab reproduce``).

1. Distillation with few data (Table 1): a VGG teacher, a smaller VGG student, ``per_class`` in
   {1, 5, 10, 50, 100, 500, all}; variants ce, kd, kd + normalised top-1 Jacobian (the
   paper's), kd + squared-error Jacobian (Sobolev), distillation with input noise, kd +
   random-projection Jacobian; 3 seeds.
2. Robustness: every student of part 1 is evaluated under Gaussian input noise
   (``metrics.noise_acc``, sigma in {0, 0.02, 0.05, 0.1, 0.2}).
3. Transfer (offline form of the MIT Scenes experiment): a teacher trained on classes 0-4, a
   few-shot target task on classes 5-9; fine-tuning, LwF, attention transfer and attention
   transfer + attention-map Jacobians, from the teacher and from scratch; 3 seeds.

jacobian_weight, sigma and temperature are chosen on the validation split (``select`` part,
at one ``per_class``, seed 0), never on test. Every run goes to one results store, so the
pipeline can stop and resume anywhere. ``quick=True`` runs the same grid at toy size.
"""
from __future__ import annotations

import itertools
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .analysis.claims import CONTROLS  # the control variants, named once where the claims judge them
from .config import Config
from .experiments import get_teacher, quick_config, run
from .results import ResultStore, config_hash, lookup

__all__ = ["PARTS", "SCALES", "Scale", "PER_CLASS", "TRANSFER_PER_CLASS", "SEEDS", "base_config", "selection_configs",
           "distillation_configs", "transfer_configs", "select", "reproduce"]

PARTS = ("select", "distillation", "transfer")
SEEDS = (0, 1, 2)
SELECT_SEED = 10  # the selection runs' seed: never one of the final SEEDS (a final run is not its own selection)
SELECT_PER_CLASS = 10
SELECTION = {  # variant -> grid searched on the validation split (the product of its lists)
    "kd": {"temperature": [2.0, 4.0, 8.0]},
    # the control "is kd just under-regularised?": kd reaches 100% training accuracy at <= 10 per class
    "kd (regularised)": {"weight_decay": [5e-4, 5e-3, 2e-2], "label_smoothing": [0.0, 0.1]},
    "kd+jacobian": {"jacobian_weight": [1.0, 10.0, 30.0, 100.0]},
    "kd+jacobian (squared)": {"jacobian_weight": [0.01, 0.1, 1.0, 10.0]},
    "kd+jacobian (random)": {"jacobian_weight": [1.0, 10.0, 30.0, 100.0]},
    "kd+jacobian_norm": {"jacobian_weight": [0.001, 0.01, 0.1, 1.0]},
    "kd+jacobian (untrained)": {"jacobian_weight": [1.0, 10.0, 30.0, 100.0]},
    "kd+jacobian (shuffled)": {"jacobian_weight": [1.0, 10.0, 30.0, 100.0]},
    "noise": {"sigma": [0.02, 0.05, 0.1]},
    # transfer: beta/2 of Zagoruyko & Komodakis is 500 (losses.attention_transfer_loss); then the
    # attention-Jacobian weight, on top of the chosen attention_weight (selected second)
    "at": {"attention_weight": [50.0, 500.0, 5000.0]},
    "at+jacobian": {"jacobian_weight": [0.1, 1.0, 10.0]},
}
TRANSFER_SELECTION = ("at", "at+jacobian")   # selected on the transfer task (fine-tuned), in this order
_NORMALISED_TOP1 = {"jacobian_kind": "normalized", "jacobian_output": "top1"}
DISTILLATION = {  # variant -> (method, config changes)
    "ce": ("ce", {}),
    "kd": ("kd", {}),
    "kd (regularised)": ("kd", {}),
    "kd+jacobian": ("kd+jacobian", _NORMALISED_TOP1),
    "kd+jacobian (squared)": ("kd+jacobian", {"jacobian_kind": "squared", "jacobian_output": "top1"}),
    "kd+jacobian (random)": ("kd+jacobian", {"jacobian_kind": "normalized", "jacobian_output": "random"}),
    "noise": ("noise", {"n_samples": 1}),
    # controls (Section 4 of the [science] issue): no teacher Jacobian, an untrained network's, another example's
    "kd+jacobian_norm": ("kd+jacobian_norm", {"jacobian_output": "top1"}),
    "kd+jacobian (untrained)": ("kd+jacobian", {**_NORMALISED_TOP1, "jacobian_source": "untrained"}),
    "kd+jacobian (shuffled)": ("kd+jacobian", {**_NORMALISED_TOP1, "jacobian_source": "shuffled"}),
}
TRANSFER = {
    "fine-tune (ce)": ("ce", "finetune"),
    "lwf": ("lwf", "finetune"),
    "at (fine-tune)": ("at", "finetune"),
    "at+jacobian (fine-tune)": ("at+jacobian", "finetune"),
    "scratch (ce)": ("ce", "scratch"),
    "at (scratch)": ("at", "scratch"),
    "at+jacobian (scratch)": ("at+jacobian", "scratch"),
}


@dataclass(frozen=True)
class Scale:
    """How big the experiments are: the base config, the grid's ``per_class`` values and variants.

    ``gpu`` is the paper's scale (VGG-9 width 64 teacher trained here). ``cpu`` fits a 2-core
    laptop: its teachers are the ones shipped with the package (``jkt_lab.pretrained``:
    ``cifar10`` and, for transfer, ``cifar10-source``), so only students are trained.
    """

    name: str
    base: dict
    per_class: tuple
    transfer_per_class: tuple
    variants: tuple[str, ...]
    transfer_teacher: dict = field(default_factory=dict)
    select_steps: tuple[int, ...] = ()   # step budgets searched with each distillation variant's grid


SCALES = {
    "gpu": Scale("gpu", dict(teacher="vgg9", teacher_width=64, teacher_epochs=30, student="vgg4", student_width=32,
                             batch_size=128, lr=0.05, weight_decay=5e-4, epochs=30, steps=1500, temperature=4.0,
                             jacobian_weight=1.0, sigma=0.05, attention_weight=100.0),
                 per_class=(1, 5, 10, 50, 100, 500, None), transfer_per_class=(5, 10, 25, 50, 100, None),
                 variants=tuple(DISTILLATION)),
    # the shipped teachers' configs: vgg9 width 32 (ten classes) and width 24 (classes 0-4), 30 epochs.
    # Sized by `jkt-lab reproduce --scale cpu --estimate` on 2 idle cores: a history row (validation
    # accuracy and Jacobian probes) costs more than 20 steps, so rows come every 100 epochs (1 to 3
    # a run, the last always), and the transfer grid has two sizes (its at+jacobian steps cost 10x kd's).
    "cpu": Scale("cpu", dict(teacher="vgg9", teacher_width=32, teacher_epochs=30, student="vgg4", student_width=16,
                             batch_size=64, lr=0.05, weight_decay=5e-4, steps=300, n_test=2000, temperature=4.0,
                             jacobian_weight=1.0, sigma=0.05, attention_weight=100.0, eval_every=100),
                 per_class=(1, 5, 10, 50, 100, 500), transfer_per_class=(5, 50),
                 variants=("ce", "kd", "kd+jacobian", "kd+jacobian (squared)", "noise") + CONTROLS,
                 transfer_teacher=dict(teacher_width=24),
                 # 300 steps leave kd+jacobian's teacher-student cosine near kd's (0.03-0.08 vs 0.01-0.05,
                 # the 2026-11 runs): the step budget is searched too, on validation, for every variant
                 select_steps=(300, 1000)),
}
# the paper's scale (kept as module constants: the GPU grid)
PER_CLASS = SCALES["gpu"].per_class
TRANSFER_PER_CLASS = SCALES["gpu"].transfer_per_class


def _scale(scale: str | Scale) -> Scale:
    if isinstance(scale, Scale):
        return scale
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {', '.join(SCALES)}, got {scale!r}")
    return SCALES[scale]


def base_config(dataset: str = "cifar10", scale: str | Scale = "gpu") -> Config:
    """The settings every run of ``scale`` shares: VGG-9 teacher, VGG-4 student, 32x32 inputs."""
    return Config(dataset=dataset, **_scale(scale).base)


def _variant(config: Config, name: str, part: str, **changes) -> Config:
    return config.replace(**changes, extra={**config.extra, "variant": name, "part": part})


def _maybe_quick(configs: Iterable[Config], quick: bool) -> list[Config]:
    if not quick:
        return list(configs)
    unique = {}
    for c in configs:
        q = quick_config(c)
        unique.setdefault(config_hash(q.to_dict()), q)
    return list(unique.values())


def _selected(scale: Scale) -> list[str]:
    """The variants whose settings this scale chooses on validation, in selection order."""
    return [name for name in SELECTION if name in scale.variants or name in TRANSFER_SELECTION]


def _grid(name: str, scale: Scale) -> dict[str, list]:
    """The variant's grid at this scale: its own settings, and the step budgets for distillation."""
    if name in TRANSFER_SELECTION or not scale.select_steps:
        return SELECTION[name]
    return {**SELECTION[name], "steps": list(scale.select_steps)}


def _points(grid: dict[str, list]) -> list[dict]:
    return [dict(zip(grid, values)) for values in itertools.product(*grid.values())]


def selection_configs(base: Config, quick: bool = False, scale: str | Scale = "gpu",
                      chosen: dict | None = None) -> list[Config]:
    """The validation runs: each variant's grid at ``per_class`` = 10, seed :data:`SELECT_SEED`.

    ``at+jacobian`` is searched on top of the ``attention_weight`` chosen for ``at`` (``chosen``,
    from :func:`select`), so it appears only once ``at`` has been chosen."""
    scale = _scale(scale)
    chosen = chosen or {}
    out = []
    for name in _selected(scale):
        if name in TRANSFER_SELECTION:
            method = name
            if name == "at+jacobian":
                if "at" not in chosen:
                    continue
                method_changes = _apply(chosen, "at")
            else:
                method_changes = {}
            c0 = _variant(_transfer_base(base, scale), name, "select", method=method, init="finetune",
                          per_class=SELECT_PER_CLASS, seed=SELECT_SEED, **method_changes)
        else:
            method, changes = DISTILLATION[name]
            c0 = _variant(base, name, "select", method=method, per_class=SELECT_PER_CLASS, seed=SELECT_SEED,
                          **changes)
        out += [c0.replace(**point) for point in _points(_grid(name, scale))]
    return _maybe_quick(out, quick)


def select(store: ResultStore, base: Config, quick: bool = False, scale: str | Scale = "gpu") -> dict[str, dict]:
    """Best grid point per variant by validation accuracy (ties: the first in grid order), from
    the ``select`` runs in ``store``: ``{variant: {setting: value, ..., "val_acc": accuracy}}``."""
    scale = _scale(scale)
    chosen: dict[str, dict] = {}
    for _ in TRANSFER_SELECTION:  # at+jacobian's runs exist only once at is chosen
        for name in _selected(scale):
            best = None
            for c in selection_configs(base, quick, scale, chosen):
                if c.extra.get("variant") != name:
                    continue
                r = store.get(c.to_dict())
                acc = None if r is None else lookup(r, "metrics.val_acc")
                if acc is not None and (best is None or acc > best[0]):
                    best = (acc, {k: getattr(c, k) for k in _grid(name, scale)})
            if best is not None:
                chosen[name] = {**best[1], "val_acc": best[0]}
    return chosen


def _apply(chosen: dict, name: str) -> dict:
    return {k: v for k, v in chosen.get(name, {}).items() if k != "val_acc"}


def distillation_configs(base: Config, chosen: dict, quick: bool = False, scale: str | Scale = "gpu") -> list[Config]:
    scale = _scale(scale)
    out = []
    for per_class in scale.per_class:
        for name in scale.variants:
            method, changes = DISTILLATION[name]
            for seed in SEEDS:
                out.append(_variant(base, name, "distillation", method=method, per_class=per_class, seed=seed,
                                    **changes, **_apply(chosen, name)))
    return _maybe_quick(out, quick)


def _transfer_base(base: Config, scale: str | Scale = "gpu") -> Config:
    return base.replace(teacher_classes=(0, 1, 2, 3, 4), classes=(5, 6, 7, 8, 9), **_scale(scale).transfer_teacher)


def transfer_configs(base: Config, chosen: dict, quick: bool = False, scale: str | Scale = "gpu") -> list[Config]:
    scale = _scale(scale)
    out = []
    tb = _transfer_base(base, scale)
    for per_class in scale.transfer_per_class:
        for name, (method, init) in TRANSFER.items():
            extra = {"at": _apply(chosen, "at"), "at+jacobian": {**_apply(chosen, "at"), **_apply(chosen, "at+jacobian")}
                     }.get(method, {})
            for seed in SEEDS:
                out.append(_variant(tb, name, "transfer", method=method, init=init, per_class=per_class,
                                    seed=seed, **extra))
    return _maybe_quick(out, quick)


def reproduce(store: str | Path, *, dataset: str = "cifar10", parts: Iterable[str] = PARTS, quick: bool = False,
              device="auto", progress: bool = True, base: Config | None = None, scale: str | Scale = "gpu",
              executor=None) -> dict:
    """Run the parts in order (skipping finished runs) and return wall times by part (seconds).

    ``executor`` (a :class:`jkt_lab.cluster.RayExecutor`) runs the teachers and each part's runs on a
    cluster; by default they run here, one after another."""
    scale = _scale(scale)
    parts = list(parts)
    for p in parts:
        if p not in PARTS:
            raise ValueError(f"unknown part {p!r}; valid parts: {', '.join(PARTS)}")
    store = ResultStore(store)
    base = base or base_config(dataset, scale)
    times: dict[str, float] = {}

    def batch(name, configs):
        t0 = time.perf_counter()
        todo = [c for c in configs if not store.done(c.to_dict())]
        print(f"{name}: {len(configs)} runs, {len(configs) - len(todo)} already done", flush=True)
        if executor is not None:
            executor.run(todo, store)
        else:
            for i, c in enumerate(todo):
                if progress:
                    print(f"  [{i + 1}/{len(todo)}] {c.extra.get('variant')} per_class={c.per_class} seed={c.seed}",
                          flush=True)
                run(c, store=store, device=device, progress=progress)
        times[name] = times.get(name, 0.0) + time.perf_counter() - t0

    for label, conf in (("teacher", base), ("transfer teacher", _transfer_base(base, scale))):
        if label == "transfer teacher" and "transfer" not in parts:
            continue
        t0 = time.perf_counter()
        conf = quick_config(conf) if quick else conf
        if executor is not None:
            info = executor.teacher(conf)
            if info is None:  # failed on the cluster (reported there); its students fail and are listed too
                continue
        else:
            _, info = get_teacher(conf, device=device, progress=progress)
        times[label] = time.perf_counter() - t0
        print(f"{label}: test accuracy {100 * info['metrics']['test_acc']:.2f}% "
              f"(trained in {info['wall_time_s']:.0f} s on {info['device']})", flush=True)
    chosen = select(store, base, quick, scale)
    if "select" in parts:
        for _ in TRANSFER_SELECTION:  # a second round once at's attention_weight is chosen (at+jacobian's grid)
            batch("select", selection_configs(base, quick, scale, chosen))
            chosen = select(store, base, quick, scale)
    if chosen:
        print("chosen on the validation split: " +
              "; ".join(f"{k}: {_apply(chosen, k)}" for k in chosen), flush=True)
    if "distillation" in parts:
        batch("distillation", distillation_configs(base, chosen, quick, scale))
    if "transfer" in parts:
        batch("transfer", transfer_configs(base, chosen, quick, scale))
    return times
