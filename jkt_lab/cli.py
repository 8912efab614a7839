"""The ``jkt-lab`` command. ``jkt-lab --help`` lists the subcommands; each has its own ``--help``."""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
import types
import typing
from pathlib import Path

__all__ = ["main", "demo_configs"]

EPILOG = """examples:
  jkt-lab demo                          # the main job: teacher + ce/kd/kd+jacobian students on shapes
  jkt-lab check                         # the noise/Jacobian equivalence, measured
  jkt-lab distill --method kd+jacobian --per-class 5 --store results.jsonl
  jkt-lab sweep results/specs/quick.yaml --store results.jsonl
  jkt-lab report results.jsonl --out report/
  jkt-lab reproduce --dataset cifar10   # the paper's experiments on a GPU (--quick: toy size on CPU)
environment: JKT_LAB_DATA (datasets), JKT_LAB_CACHE (decoded caches), JKT_LAB_RUNS (teachers,
checkpoints), JKT_LAB_QUICK=1 (tiny sizes, same code path)."""


def _field_type(f: dataclasses.Field):
    t = f.type if not isinstance(f.type, str) else eval(f.type, vars(typing), {})  # noqa: S307 (our own annotations)
    args = [a for a in typing.get_args(t) if a is not type(None)]
    if isinstance(t, types.UnionType) or typing.get_origin(t) is typing.Union:
        t = args[0]
    return t


def _parse_value(kind, text: str):
    if text.lower() in ("none", "null", "all"):
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


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    from .config import Config
    group = parser.add_argument_group("run settings (jkt_lab.Config fields; 'none' unsets)")
    for f in dataclasses.fields(Config):
        if f.name == "extra":
            continue
        kind = _field_type(f)
        default = f.default if f.default is not dataclasses.MISSING else None
        group.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, default=argparse.SUPPRESS,
                           type=lambda text, k=kind: _parse_value(k, text), metavar=getattr(kind, "__name__", "V").upper(),
                           help=f"default: {default}")


def _config_from_args(args, base=None):
    from .config import Config
    names = {f.name for f in dataclasses.fields(Config)}
    changes = {k: v for k, v in vars(args).items() if k in names}
    return (base or Config()).replace(**changes)


def _common(parser):
    parser.add_argument("--device", default="auto", help="auto (GPU when present), cpu or cuda")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, same code path (also JKT_LAB_QUICK=1)")
    parser.add_argument("--no-progress", action="store_true", help="silence progress bars")


def demo_configs(quick: bool) -> list:
    """The main job's runs: ce, kd and kd+jacobian students on the shapes dataset, few images per class."""
    from .config import Config
    base = Config(dataset="shapes", n_train=600 if quick else 4000, n_test=300 if quick else 1000,
                  teacher="tiny", teacher_width=16 if quick else 32,
                  teacher_epochs=2 if quick else 8, student="tiny", student_width=16, per_class=5,
                  steps=30 if quick else 300, batch_size=64, lr=0.05, seed=0)
    return [base.replace(method=m) for m in ("ce", "kd", "kd+jacobian")]


def _print_table(rows, columns):
    from .results import to_markdown
    print(to_markdown(rows, columns, floatfmt=".3f"))


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


def cmd_train_teacher(args) -> int:
    from .experiments import get_teacher
    config = _config_from_args(args)
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
    config = _config_from_args(args)
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
        from .experiments import quick_config
        from .results import config_hash
        configs = list({config_hash(q.to_dict()): q for q in map(quick_config, configs)}.values())
    print(f"{len(configs)} runs in {args.spec}; results -> {args.store}")
    sweep(configs, args.store, device=args.device, progress=not args.no_progress)
    return 0


def cmd_report(args) -> int:
    from .report import write_report
    paths = write_report(args.results, args.out, title=args.title, plotlyjs=args.plotlyjs)
    print(Path(paths["markdown"]).read_text())
    print(f"wrote {paths['markdown']} and {paths['html']}")
    return 0


def cmd_demo(args) -> int:
    from .experiments import get_teacher, run
    from .report import accuracy_table, write_report
    from .results import ResultStore
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    store = ResultStore(out / "results.jsonl")
    configs = demo_configs(args.quick)
    t0 = time.perf_counter()
    print(f"jkt-lab demo: shapes dataset, teacher tiny CNN, students with ce / kd / kd+jacobian at "
          f"{configs[0].per_class} images per class -> {out}/", flush=True)
    _, info = get_teacher(configs[0], device=args.device, progress=not args.no_progress)
    print(f"teacher: test accuracy {100 * info['metrics']['test_acc']:.1f}%", flush=True)
    for c in configs:
        r = run(c, store=store, device=args.device, progress=not args.no_progress)
        m = r["metrics"]
        print(f"  {c.method:12s} test accuracy {100 * m['test_acc']:5.1f}%   "
              f"noise sigma=0.1: {100 * m['noise_acc']['0.1']:5.1f}%   "
              f"saliency cosine to teacher: {m.get('saliency_cosine', float('nan')):.3f}", flush=True)
    records = [r for r in store.records() if r["config"] in [c.to_dict() for c in configs]]
    print()
    _print_table(accuracy_table(records), None)
    paths = write_report(records, out, title="jkt_lab demo: distillation with few images per class")
    print(f"\nreport: {paths['html']}  ({time.perf_counter() - t0:.1f} s in all)")
    return 0


def cmd_reproduce(args) -> int:
    from .reproduce import reproduce
    from .report import write_report
    parts = args.parts.split(",")
    times = reproduce(args.store, dataset=args.dataset, parts=parts, quick=args.quick, device=args.device,
                      progress=not args.no_progress)
    paths = write_report(args.store, args.report, title=f"Reproducing Srinivas & Fleuret (2018) on {args.dataset}"
                         + (" (quick, toy size)" if args.quick else ""), timings=times, plotlyjs=args.plotlyjs)
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
    _add_config_options(p)
    p.set_defaults(func=cmd_train_teacher)

    p = sub.add_parser("distill", help="one student run (trains the teacher first if needed)")
    _common(p)
    p.add_argument("--store", default=None, help="append the record to this JSON-lines results file")
    _add_config_options(p)
    p.set_defaults(func=cmd_distill)

    p = sub.add_parser("sweep", help="a grid of runs from a YAML/TOML spec; resumable (finished runs are skipped)")
    _common(p)
    p.add_argument("spec", help="YAML or TOML file with 'base' and 'grid' (or a list under 'sweeps')")
    p.add_argument("--store", required=True, help="JSON-lines results file")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("reproduce", help="the paper's three experiments (GPU), resumable; --quick: toy size on CPU")
    _common(p)
    p.add_argument("--dataset", default="cifar10", help="cifar10 (offline: the JPEG zip) or cifar100 (downloads)")
    p.add_argument("--parts", default="select,distillation,transfer", help="comma-separated subset of the parts")
    p.add_argument("--store", default="results/reproduce.jsonl", help="JSON-lines results file")
    p.add_argument("--report", default="results", help="folder for REPORT.md and report.html")
    p.add_argument("--plotlyjs", default="cdn", choices=["cdn", "inline"], help="how report.html gets plotly.js")
    p.set_defaults(func=cmd_reproduce)

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
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"jkt-lab {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished runs are saved", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
