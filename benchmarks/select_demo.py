"""Choose the setting of the main job (``jkt-lab demo``) on the VALIDATION split.

Each candidate is the demo's config (``jkt_lab.cli.demo_base_config``) with some fields changed
(``--grid field=v1,v2 ...``: every combination is a candidate). For each candidate, the demo's
methods (ce, kd, kd+jacobian) are trained with each seed through ``experiments.run``, the same
code path as the demo, and the script keeps only what selection may look at: validation and
training accuracy, and the CPU seconds of the run (``time.process_time``; one thread by default,
so the number is a bound on the wall time of one idle core). Test accuracy is never read.

Per candidate it prints the validation accuracy of each method (mean ± std over seeds), the
differences kd - ce and kd+jacobian - kd in points and in units of the spread over seeds (the
larger std of the two), and the CPU seconds the demo would spend. The rule that picks the
setting: among candidates whose runs fit ``--budget`` CPU seconds (minus ``--fixed``, the demo's
cost outside the runs: imports, data, report) and whose weakest method reaches 2x chance on
validation, the largest (kd+jacobian - kd) / spread; ties (within 0.1) go to the cheaper one.

    python benchmarks/select_demo.py --grid per_class=10,20,50 steps=150,300 --seeds 0,1,2
    python benchmarks/select_demo.py --grid jacobian_weight=0.3,1,3 --seeds 0,1,2

Runs are appended to ``--store`` (JSON lines; a rerun skips what is there, so delete the file
after the training code changes). ``--out`` gets the summary table in markdown.
"""
from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jkt_lab import progress  # noqa: E402
from jkt_lab.cli import DEMO_METHODS, demo_base_config  # noqa: E402
from jkt_lab.config import Config  # noqa: E402
from jkt_lab.experiments import run  # noqa: E402
from jkt_lab.results import ResultStore, make_record, to_markdown  # noqa: E402


def _value(text: str):
    if text.lower() in ("none", "null"):
        return None
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_grid(items: list[str]) -> dict[str, list]:
    grid = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"--grid items must look like field=v1,v2; got {item!r}")
        key, values = item.split("=", 1)
        grid[key.strip()] = [_value(v.strip()) for v in values.split(",") if v.strip()]
    return grid


def candidates(grid: dict[str, list]) -> list[dict]:
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


# Fields a method does not read, reset to Config's defaults so that candidates differing only
# in them share the run (ce ignores every distillation weight; kd ignores the Jacobian's).
UNUSED = {"ce": ("kd_weight", "temperature", "jacobian_weight", "jacobian_kind", "jacobian_output"),
          "kd": ("jacobian_weight", "jacobian_kind", "jacobian_output")}


def measure(config, store: ResultStore, device: str) -> dict:
    """One run: its validation/training accuracy and CPU seconds (test accuracy is dropped)."""
    defaults = Config()
    config = config.replace(**{k: getattr(defaults, k) for k in UNUSED.get(config.method, ())})
    if store.done(config.to_dict()):
        return store.get(config.to_dict())
    t0, c0 = time.perf_counter(), time.process_time()
    record = run(config, device=device, progress=False)
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    m = record["metrics"]
    kept = {"val_acc": m.get("val_acc"), "train_acc": m.get("train_acc"), "cpu_s": cpu}
    return store.append(make_record(config.to_dict(), kept, wall_time_s=wall, device=device,
                                    extra={"threads": torch.get_num_threads()}))


def _stats(values):
    values = [v for v in values if v is not None]
    mean = statistics.fmean(values) if values else float("nan")
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return mean, std


def summarise(changes: dict, records: list[dict], fixed: float, methods=DEMO_METHODS) -> dict:
    row = {k: v for k, v in changes.items()}
    stats = {}
    for m in methods:
        accs = [r["metrics"]["val_acc"] for r in records if r["config"]["method"] == m]
        stats[m] = _stats(accs)
        row[f"{m} val %"] = f"{100 * stats[m][0]:.1f} ± {100 * stats[m][1]:.1f}"
    for a, b in (("kd", "ce"), ("kd+jacobian", "kd")):
        if a not in stats or b not in stats:
            continue
        diff = stats[a][0] - stats[b][0]
        spread = max(stats[a][1], stats[b][1])
        row[f"{a} - {b}"] = round(100 * diff, 1)
        row[f"{a} - {b} / spread"] = round(diff / spread, 2) if spread > 0 else float("inf")
    row["weakest val %"] = round(100 * min(s[0] for s in stats.values()), 1)
    row["demo CPU s"] = round(fixed + sum(r["metrics"]["cpu_s"] for r in records), 0)
    return row


def choose(rows: list[dict], budget: float, chance: float) -> dict | None:
    key = "kd+jacobian - kd / spread"
    ok = [r for r in rows if key in r and r["demo CPU s"] <= budget and r["weakest val %"] >= 200 * chance]
    if not ok:
        return None
    best = max(r[key] for r in ok)
    near = [r for r in ok if r[key] >= best - 0.1]
    return min(near, key=lambda r: r["demo CPU s"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grid", nargs="*", default=[], help="field=v1,v2 ... (Config fields); every combination")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--methods", default=",".join(DEMO_METHODS),
                        help="comma-separated methods (a subset explores the cheaper ones first)")
    parser.add_argument("--store", type=Path, default=ROOT / "benchmarks" / "results" / "select_demo.jsonl")
    parser.add_argument("--out", type=Path, default=None, help="also write the summary (markdown) here")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: CPU seconds = one core's wall time)")
    parser.add_argument("--budget", type=float, default=120.0, help="CPU seconds the whole demo may take")
    parser.add_argument("--fixed", type=float, default=20.0,
                        help="the demo's CPU seconds outside the student runs (imports, data, report)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    progress.set_enabled(False)
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = [m for m in args.methods.split(",") if m]
    store = ResultStore(args.store)
    base = demo_base_config()
    rows = []
    for changes in candidates(parse_grid(args.grid)):
        cand = demo_base_config(**changes)
        records = []
        for m in methods:
            for s in seeds:
                r = measure(cand.replace(method=m, seed=s), store, args.device)
                records.append(r)
                print(f"  {json.dumps(changes)} {m} seed {s}: val {100 * r['metrics']['val_acc']:.1f}%, "
                      f"{r['metrics']['cpu_s']:.1f} CPU s", flush=True)
        rows.append(summarise(changes, records, args.fixed, methods))
        print(to_markdown([rows[-1]], floatfmt=".2f"), flush=True)
    table = to_markdown(rows, floatfmt=".2f")
    chosen = choose(rows, args.budget, chance=0.1)
    text = (f"base: demo_base_config() = {json.dumps(base.to_dict())}\nseeds {seeds}, {args.threads} thread(s)\n\n"
            f"{table}\nchosen by the rule (budget {args.budget:.0f} CPU s, weakest method >= 2x chance, "
            f"largest (kd+jacobian - kd) / spread): {json.dumps(chosen) if chosen else 'none qualifies'}\n")
    print("\n" + text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a") as fh:
            fh.write(f"\n### `python benchmarks/select_demo.py {' '.join(argv if argv is not None else sys.argv[1:])}`\n\n"
                     + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
