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

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .config import Config
from .experiments import get_teacher, quick_config, run
from .results import ResultStore, config_hash, lookup

__all__ = ["PARTS", "SCALES", "Scale", "PER_CLASS", "TRANSFER_PER_CLASS", "SEEDS", "base_config", "selection_configs",
           "distillation_configs", "transfer_configs", "select", "reproduce"]

PARTS = ("select", "distillation", "transfer")
SEEDS = (0, 1, 2)
SELECT_PER_CLASS = 10
SELECTION = {  # variant -> grid searched on the validation split
    "kd": {"temperature": [2.0, 4.0, 8.0]},
    "kd+jacobian": {"jacobian_weight": [0.1, 1.0, 10.0]},
    "kd+jacobian (squared)": {"jacobian_weight": [0.1, 1.0, 10.0]},
    "kd+jacobian (random)": {"jacobian_weight": [0.1, 1.0, 10.0]},
    "noise": {"sigma": [0.02, 0.05, 0.1]},
    "at+jacobian": {"jacobian_weight": [0.1, 1.0, 10.0]},
}
DISTILLATION = {  # variant -> (method, config changes)
    "ce": ("ce", {}),
    "kd": ("kd", {}),
    "kd+jacobian": ("kd+jacobian", {"jacobian_kind": "normalized", "jacobian_output": "top1"}),
    "kd+jacobian (squared)": ("kd+jacobian", {"jacobian_kind": "squared", "jacobian_output": "top1"}),
    "kd+jacobian (random)": ("kd+jacobian", {"jacobian_kind": "normalized", "jacobian_output": "random"}),
    "noise": ("noise", {"n_samples": 1}),
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
                 variants=("ce", "kd", "kd+jacobian", "kd+jacobian (squared)", "noise"),
                 transfer_teacher=dict(teacher_width=24)),
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


def _selected(scale: Scale) -> dict:
    return {name: grid for name, grid in SELECTION.items() if name in scale.variants or name == "at+jacobian"}


def selection_configs(base: Config, quick: bool = False, scale: str | Scale = "gpu") -> list[Config]:
    """The validation runs: each variant's grid at ``per_class`` = 10, seed 0."""
    scale = _scale(scale)
    out = []
    for name, grid in _selected(scale).items():
        (key, values), = grid.items()
        if name == "at+jacobian":
            c0 = _variant(_transfer_base(base, scale), name, "select", method="at+jacobian", init="finetune",
                          per_class=SELECT_PER_CLASS, seed=0)
        else:
            method, changes = DISTILLATION[name]
            c0 = _variant(base, name, "select", method=method, per_class=SELECT_PER_CLASS, seed=0, **changes)
        out += [c0.replace(**{key: v}) for v in values]
    return _maybe_quick(out, quick)


def select(store: ResultStore, base: Config, quick: bool = False, scale: str | Scale = "gpu") -> dict[str, dict]:
    """Best value per variant by validation accuracy, from the ``select`` runs in ``store``."""
    scale = _scale(scale)
    chosen = {}
    for name, grid in _selected(scale).items():
        (key, _), = grid.items()
        best = None
        for c in selection_configs(base, quick, scale):
            if c.extra.get("variant") != name:
                continue
            r = store.get(c.to_dict())
            if r is None:
                continue
            acc = lookup(r, "metrics.val_acc")
            if acc is not None and (best is None or acc > best[0]):
                best = (acc, getattr(c, key))
        if best is not None:
            chosen[name] = {key: best[1], "val_acc": best[0]}
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
            extra = _apply(chosen, "at+jacobian") if method == "at+jacobian" else {}
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
        times[name] = time.perf_counter() - t0

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
    if "select" in parts:
        batch("select", selection_configs(base, quick, scale))
    chosen = select(store, base, quick, scale)
    if chosen:
        print("chosen on the validation split: " +
              "; ".join(f"{k}: {_apply(chosen, k)}" for k in chosen), flush=True)
    if "distillation" in parts:
        batch("distillation", distillation_configs(base, chosen, quick, scale))
    if "transfer" in parts:
        batch("transfer", transfer_configs(base, chosen, quick, scale))
    return times
