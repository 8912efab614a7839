"""Does a fixed pool of K augmented views per image cost accuracy? Paired runs on the validation split.

    OMP_NUM_THREADS=1 python benchmarks/view_pool.py                     # run (resumable) and print
    python benchmarks/view_pool.py --report-only                          # print what the store holds

The CPU scale of ``jkt-lab reproduce`` (``jkt_lab.reproduce.base_config("cifar10", "cpu")``: the
shipped VGG-9 width-32 teacher, VGG-4 width-16 students, batch 64, 300 steps) with
``kd+jacobian`` at ``jacobian_weight`` 10 (the weight chosen on the validation split), at each
``--per-class`` and ``--seeds``, once with fresh crops and flips every epoch (the recipe of the
committed results) and once with each pool size in ``--views`` (``Config.augment_views``: each
image's augmentation drawn from K views fixed by the seed; 2 flips x 81 crops = 162 exist).
A run and its pooled twin share the seed, hence the few-shot subset and the initial weights:
the difference of their validation accuracies is paired. Runs go to a JSON-lines store
(``--store``), one record per config, so an interrupted sweep resumes where it stopped.

The pool passes at a size K when, at every ``per_class``, the mean paired difference
(pool - fresh) is not below minus the seed spread: the standard deviation over seeds of the
fresh runs' validation accuracy.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from jkt_lab.experiments import run
from jkt_lab.reproduce import base_config
from jkt_lab.results import ResultStore, to_markdown

STORE = Path(__file__).parent / "results" / "view_pool.jsonl"


def configs(per_class, seeds, views, steps):
    base = base_config("cifar10", "cpu").replace(method="kd+jacobian", jacobian_weight=10.0, steps=steps)
    # fresh and the first pool size first, for every setting, so an early stop still pairs them
    for k in [None, *views]:
        for p in per_class:
            for s in seeds:
                yield base.replace(per_class=p, seed=s, augment_views=k)


def _val(store, config):
    rec = store.get(config.to_dict())
    return None if rec is None else rec["metrics"]["val_acc"]


def summarize(store, per_class, seeds, views, steps) -> list[dict]:
    base = base_config("cifar10", "cpu").replace(method="kd+jacobian", jacobian_weight=10.0, steps=steps)
    rows = []
    for p in per_class:
        fresh = {s: _val(store, base.replace(per_class=p, seed=s)) for s in seeds}
        done = [v for v in fresh.values() if v is not None]
        spread = statistics.stdev(done) if len(done) > 1 else float("nan")
        for k in views:
            pool = {s: _val(store, base.replace(per_class=p, seed=s, augment_views=k)) for s in seeds}
            diffs = [pool[s] - fresh[s] for s in seeds if pool[s] is not None and fresh[s] is not None]
            mean = statistics.mean(diffs) if diffs else float("nan")
            rows.append({"per_class": p, "views": k, "seeds": len(diffs),
                         "fresh val acc": statistics.mean(done) if done else float("nan"),
                         "pool val acc": statistics.mean([v for v in pool.values() if v is not None] or [float("nan")]),
                         "paired diffs": " ".join(f"{100 * d:+.1f}" for d in diffs),
                         "mean diff": mean, "std of diffs": statistics.stdev(diffs) if len(diffs) > 1 else float("nan"),
                         "seed spread (fresh std)": spread, "passes": bool(diffs) and mean >= -spread})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--per-class", default="1,10,100")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--views", default="8,32", help="pool sizes K to compare with fresh augmentation")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--store", type=Path, default=STORE)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    per_class = [int(v) for v in args.per_class.split(",")]
    seeds = [int(v) for v in args.seeds.split(",")]
    views = [int(v) for v in args.views.split(",")]
    store = ResultStore(args.store)
    if not args.report_only:
        for c in configs(per_class, seeds, views, args.steps):
            if store.done(c.to_dict()):
                continue
            t0 = time.perf_counter()
            rec = run(c, store=store, device="cpu", progress=False, noise_sigmas=())
            print(f"per_class {c.per_class:3d} seed {c.seed} views {c.augment_views}: val acc "
                  f"{100 * rec['metrics']['val_acc']:.1f}%  ({time.perf_counter() - t0:.0f} s)", flush=True)
    print(to_markdown(summarize(store, per_class, seeds, views, args.steps), floatfmt=".3f"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
