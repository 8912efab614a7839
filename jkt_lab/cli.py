"""The ``jkt-lab`` command. ``jkt-lab --help`` lists the subcommands; each has its own ``--help``."""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import os
import sys
import time
import types
import typing
from pathlib import Path

__all__ = ["main", "demo_configs", "demo_base_config", "demo_verdict", "option_groups"]

EPILOG = """examples:
  jkt-lab demo                          # the main job: teacher + ce/kd/kd+jacobian students on shapes
  jkt-lab check                         # the noise/Jacobian equivalence, measured
  jkt-lab distill --method kd+jacobian --per-class 5 --store results.jsonl
  jkt-lab sweep results/specs/quick.yaml --store results.jsonl
  jkt-lab report results.jsonl --out report/
  jkt-lab reproduce --dataset cifar10   # the paper's experiments (--scale cpu: about 2 h on 2 cores)
  jkt-lab robustness --dataset shapes   # robustness to noisy inputs: students, teachers, the mechanism
environment: JKT_LAB_DATA (datasets), JKT_LAB_CACHE (decoded caches), JKT_LAB_RUNS (teachers,
checkpoints), JKT_LAB_QUICK=1 (tiny sizes, same code path), JKT_LAB_SKIP_BAD_IMAGES=1 (leave out
images that cannot be decoded)."""


def _field_type(f: dataclasses.Field):
    t = f.type if not isinstance(f.type, str) else eval(f.type, vars(typing), {})  # noqa: S307 (our own annotations)
    args = [a for a in typing.get_args(t) if a is not type(None)]
    if isinstance(t, types.UnionType) or typing.get_origin(t) is typing.Union:
        t = args[0]
    return t


def _parse_value(kind, text: str):
    if text.lower() in ("none", "null") or (text.lower() == "all" and kind is not str):  # per_class all: None
        return None
    if kind is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")
    if typing.get_origin(kind) is tuple:
        return tuple(int(v) for v in text.split(",") if v.strip())
    return kind(text)


# Config fields by what they set, in the order --help shows them. Each subcommand shows only the
# groups it uses (COMMAND_GROUPS); a field in no list lands in "other", so a field added to Config
# later is still an option of distill.
OPTION_GROUPS: dict[str, tuple[str, ...]] = {
    "data": ("dataset", "data_path", "data_fingerprint", "image_size", "n_train"),
    "teacher": ("teacher", "teacher_width", "teacher_epochs", "teacher_seed", "teacher_pretrained", "teacher_classes",
                "teacher_batch_size", "teacher_lr", "teacher_weight_decay", "teacher_schedule", "teacher_augment",
                "teacher_label_smoothing", "teacher_train_sigma"),
    "student": ("student", "student_width", "per_class", "classes", "init", "seed", "n_test"),
    "objective": ("method", "ce_weight", "kd_weight", "temperature", "activation_weight", "jacobian_weight",
                  "jacobian_kind", "jacobian_output", "sigma", "n_samples", "noise_loss", "attention_weight",
                  "attention_p", "lwf_weight"),
    "optimisation": ("epochs", "steps", "batch_size", "lr", "momentum", "weight_decay", "schedule", "augment",
                     "augment_views", "label_smoothing", "train_sigma", "amp", "eval_every"),
}
GROUP_TITLES = {
    "data": "data (the teacher's and the student's)",
    "teacher": "teacher (trained once on all of its data, then cached; its own recipe)",
    "student": "student (the network trained with the objective)",
    "objective": "objective (Section 3: the loss terms and their weights)",
    "optimisation": "optimisation of the student (SGD with momentum)",
    "other": "other Config fields",
}
COMMAND_GROUPS = {
    "train-teacher": ("data", "teacher"),
    "distill": ("data", "teacher", "student", "objective", "optimisation", "other"),
}
_NOT_OPTIONS = ("extra",)  # free-form tags: not settable from the command line

FIELD_HELP = {
    "dataset": "shapes (embedded), digits, cifar10, cifar100, cifar10-jpeg, indoor67",
    "n_train": "training images to use (class-balanced; shapes: how many are generated)",
    "n_test": "test images to use",
    "teacher": "teacher architecture: tiny, vgg4, vgg9, wrn, resnet18, resnet34",
    "teacher_width": "teacher's base channel count (wrn: widening factor)",
    "teacher_epochs": "epochs of the teacher's cross-entropy training (0 with --teacher-pretrained: ImageNet as is)",
    "teacher_seed": "seed of the teacher (one teacher is shared by all student seeds)",
    "teacher_pretrained": "start the teacher from ImageNet weights (torchvision ResNets)",
    "teacher_classes": "the teacher's (source) classes, comma-separated",
    "teacher_batch_size": "teacher's batch size",
    "teacher_lr": "teacher's learning rate",
    "teacher_weight_decay": "teacher's weight decay",
    "teacher_schedule": "teacher's learning-rate schedule: cosine, step, constant",
    "teacher_augment": "flip-and-crop augmentation for the teacher",
    "teacher_label_smoothing": "label smoothing of the teacher's cross-entropy",
    "teacher_train_sigma": "Gaussian input noise while training the teacher (a robust teacher), [0, 1] pixel units",
    "student": "student architecture: tiny, vgg4, vgg9, wrn, resnet18, resnet34",
    "student_width": "student's base channel count (wrn: widening factor)",
    "per_class": "training images per class for the student (few-shot; 'none': all)",
    "classes": "train the student on these classes only (transfer target), comma-separated",
    "init": "scratch, or finetune (the student starts from the teacher)",
    "seed": "seed of the student's run (its few-shot subset, initialisation and batches)",
    "method": "ce, kd, activations, kd+jacobian, activations+jacobian, noise, kd+jacobian_norm, at, at+jacobian, lwf",
    "ce_weight": "weight of the cross-entropy on labels",
    "kd_weight": "weight of Hinton distillation",
    "temperature": "distillation temperature",
    "activation_weight": "weight of activation (logit) matching, Eq. 1",
    "jacobian_weight": "weight of Jacobian matching (Section 3.2)",
    "jacobian_kind": "normalized (2 - 2 cos, Section 3.2), squared (Proposition 1) or cosine",
    "jacobian_output": "whose Jacobian is matched: top1 (teacher's top logit), label, random (projection), all",
    "sigma": "input-noise std of the noise method, [0, 1] pixel units (Section 3)",
    "n_samples": "noisy copies per example for the noise method",
    "noise_loss": "loss of the noise method on noisy copies: kd or squared",
    "attention_weight": "weight of attention transfer (Zagoruyko & Komodakis; Section 4.3)",
    "attention_p": "power p of the attention map sum_c |A_c|^p",
    "lwf_weight": "weight of the old head's distillation in Learning without Forgetting",
    "epochs": "epochs of the student's training",
    "steps": "a step budget instead of epochs",
    "batch_size": "student's batch size",
    "lr": "student's learning rate",
    "momentum": "SGD momentum (Nesterov)",
    "weight_decay": "student's weight decay",
    "schedule": "student's learning-rate schedule: cosine, step, constant",
    "augment": "flip-and-crop augmentation for the student",
    "augment_views": "draw the student's augmentation from a fixed pool of this many views per image "
                     "(inputs repeat, so the teacher's outputs are cached: faster)",
    "label_smoothing": "label smoothing of the student's cross-entropy",
    "train_sigma": "Gaussian input noise on every training batch of the student, [0, 1] pixel units",
    "amp": "bf16 autocast (CUDA only)",
    "eval_every": "epochs between history rows ('none': about 20 rows a run)",
}


def option_groups(groups=None) -> dict[str, list[str]]:
    """Config field names by option group, for the groups named (default: all, "other" last):
    each group's listed fields, and in "other" every field of Config in no list."""
    from .config import Config
    names = [f.name for f in dataclasses.fields(Config) if f.name not in _NOT_OPTIONS]
    listed = {n for fields in OPTION_GROUPS.values() for n in fields}
    out = {g: [n for n in fields if n in names] for g, fields in OPTION_GROUPS.items()}
    out["other"] = [n for n in names if n not in listed]
    return {g: out[g] for g in (groups or out) if out.get(g)}


def _add_config_options(parser: argparse.ArgumentParser, command: str) -> None:
    """The Config fields ``command`` uses, as ``--field-name`` options in titled groups."""
    from .config import Config
    fields = {f.name: f for f in dataclasses.fields(Config)}
    for group_name, names in option_groups(COMMAND_GROUPS[command]).items():
        group = parser.add_argument_group(GROUP_TITLES[group_name])
        for name in names:
            f = fields[name]
            kind = _field_type(f)
            default = f.default if f.default is not dataclasses.MISSING else None
            shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
            flags = [f"--{name.replace('_', '-')}"] + (["--path"] if name == "data_path" else [])
            group.add_argument(*flags, dest=name, default=argparse.SUPPRESS, type=_option_type(kind),
                               metavar="I,J,..." if typing.get_origin(kind) is tuple else kind.__name__.upper(),
                               help=f"{FIELD_HELP.get(name, name.replace('_', ' '))} (default: {shown})")


def _option_type(kind):
    """argparse's ``type`` for a Config field of type ``kind``; argparse names it in its error
    ("invalid int value")."""
    def parse(text: str):
        return _parse_value(kind, text)
    parse.__name__ = "list of int" if typing.get_origin(kind) is tuple else kind.__name__
    return parse


def _device(text: str) -> str:
    """argparse's ``type`` for --device: auto, cpu, cuda, cuda:N or mps, and CUDA only where there is a GPU."""
    import torch
    if text != "auto":
        try:
            dev = torch.device(text)
        except RuntimeError:
            raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda, cuda:N or mps, got {text!r}") from None
        if dev.type not in ("cpu", "cuda", "mps"):
            raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda, cuda:N or mps, got {text!r}")
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text!r} asks for a CUDA GPU, and none is available here; "
                                             f"use --device cpu (or auto)")
    return text


def _threads(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number of threads >= 1, got {value}")
    return value


def default_threads() -> int:
    """``--threads``' default: ``$OMP_NUM_THREADS`` when set, else the machine's cores."""
    try:
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    except (KeyError, ValueError):
        return os.cpu_count() or 1


def _config_from_args(args, base=None):
    from ._checks import NAMED_FIELDS, check_names
    from .config import Config
    names = {f.name for f in dataclasses.fields(Config)}
    changes = {k: v for k, v in vars(args).items() if k in names}
    check_names(changes, names={f: f"--{f}" for f in NAMED_FIELDS})  # a misspelt name names its option
    return (base or Config()).replace(**changes)


def _common(parser):
    """The options of every command that trains."""
    parser.add_argument("--device", default="auto", type=_device, help="auto (GPU when present), cpu, cuda or cuda:N")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, same code path (also JKT_LAB_QUICK=1)")
    parser.add_argument("--no-progress", action="store_true", help="silence progress bars")
    parser.add_argument("--threads", type=_threads, default=None, metavar="N",
                        help="CPU threads for torch (default: $OMP_NUM_THREADS if set, else the machine's cores; "
                             "on a machine shared with other jobs, fewer can be much faster)")
    parser.add_argument("--skip-bad-images", action="store_true",
                        help="leave out images of an ImageFolder that cannot be decoded, with a warning, instead "
                             "of stopping (also JKT_LAB_SKIP_BAD_IMAGES=1)")


def _check_writable(store=None, option: str = "--store") -> None:
    """Stop before the first run when ``store`` (if given) cannot be appended to or the runs
    folder cannot be written: a read-only or full disk found now, not after hours of training."""
    from .experiments import check_writable, runs_dir
    try:
        check_writable(store)
    except OSError as exc:
        failed, runs = Path(exc.filename or ""), runs_dir()
        why = f"{exc.strerror or exc} ({failed})"
        if store is not None and not (failed == runs or runs in failed.parents):
            raise ValueError(f"{option} {store} cannot be appended to: {why}; choose a writable place") from None
        raise ValueError(f"the runs folder {runs} (JKT_LAB_RUNS) cannot be written: {why}; "
                         f"set JKT_LAB_RUNS to a writable folder") from None


def _executor_options(parser):
    parser.add_argument("--executor", default="serial", choices=["serial", "processes", "ray"],
                        help="serial: one run after another here; processes: --workers runs at a time on this machine "
                             "(many cores, or a GPU that one small student leaves idle); ray: each run a Ray task "
                             "(pip install -e '.[cluster]')")
    parser.add_argument("--workers", type=int, default=None,
                        help="with --executor processes: worker processes (default: this machine's cores), one torch "
                             "thread each")
    parser.add_argument("--address", default=None, help="with --executor ray: the cluster to join (auto, HEAD_IP:6379); "
                                                        "default: a local Ray on this machine")


def _executor(args):
    """A context giving None (serial), a jkt_lab.executor.ProcessExecutor (--executor processes) or a
    jkt_lab.cluster.RayExecutor (--executor ray)."""
    if args.executor != "ray" and args.address is not None:
        raise ValueError("--address needs --executor ray")
    if args.executor != "processes" and args.workers is not None:
        raise ValueError("--workers needs --executor processes")
    if args.executor == "serial":
        return contextlib.nullcontext()
    if args.executor == "processes":
        from .executor import ProcessExecutor
        return ProcessExecutor(args.workers or os.cpu_count() or 1, device=args.device,
                               progress=not args.no_progress)
    from .cluster import RayExecutor
    return RayExecutor(args.address, device=args.device, progress=not args.no_progress)


DEMO_METHODS = ("ce", "kd", "kd+jacobian")
DEMO_SEEDS = (0, 1, 2)


# The main job's setting, chosen on the validation split by benchmarks/select_demo.py (its
# measurements: benchmarks/results/select_demo.md). The teacher fields match the shipped teacher
# "shapes" (jkt_lab/teachers/shapes.json), so the demo never trains one.
DEMO_SETTING = dict(dataset="shapes", n_train=5000, n_test=1000, teacher="tiny", teacher_width=16, teacher_epochs=30,
                    student="tiny", student_width=8, per_class=50, steps=400, batch_size=32, lr=0.1, temperature=4.0,
                    jacobian_weight=1.0)


def demo_base_config(quick: bool = False, **changes):
    """The main job's config (method ce, seed 0) with ``changes`` to ``DEMO_SETTING``, and
    about ten history rows a run (``eval_every``); ``quick``: the same at toy size."""
    import math
    from .config import Config
    from .data import SHAPE_CLASSES
    from .experiments import quick_config
    setting = {**DEMO_SETTING, **changes}
    base = Config(**{**setting, "method": "ce", "seed": 0})
    if quick:
        base = quick_config(base)
    per_epoch = math.ceil(base.per_class * len(SHAPE_CLASSES) / base.batch_size)
    return base.replace(eval_every=max(1, round(base.steps / per_epoch / 10)))


def demo_configs(quick: bool = False) -> list:
    """The main job's runs: ``DEMO_METHODS`` students (cross-entropy, distillation, distillation +
    Jacobian matching), each with every seed of ``DEMO_SEEDS``, on the setting of :func:`demo_base_config`."""
    base = demo_base_config(quick)
    return [base.replace(method=m, seed=s) for m in DEMO_METHODS for s in DEMO_SEEDS]


def cmd_check(args) -> int:
    import torch
    from .theory import make_mlp, sigma_sweep
    sigmas = [float(s) for s in args.sigmas.split(",")]
    teacher = make_mlp(args.inputs, 5, (32, 32), "tanh", seed=1)
    student = make_mlp(args.inputs, 5, (16,), "tanh", seed=2)
    x = torch.randn(16, args.inputs, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    print(f"Noise vs. Jacobian (Section 3): tanh MLPs, {args.inputs} inputs, 5 outputs, 16 examples, "
          f"{args.samples} moment-matched noise samples, {args.loss} loss, float64")
    sweep = sigma_sweep(teacher, student, x, sigmas, n_samples=args.samples, loss=args.loss)
    rows = [{"sigma": r["sigma"], "monte_carlo": r["monte_carlo"], "noise_free": r["noise_free"],
             "prediction": r["prediction"], "MC-noise_free": r["monte_carlo"] - r["noise_free"],
             "MC-prediction": r["monte_carlo"] - r["prediction"]} for r in sweep["rows"]]
    from .results import to_markdown
    print(to_markdown(rows, floatfmt=".6g"))
    r0 = sweep["rows"][0]
    print(f"\njacobian_term = {r0['jacobian_term']:.6g}, curvature_term = {r0['curvature_term']:.6g}")
    print(f"fitted slope of |MC - noise_free| vs sigma: {sweep['slope_noise_free']:.3f} (theory: 2)")
    print(f"fitted slope of |MC - prediction| vs sigma: {sweep['slope_prediction']:.3f} (theory: 4)")
    ok = abs(sweep["slope_noise_free"] - 2) < 0.3 and abs(sweep["slope_prediction"] - 4) < 0.6
    print("OK: the equivalence holds numerically" if ok else "MISMATCH: slopes are off")
    return 0 if ok else 1


def _quick(args, config):
    from .experiments import quick_config
    return quick_config(config) if args.quick else config


def cmd_train_teacher(args) -> int:
    from .experiments import get_teacher
    from .experiments import trains_teacher
    config = _quick(args, _config_from_args(args))
    if trains_teacher(config):
        _check_writable()
    t0 = time.perf_counter()
    teacher, info = get_teacher(config, device=args.device, progress=not args.no_progress)
    if args.ship:
        import shlex
        from .experiments import load_data
        from .pretrained import ship_teacher
        tconf = config.teacher_config()
        card = ship_teacher(args.ship, teacher, info, load_data(tconf, classes=tconf.classes),
                            command="jkt-lab " + shlex.join(args.argv))
        print(f"shipped as {args.ship!r}: {card['bytes'] / 1e6:.2f} MB, test accuracy in half precision "
              f"{100 * card['test_acc']:.2f}%, sha256 {card['sha256'][:16]}...")
    print(f"teacher {config.teacher} on {config.dataset}: test accuracy {100 * info['metrics']['test_acc']:.2f}% "
          f"(trained in {info['wall_time_s']:.1f} s on {info['device']}; ready in {time.perf_counter() - t0:.1f} s)")
    return 0


def cmd_distill(args) -> int:
    from .experiments import run
    config = _quick(args, _config_from_args(args))
    _check_writable(args.store)
    record = run(config, store=args.store, device=args.device, progress=not args.no_progress)
    m = record["metrics"]
    print(f"{config.method} student, per_class={config.per_class}, seed={config.seed}: "
          f"test accuracy {100 * m['test_acc']:.2f}%" +
          (f", teacher {100 * m['teacher_test_acc']:.2f}%" if "teacher_test_acc" in m else "") +
          (f", saliency cosine {m['saliency_cosine']:.3f}" if "saliency_cosine" in m else "") +
          (f"  -> {args.store}" if args.store else ""))
    return 0


def cmd_sweep(args) -> int:
    from .experiments import load_spec, sweep
    configs = load_spec(args.spec)
    if args.quick:
        from .results import config_hash
        configs = list({config_hash(q.to_dict()): q for q in (_quick(args, c) for c in configs)}.values())
    _check_writable(args.store)
    print(f"{len(configs)} runs in {args.spec}; results -> {args.store}")
    with _executor(args) as executor:
        if executor is None:
            sweep(configs, args.store, device=args.device, progress=not args.no_progress)
            return 0
        executor.run(configs, args.store)
    return executor.summary()


def cmd_report(args) -> int:
    import warnings
    from .report import write_report
    from .results import ResultStore
    store = ResultStore(args.results)
    with warnings.catch_warnings(record=True) as skipped:
        warnings.simplefilter("always")
        readable = store.records(unique=False)
    if store.path.is_file() and not readable and store.skipped:
        raise ValueError(f"results file {store.path} has no readable line: all {store.skipped} skipped (the first: "
                         f"{str(skipped[0].message).split(': ', 1)[-1]})")
    paths = write_report(args.results, args.out, title=args.title, plotlyjs=args.plotlyjs)
    print(Path(paths["markdown"]).read_text())
    print(f"wrote {paths['markdown']} and {paths['html']}")
    return 0


def _plain(text: str) -> str:
    return text.replace("**", "").replace("`", "")


def cmd_demo(args) -> int:
    import shlex
    from .experiments import get_teacher, run
    from .report import method_summary, write_demo_report
    from .results import ResultStore, to_markdown
    out = Path(args.out)
    store = ResultStore(out / "results.jsonl")
    _check_writable(store.path, "--out")
    configs = demo_configs(args.quick)
    base = configs[0]
    progress = not args.no_progress
    t0 = time.perf_counter()
    print(f"jkt-lab demo: on the embedded {base.dataset} dataset, {base.student} students learn from "
          f"{base.per_class} images per class ({base.steps} steps) with {', '.join(DEMO_METHODS)}; "
          f"{len(DEMO_SEEDS)} seeds each -> {out}/", flush=True)
    teacher, info = get_teacher(base, device=args.device, progress=progress)
    chance = 1.0 / teacher.num_classes
    print(f"teacher ({'shipped with the package' if info.get('shipped') else 'trained once, then cached'}): "
          f"{base.teacher} CNN, test accuracy {100 * info['metrics']['test_acc']:.1f}%; "
          f"chance is {100 * chance:.0f}% ({teacher.num_classes} classes)", flush=True)
    records = [run(c, store=store, device=args.device, progress=progress) for c in configs]
    elapsed = time.perf_counter() - t0
    print(f"\nstudents, mean ± std over seeds {', '.join(map(str, DEMO_SEEDS))} "
          f"(validation: images held out of the training set; test: {base.n_test} images):\n")
    print(to_markdown(method_summary(records)))
    lines = demo_verdict(records, teacher_acc=info["metrics"]["test_acc"], chance=chance, quick=args.quick)
    print("verdict:\n" + "\n".join(f"  - {_plain(line)}" for line in lines))
    report = out / "report.html"
    next_steps = [f"Open the report in a browser (it works offline): {report}",
                  "Open notebook 01, the noise/Jacobian equivalence behind the method, measured: "
                  "`jupyter lab notebooks/01_noise_jacobian_equivalence.ipynb`",
                  "Run the paper's three experiments on real CIFAR-10 images with the shipped teachers "
                  "(hours on 2 CPU cores, resumable; `--estimate` first says how long here): "
                  "`jkt-lab reproduce --dataset cifar10 --scale cpu`"]
    paths = write_demo_report(records, out, command="jkt-lab " + shlex.join(args.argv), teacher_info=info,
                              chance=chance, elapsed_s=elapsed, device="cpu", next_steps=next_steps, quick=args.quick)
    print(f"\n{len(records)} students trained in {elapsed:.0f} s; report written in "
          f"{time.perf_counter() - t0 - elapsed:.0f} s -> {paths['html']}")
    print("next steps:\n" + "\n".join(f"  {i}. {_plain(line)}" for i, line in enumerate(next_steps, 1)))
    return 0


def demo_verdict(records, *, teacher_acc: float | None, chance: float, quick: bool) -> list[str]:
    """The demo's verdict: :func:`jkt_lab.report.verdict`, which says first when it is a smoke test
    (``quick``, or a teacher not above chance) and then judges nothing."""
    from .report import verdict
    return verdict(records, chance=chance, teacher_acc=teacher_acc, quick=quick)


def _measuring() -> str:
    import os
    return f"measuring step costs ({os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f})"


def _estimate_reproduce(args, scale: str) -> int:
    """``jkt-lab reproduce --estimate``: each part's measured cost here, in all and still to do."""
    from . import reproduce as rp
    from .cost import estimate_cost
    from .results import ResultStore
    store = ResultStore(args.store)
    base = rp.base_config(args.dataset, scale)
    chosen = rp.select(store, base, args.quick, scale)   # the values chosen so far; defaults before
    # both selection rounds: at+jacobian's grid sits on at's chosen weight (a grid value stands in before)
    first_at = {"at": {"attention_weight": rp.SELECTION["at"]["attention_weight"][0]}}
    configs = {"select": rp.selection_configs(base, args.quick, scale, {**first_at, **chosen}),
               "distillation": rp.distillation_configs(base, chosen, args.quick, scale),
               "transfer": rp.transfer_configs(base, chosen, args.quick, scale)}
    print(f"{_measuring()}; teachers not counted (shipped at cpu scale)", flush=True)
    to_go_wall = to_go_cpu = 0.0
    for part in args.parts.split(","):
        est = estimate_cost(configs[part], device=args.device)
        todo = [(w, c) for conf, w, c in est["per_run"] if not store.done(conf.to_dict())]
        part_cpu = sum(c for _, c in todo)
        to_go_wall, to_go_cpu = to_go_wall + sum(w for w, _ in todo), to_go_cpu + part_cpu
        print(f"{part}: {est['runs']} runs, {est['cpu_s'] / 60:.0f} min of CPU time in all "
              f"({est['wall_s'] / 60:.0f} min of wall time here at the current load); {len(todo)} to go: "
              f"{part_cpu / 60:.0f} min of CPU time", flush=True)
    print(f"to go: {to_go_cpu / 60:.0f} min of CPU time (at most that long on a quiet machine with these cores), "
          f"{to_go_wall / 60:.0f} min of wall time here at the current load")
    return 0


def cmd_reproduce(args) -> int:
    from .reproduce import reproduce
    parts = args.parts.split(",")
    with _executor(args) as executor:
        scale = args.scale
        if scale == "auto":  # by where the runs go: this machine, or the cluster's workers (--executor ray)
            from .train import resolve_device
            gpu = executor.gpu_per_run if executor is not None else resolve_device(args.device).type == "cuda"
            scale = "gpu" if gpu else "cpu"
        if args.estimate:
            return _estimate_reproduce(args, scale)
        _check_writable(args.store)
        print(f"reproduce: {args.dataset} at {scale} scale" + (" (quick, toy size)" if args.quick else ""), flush=True)
        times = reproduce(args.store, dataset=args.dataset, parts=parts, quick=args.quick, device=args.device,
                          progress=not args.no_progress, scale=scale, executor=executor)
    from .report import write_report  # plotly: only once the runs are done
    paths = write_report(args.store, args.report, title=f"Reproducing Srinivas & Fleuret (2018) on {args.dataset}"
                         + (" (quick, toy size)" if args.quick else ""), timings=times, plotlyjs=args.plotlyjs)
    print(f"wrote {paths['markdown']} and {paths['html']}")
    return 0 if executor is None else executor.summary()


def cmd_prepare_course(args) -> int:
    from .course import prepare
    from .experiments import runs_dir
    _check_writable()  # the course's store and its students live in the runs folder
    t0 = time.perf_counter()
    rows = prepare(quick=args.quick, device=args.device, progress=not args.no_progress)
    from .results import to_markdown
    print(to_markdown(rows, ["part", "runs", "new", "seconds"], floatfmt=".3f"))
    print(f"course caches ready in {runs_dir()} ({time.perf_counter() - t0:.0f} s)")
    return 0


def cmd_robustness(args) -> int:
    from . import robustness as rb
    from .results import ResultStore, config_hash
    s = rb.setup(args.dataset)
    parts = s.parts if args.parts is None else tuple(args.parts.split(","))
    args.store = args.store or f"results/robustness-{args.dataset}/results.jsonl"
    args.report = args.report or str(Path(args.store).parent)
    store = ResultStore(args.store)
    if args.estimate:
        configs = rb.selection_configs(s, args.quick) + rb.grid_configs(s, None, args.quick)
        if "equivalence" in parts:
            configs += rb.equivalence_configs(s, quick=args.quick)
        configs = list({config_hash(c.to_dict()): c for c in configs}.values())  # selection runs are grid runs too
        print(_measuring(), flush=True)
        from .cost import estimate_cost
        est = estimate_cost(configs, store=store, device=args.device, val_noise_sigmas=(rb.SELECT_SIGMA,))
        print(f"{est['runs']} runs to go: {est['wall_s'] / 60:.0f} min of wall time here at the current load; "
              f"{est['cpu_s'] / 60:.0f} min of CPU time (at most that long on a quiet machine with these cores)")
        return 0
    _check_writable(args.store)
    print(f"robustness experiment on {args.dataset}" + (" (quick, toy size)" if args.quick else "")
          + f": parts {', '.join(parts)} -> {args.store}", flush=True)
    times = rb.robustness_experiment(store, s, parts=parts, quick=args.quick, device=args.device,
                                     progress=not args.no_progress)
    from .report import write_report  # plotly: only once the runs are done
    paths = write_report(store.path, args.report, timings=times, plotlyjs=args.plotlyjs,
                         title=f"Robustness to noisy inputs on {args.dataset}" + (" (quick, toy size)" if args.quick else ""))
    print(f"wrote {paths['markdown']} and {paths['html']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jkt-lab", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Knowledge transfer with Jacobian matching (Srinivas & Fleuret, ICML 2018): "
                    "experiments from the command line.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("demo", help="the main job on the embedded shapes dataset (about a minute on a laptop CPU)")
    _common(p)
    p.add_argument("--out", default="jkt_demo", help="folder for results.jsonl, REPORT.md, report.html")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("check", help="measure the noise/Jacobian equivalence (Proposition 1) on a small tanh net")
    p.add_argument("--sigmas", default="0.01,0.02,0.04,0.07,0.1", help="comma-separated noise levels")
    p.add_argument("--samples", type=int, default=64, help="noise samples (even; >= 2 x inputs)")
    p.add_argument("--inputs", type=int, default=8, help="input dimension of the toy nets")
    p.add_argument("--loss", default="squared", choices=["squared", "cross_entropy"])
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("train-teacher", help="train (or load the cached) teacher of a config")
    _common(p)
    p.add_argument("--ship", metavar="NAME", default=None,
                   help="also write the teacher into the package (jkt_lab/teachers/NAME.pt, half precision) "
                        "with its card")
    _add_config_options(p, "train-teacher")
    p.set_defaults(func=cmd_train_teacher)

    p = sub.add_parser("distill", help="one student run (trains the teacher first if needed)")
    _common(p)
    p.add_argument("--store", default=None, help="append the record to this JSON-lines results file")
    _add_config_options(p, "distill")
    p.set_defaults(func=cmd_distill)

    p = sub.add_parser("sweep", help="a grid of runs from a YAML/TOML spec; resumable (finished runs are skipped)")
    _common(p)
    p.add_argument("spec", help="YAML or TOML file with 'base' and 'grid' (or a list under 'sweeps')")
    p.add_argument("--store", required=True, help="JSON-lines results file")
    _executor_options(p)
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("reproduce", help="the paper's three experiments, resumable: --scale cpu (shipped teachers, 2 cores) or gpu; --quick: toy size")
    _common(p)
    p.add_argument("--dataset", default="cifar10", help="cifar10 (offline: the JPEG zip) or cifar100 (downloads)")
    p.add_argument("--parts", default="select,distillation,transfer", help="comma-separated subset of the parts")
    p.add_argument("--scale", default="auto", choices=["auto", "cpu", "gpu"],
                   help="cpu: shipped teachers, small students, about 2 hours on 2 cores; gpu: the paper's scale; "
                        "auto: gpu when CUDA is available")
    p.add_argument("--store", default="results/reproduce.jsonl", help="JSON-lines results file")
    p.add_argument("--report", default="results", help="folder for REPORT.md and report.html")
    p.add_argument("--plotlyjs", default="cdn", choices=["cdn", "inline"], help="how report.html gets plotly.js")
    p.add_argument("--estimate", action="store_true", help="measure step costs here and print what each part costs "
                   "(all its runs, and those not yet in --store), then stop")
    _executor_options(p)
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("robustness", help="robustness to noisy inputs, examined: teachers x students x sigma, the "
                                          "Jacobian-norm mechanism, Proposition 1 in training; resumable")
    _common(p)
    p.add_argument("--dataset", default="shapes", choices=["shapes", "cifar10"],
                   help="shapes (embedded; teachers trained here, small) or cifar10 (CPU scale, shipped teachers)")
    p.add_argument("--parts", default=None, help="comma-separated subset of teachers,grid,equivalence "
                                                 "(default: all on shapes, teachers,grid on cifar10)")
    p.add_argument("--store", default=None, help="JSON-lines results file (default results/robustness-DATASET/results.jsonl)")
    p.add_argument("--report", default=None, help="folder for REPORT.md and report.html (default: the store's folder)")
    p.add_argument("--plotlyjs", default="cdn", choices=["cdn", "inline"], help="how report.html gets plotly.js")
    p.add_argument("--estimate", action="store_true", help="measure step costs and print how long the runs still "
                                                         "to do would take here, then stop")
    p.set_defaults(func=cmd_robustness)

    p = sub.add_parser("prepare-course", help="build every cache the notebooks use (teachers, students, data) "
                                              "before a class; resumable")
    _common(p)
    p.set_defaults(func=cmd_prepare_course)

    p = sub.add_parser("report", help="tables (REPORT.md) and plotly figures (report.html) from a results file")
    p.add_argument("results", help="JSON-lines results file")
    p.add_argument("--out", default="report", help="output folder")
    p.add_argument("--title", default="jkt_lab results")
    p.add_argument("--plotlyjs", default="inline", choices=["cdn", "inline"],
                   help="inline: report.html opens offline; cdn: a small file that loads plotly.js online")
    p.set_defaults(func=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.command is None:
        parser.print_help()
        return 0
    if hasattr(args, "quick"):
        from .config import quick_mode
        args.quick = args.quick or quick_mode()
    import warnings

    import torch

    from . import progress
    from .data.files import SKIP_BAD_IMAGES
    from .pretrained import ShippedTeacherError
    from .train import CheckpointError, NonFiniteLossError
    progress.set_enabled(not getattr(args, "no_progress", False))  # every bar, decoding bars included
    threads, skip = torch.get_num_threads(), os.environ.get(SKIP_BAD_IMAGES)
    if "threads" in args:
        torch.set_num_threads(args.threads or default_threads())
    if getattr(args, "skip_bad_images", False):
        os.environ[SKIP_BAD_IMAGES] = "1"
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")  # torch's, on damaged files
            warnings.showwarning = _warning_line
            return int(args.func(args) or 0)
    except (ValueError, TypeError, OSError, ModuleNotFoundError, NonFiniteLossError, ShippedTeacherError,
            CheckpointError) as exc:
        print(f"jkt-lab {args.command}: error: {_error_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished runs are saved", file=sys.stderr)
        return 130
    finally:
        progress.set_enabled(True)
        torch.set_num_threads(threads)
        if skip is None:
            os.environ.pop(SKIP_BAD_IMAGES, None)
        else:
            os.environ[SKIP_BAD_IMAGES] = skip


def _warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"jkt-lab: warning: {' '.join(str(message).split())}", file=sys.stderr if file is None else file)


def _error_line(exc: BaseException) -> str:
    """One line for the error that stopped a command: the file an OSError concerns and what to do
    about a full or read-only disk; torch's own text about a damaged file (with its advice to
    load untrusted files with weights_only=False) never shown."""
    from .train import CheckpointError
    text = str(exc)
    cause = exc.__cause__
    if cause is not None and "weights_only" in str(cause):  # torch's text on a file it would not unpickle
        text = text.replace(f"{type(cause).__name__}: {cause}", "damaged, or it holds more than tensors "
                                                                  "(never unpickled)")
    if isinstance(exc, CheckpointError) and "rename it" not in text:
        text += " Delete it to start that training again."
    if isinstance(exc, OSError) and exc.strerror and exc.filename:
        text = f"{exc.strerror}: {exc.filename}"
        if exc.errno == errno.ENOSPC:
            text += ("; free some space and run the command again: finished runs are kept, and a trained "
                     "student whose record could not be written is recorded then without training it again")
        elif exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            text += "; choose a writable place (--store, --out, JKT_LAB_RUNS)"
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
