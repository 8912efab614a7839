"""What the notebooks share: the course's configs (quick-mode aware), its results store, the
committed results, the trained models, and a tool that strips outputs from notebooks.

    python -m jkt_lab.nbtools notebooks/*.ipynb           # strip outputs in place
    python -m jkt_lab.nbtools --check notebooks/*.ipynb   # exit 1 if any notebook has outputs

The notebooks keep no logic of their own: every setting they use comes from here, so the
widgets, the tests and the notebooks run the same experiments. Quick mode (``JKT_LAB_QUICK=1``,
:func:`jkt_lab.config.quick_mode`) shrinks them with :func:`jkt_lab.experiments.quick_config`.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from .config import Config, quick_mode

__all__ = ["COURSE_DATASETS", "CIFAR10_TRANSFER", "course_dataset", "course_config", "transfer_config",
           "indoor67_config", "course_summary", "course_store", "committed_results", "committed_robustness",
           "committed_distillation", "reference_time", "data_source", "panel_config", "one_per_class", "PANEL_ROWS", "trained_models", "toy_pair", "transfer_label", "run_online_transfer", "DISTILLATION_METHODS", "TRANSFER_RUNS", "CIFAR10_COURSE", "CIFAR10_TRANSFER",
           "strip_outputs", "notebook_outputs", "main"]

#: The students compared in notebooks 02-04 (Section 5 of the paper: few-shot distillation).
DISTILLATION_METHODS = ("ce", "kd", "kd+jacobian")

#: The transfer-learning runs of notebook 05: label -> Config changes (Section 4.3).
TRANSFER_RUNS = {
    "ce (scratch)": {"method": "ce", "init": "scratch"},
    "ce (fine-tune)": {"method": "ce", "init": "finetune"},
    "lwf": {"method": "lwf", "init": "finetune"},
    "at": {"method": "at", "init": "scratch"},
    "at+jacobian": {"method": "at+jacobian", "init": "scratch"},
}

_REPO_ROOT = Path(__file__).resolve().parents[1]

#: The course's kd+jacobian on CIFAR-10 at its 300 steps: the weight chosen on the validation split
#: by ``jkt-lab reproduce --scale cpu`` (results/cifar10-cpu, select runs at 300 steps, seed 10: weight
#: 100 reached 41.5% validation accuracy, 10 reached 34.5%, 1 reached 29.7%; kd's best 31.9%).
CIFAR10_COURSE = {"jacobian_weight": 100.0}

#: Notebook 05 on CIFAR-10: fewer steps than distillation (300 steps of the five runs took 182 s a
#: seed on 2 idle cores, 200 fit three seeds in the notebook's 10 minutes) and fewer history rows;
#: the attention-transfer weights chosen on validation by the same reproduce run (attention_weight
#: 50 on the mean over positions, then the attention-Jacobian weight 0.1).
CIFAR10_TRANSFER = {"steps": 200, "eval_every": 100, "attention_weight": 50.0, "jacobian_weight": 0.1}


def _sized(config: Config, quick: bool | None) -> Config:
    from .experiments import quick_config
    return quick_config(config) if (quick_mode() if quick is None else quick) else config


#: The datasets the course runs on: the embedded shapes, or real CIFAR-10 with the shipped teachers.
COURSE_DATASETS = ("shapes", "cifar10")


def course_dataset(quick: bool | None = None) -> str:
    """The dataset of notebooks 02-05: ``$JKT_LAB_COURSE_DATASET`` when set (``shapes`` or
    ``cifar10``); else ``cifar10`` when CIFAR-10 is on this machine (torchvision's folder or the
    JPEG zip, :func:`jkt_lab.data.cifar10_available`) and not in quick mode; else ``shapes``."""
    chosen = os.environ.get("JKT_LAB_COURSE_DATASET", "").strip()
    if chosen:
        if chosen not in COURSE_DATASETS:
            raise ValueError(f"JKT_LAB_COURSE_DATASET must be one of {', '.join(COURSE_DATASETS)}, got {chosen!r}")
        return chosen
    if quick_mode() if quick is None else quick:
        return "shapes"   # quick mode checks that the code runs: the embedded data, at toy size
    from .data import cifar10_available
    return "cifar10" if cifar10_available() is not None else "shapes"


def course_config(quick: bool | None = None, dataset: str | None = None, **changes) -> Config:
    """The course's distillation setting: ``kd+jacobian`` students at 10 images per class, 300 steps.

    * ``cifar10``: the shipped ten-class teacher (VGG-9 width 32, ``jkt_lab.pretrained``) and
      VGG-4 width-16 students, the settings of ``jkt-lab reproduce --scale cpu``
      (:func:`jkt_lab.reproduce.base_config`), ``jacobian_weight`` 100 (:data:`CIFAR10_COURSE`,
      chosen on validation), a history row every 50 steps;
    * ``shapes``: a tiny CNN teacher (width 32, 8 epochs of batches of 64 on 4000 generated
      images) and tiny students (width 8).

    ``dataset`` defaults to :func:`course_dataset`. In quick mode (default: ``quick_mode()``)
    the same run at toy size."""
    dataset = course_dataset(quick) if dataset is None else dataset
    if dataset == "cifar10":
        from .reproduce import base_config
        base = base_config("cifar10", "cpu").replace(per_class=10, steps=300, method="kd+jacobian", seed=0,
                                                     eval_every=50, **CIFAR10_COURSE)
    elif dataset == "shapes":
        base = Config(dataset="shapes", n_train=4000, n_test=1000, teacher="tiny", teacher_width=32, teacher_epochs=8,
                      teacher_batch_size=64, student="tiny", student_width=8, per_class=10, steps=300, batch_size=64,
                      lr=0.05, method="kd+jacobian", seed=0)
    else:
        raise ValueError(f"dataset must be one of {', '.join(COURSE_DATASETS)}, got {dataset!r}")
    return _sized(base, quick).replace(**changes)


#: About this many history rows in a run made from a panel: its live curve gets a point every
#: few seconds (a row evaluates the validation images and two small Jacobian probes).
PANEL_ROWS = 12


def panel_config(config: Config) -> Config:
    """``config`` with ``eval_every`` (in epochs) set for about :data:`PANEL_ROWS` history rows,
    so that a panel's live training curve is a curve, not two or three points; unchanged when the
    number of training images is not known from the config (``per_class`` and the classes)."""
    import math
    from .data import SHAPE_CLASSES
    n_classes = len(config.classes) if config.classes else {"cifar10": 10, "shapes": len(SHAPE_CLASSES)}.get(
        config.dataset)
    if not config.steps or not config.per_class or not n_classes:
        return config
    n_train = config.per_class * n_classes
    n_epochs = math.ceil(config.steps / math.ceil(n_train / min(config.batch_size, n_train)))
    return config.replace(eval_every=max(1, n_epochs // PANEL_ROWS))


def one_per_class(labels, n: int):
    """Indices of the first example of each class, in class order, for at most ``n`` classes (a
    test set sorted by class gives its first ``n`` images all of one class)."""
    import torch
    labels = torch.as_tensor(labels)
    picks = [int(torch.nonzero(labels == c)[0]) for c in sorted(set(labels.tolist()))]
    return torch.tensor(picks[:n], dtype=torch.long)


def transfer_config(quick: bool | None = None, dataset: str | None = None, **changes) -> Config:
    """Offline transfer (Section 4.3): the teacher (source) learned classes 0-4 from all their
    images, the student (target) learns classes 5-9 from ``per_class`` images each. On
    ``cifar10`` the teacher is the shipped ``cifar10-source`` (VGG-9 width 24)."""
    dataset = course_dataset(quick) if dataset is None else dataset
    base = course_config(quick=False, dataset=dataset).replace(teacher_classes=(0, 1, 2, 3, 4),
                                                               classes=(5, 6, 7, 8, 9), method="at+jacobian")
    if base.dataset == "cifar10":
        from .reproduce import SCALES
        base = base.replace(**SCALES["cpu"].transfer_teacher, **CIFAR10_TRANSFER)
    return _sized(base, quick).replace(**changes)


def indoor67_config(**changes) -> Config:
    """The paper's online transfer: ImageNet-pretrained ResNet-34 (source, used as it is) to
    MIT Indoor-67 (target); ``results/specs/indoor67_transfer.yaml`` is the same run as a sweep."""
    # The student architecture and optimisation settings are this course's choice, not the paper's.
    base = Config(dataset="indoor67", teacher="resnet34", teacher_pretrained=True, teacher_epochs=0,
                  student="resnet18", per_class=None, method="at+jacobian", epochs=30, batch_size=64, lr=0.01)
    return base.replace(**changes)


def transfer_label(record) -> str:
    """The :data:`TRANSFER_RUNS` label of a record (or config dict): method plus initialisation."""
    config = record.get("config", record)
    for label, changes in TRANSFER_RUNS.items():
        if all(config.get(k) == v for k, v in changes.items()):
            return label
    return f"{config.get('method')} ({config.get('init')})"


def toy_pair(activation: str = "tanh", n_inputs: int = 10, n_outputs: int = 5, n_examples: int = 16):
    """The small teacher/student MLPs and inputs of notebook 01 (float64): ``(teacher, student, x)``.

    The teacher has two hidden layers of 32, the student one of 16; ``activation`` "tanh" (smooth)
    or "relu" (piecewise linear)."""
    import torch
    from .theory import make_mlp
    teacher = make_mlp(n_inputs, n_outputs, (32, 32), activation, seed=1)
    student = make_mlp(n_inputs, n_outputs, (16,), activation, seed=2)
    x = torch.randn(n_examples, n_inputs, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return teacher, student, x


def run_online_transfer(store: str | Path | None = None, *, device="auto", progress: bool = True) -> dict | None:
    """Run :func:`indoor67_config` when MIT Indoor-67 and the pretrained teacher are available;
    otherwise say in one sentence what is missing, give the command that runs it, and return None."""
    from . import data as data_mod
    from .experiments import run
    config = indoor67_config()
    print(f"{config.teacher} (ImageNet) -> {config.student} on {config.dataset}, method {config.method}")
    try:
        data_mod.load("indoor67")
    except data_mod.DataNotFoundError:
        print(f"not run here: MIT Indoor-67 is not in {data_mod.data_root() / 'indoor67'} "
              f"(download it from {data_mod.INDOOR67_URL}). Where it is, run:\n"
              "  jkt-lab sweep results/specs/indoor67_transfer.yaml --store results/indoor67_transfer.jsonl")
        return None
    record = run(config, store=course_store() if store is None else store, device=device, progress=progress)
    print(f"{config.method}: target test accuracy {100 * record['metrics']['test_acc']:.1f}%")
    return record


def course_store() -> Path:
    """The notebooks' results file: ``<runs_dir()>/course_results.jsonl`` (``JKT_LAB_RUNS``)."""
    from .experiments import runs_dir
    return runs_dir() / ("course_results_quick.jsonl" if quick_mode() else "course_results.jsonl")


def committed_results(folder: str | Path | None = None) -> list[dict]:
    """Records of every ``*.jsonl`` file in the repository's ``results/`` folder (or ``folder``);
    an empty list when there are none (nothing committed yet, or an installed package)."""
    from .results import ResultStore
    folder = Path(folder) if folder is not None else _REPO_ROOT / "results"
    if not folder.is_dir():
        return []
    records: list[dict] = []
    for path in sorted(folder.glob("*.jsonl")):
        records += ResultStore(path).records()
    return records


def committed_robustness(dataset: str = "shapes") -> list[dict]:
    """Records of the committed robustness experiment on ``dataset``
    (``results/robustness-<dataset>/``; ``jkt-lab robustness``), or an empty list."""
    return committed_results(_REPO_ROOT / "results" / f"robustness-{dataset}")


#: Where the committed few-shot distillation results of each course dataset lie, under ``results/``.
_COMMITTED_DISTILLATION = {"cifar10": "cifar10-cpu", "shapes": "."}


def committed_distillation(dataset: str) -> list[dict]:
    """Records of the committed few-shot distillation runs on ``dataset``: for ``cifar10``
    ``results/cifar10-cpu/`` (``jkt-lab reproduce --dataset cifar10 --scale cpu``; its
    distillation part, not the selection or transfer runs), for ``shapes`` ``results/*.jsonl``;
    an empty list when there are none."""
    if dataset not in _COMMITTED_DISTILLATION:
        raise ValueError(f"dataset must be one of {', '.join(_COMMITTED_DISTILLATION)}, got {dataset!r}")
    records = committed_results(_REPO_ROOT / "results" / _COMMITTED_DISTILLATION[dataset])
    return [r for r in records if r.get("config", {}).get("dataset") == dataset
            and r["config"].get("extra", {}).get("part") in (None, "distillation")]


#: The settings that decide what a training step costs (with the device): runs that share them
#: take about the same time a step, whatever their seed, weights or per_class.
_COST_KEYS = ("dataset", "method", "init", "student", "student_width", "teacher", "teacher_width", "batch_size",
              "jacobian_output", "n_samples", "n_train")


@functools.lru_cache(maxsize=1)
def _timed_records() -> tuple:
    """(cost signature, train seconds a step, the rest of the run in seconds) of every committed
    run on a CPU that recorded its training time (``results/**/*.jsonl``)."""
    from .results import ResultStore
    out = []
    for path in sorted((_REPO_ROOT / "results").glob("**/*.jsonl")):
        for r in ResultStore(path).records():
            c, train_s = r.get("config") or {}, (r.get("extra") or {}).get("train_wall_time_s")
            steps = (r.get("metrics") or {}).get("steps") or c.get("steps")
            if train_s and steps and r.get("wall_time_s") and str(r.get("device", "")).startswith("cpu"):
                out.append((tuple(json.dumps(c.get(k)) for k in _COST_KEYS), train_s / steps,
                            max(r["wall_time_s"] - train_s, 0.0)))
    return tuple(out)


def reference_time(config: Config) -> dict | None:
    """What a run of ``config`` took when the committed results were made (``results/``; CPU runs
    on 2 idle cores): ``{"step_s", "run_s", "n"}`` (median seconds a training step, seconds of
    the whole run at ``config.steps``, how many committed runs of the same cost signature: method,
    initialisation, models, batch size, Jacobian output). None when no committed run shares it."""
    import statistics
    key = tuple(json.dumps(getattr(config, k)) for k in _COST_KEYS)
    same = [(step, rest) for sig, step, rest in _timed_records() if sig == key]
    if not same or not config.steps:
        return None
    step = statistics.median(s for s, _ in same)
    return {"step_s": step, "run_s": step * config.steps + statistics.median(r for _, r in same), "n": len(same)}


def data_source(dataset: str) -> str | None:
    """Where the course's ``dataset`` comes from, in one plain sentence (None for the embedded
    shapes). For CIFAR-10 loaded from the JPEG copy, the library's warning about it
    (:class:`jkt_lab.data.cifar.JpegFallbackWarning`) is silenced from here on: this sentence
    says it once, in place of a warning in every cell that loads the data."""
    import warnings
    if dataset != "cifar10":
        return None
    from .data import cifar10_available
    from .data.cifar import JpegFallbackWarning
    where = cifar10_available()
    if where is None:
        return "data: CIFAR-10 is not on this machine yet (the first load downloads it, when online)"
    if where.is_dir():
        return f"data: CIFAR-10 from torchvision's files (the folder {where.name})"
    warnings.filterwarnings("ignore", category=JpegFallbackWarning)
    return (f"data: CIFAR-10 from {where.name}, a JPEG copy of the dataset (torchvision's files are not on this "
            "machine); JPEG moves each pixel by 5.8 grey levels of 255 on average (measured by the copy's "
            "makers), so numbers can differ a little from runs on the original images")


def course_summary(config: Config, quick: bool | None = None) -> str:
    """The lines a notebook prints first: quick or full mode, the dataset and why it is the one,
    the teacher (shipped or trained here) and the students."""
    from .pretrained import shipped_for
    quick = quick_mode() if quick is None else quick
    if os.environ.get("JKT_LAB_COURSE_DATASET", "").strip():
        why = "set by JKT_LAB_COURSE_DATASET"
    elif config.dataset == "cifar10":
        why = "CIFAR-10 is on this machine; JKT_LAB_COURSE_DATASET=shapes chooses the embedded set"
    elif quick:
        why = "quick mode always uses the embedded set"
    elif course_dataset(quick) == "shapes":
        why = ("CIFAR-10 is not on this machine (torchvision's folder or cifar10-jpeg.zip); "
               "JKT_LAB_COURSE_DATASET=cifar10 asks for it")
    else:
        why = "the embedded set"
    shipped = shipped_for(config.teacher_config())
    teacher = f"the shipped teacher '{shipped}'" if shipped else "trained here once, then cached"
    source = data_source(config.dataset)
    return "\n".join([
        "quick mode: tiny sizes, accuracies near chance" if quick else "full mode",
        f"dataset {config.dataset} ({why})", *([source] if source else []),
        f"teacher {config.teacher} (width {config.teacher_width}): {teacher}",
        f"students {config.student} (width {config.student_width}), {config.per_class} images per class, "
        f"{config.steps} steps"])


def trained_models(config: Config | None = None, methods: Sequence[str] = DISTILLATION_METHODS, *,
                   store: str | Path | None = None, device="cpu", progress: bool = False):
    """The teacher and one trained student per method (loaded when run before, else trained).

    Returns ``(models, records)``: ``{"teacher": ..., method: student, ...}`` in eval mode and
    ``{method: record}``.
    """
    from .experiments import get_teacher, trained_student
    config = config or course_config()
    store = course_store() if store is None else store
    teacher, info = get_teacher(config, device=device, progress=progress)
    models, records = {"teacher": teacher.eval()}, {}
    for method in methods:
        student, record = trained_student(config.replace(method=method), store=store, device=device,
                                          progress=progress)
        models[method], records[method] = student.eval(), record
    return models, records


# --------------------------------------------------------------------------- notebook outputs


def notebook_outputs(path: str | Path) -> list[int]:
    """Indices of the code cells that hold outputs or an execution count."""
    nb = json.loads(Path(path).read_text(encoding="utf-8"))
    return [i for i, c in enumerate(nb.get("cells", [])) if c.get("cell_type") == "code"
            and (c.get("outputs") or c.get("execution_count") is not None)]


def strip_outputs(path: str | Path) -> bool:
    """Remove outputs, execution counts and saved widget state from a notebook, in place.
    Returns True when the file changed."""
    import nbformat
    path = Path(path)
    before = path.read_text(encoding="utf-8")
    nb = nbformat.reads(before, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        for key in ("execution", "collapsed", "scrolled"):
            cell.metadata.pop(key, None)
    nb.metadata.pop("widgets", None)
    after = nbformat.writes(nb) + "\n"
    if after != before:
        path.write_text(after, encoding="utf-8")
        return True
    return False


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jkt_lab.nbtools",
                                     description="Strip outputs from notebooks (or --check that none have any).")
    parser.add_argument("notebooks", nargs="+", help=".ipynb files")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a notebook has outputs")
    args = parser.parse_args(None if argv is None else list(argv))
    status = 0
    for name in args.notebooks:
        if args.check:
            cells = notebook_outputs(name)
            if cells:
                print(f"{name}: outputs in code cells {cells}")
                status = 1
        elif strip_outputs(name):
            print(f"stripped {name}")
    return status


if __name__ == "__main__":
    sys.exit(main())
