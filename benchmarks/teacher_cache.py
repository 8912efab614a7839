"""What the teacher cache saves: whole training runs with and without it, in the same process.

    python benchmarks/teacher_cache.py                       # the CPU scale of `jkt-lab reproduce`
    python benchmarks/teacher_cache.py --per-class 1,10 --steps 100 --out benchmarks/results/teacher_cache.md

Pair and budget of ``reproduce --scale cpu`` (``jkt_lab.reproduce.SCALES["cpu"]``): a VGG-9
width-32 teacher, a VGG-4 width-16 student, batch 64, ``--steps`` SGD steps, on CIFAR-sized
inputs (3x32x32, 10 classes; the embedded shapes images, so it runs anywhere: the weights are
untrained, which changes nothing in the cost). For each ``per_class``, method and augmentation
(fresh crops and flips every epoch, or a pool of ``--views`` views per image), the run is
timed without the cache and with it, alternately, after an untimed warm-up; each time is the median of ``--repeats``
runs, and the ratio is the median of the per-repeat ratios. The cache's hit rate is the share
of training inputs whose teacher outputs were served from it.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch

from jkt_lab.config import Config
from jkt_lab.data import load
from jkt_lab.models import build_model
from jkt_lab.reproduce import SCALES
from jkt_lab.results import to_markdown
from jkt_lab.teacher_cache import TeacherCache
from jkt_lab.train import fit


def _run(data, base: Config, cache) -> float:
    teacher = build_model(base.teacher, data.num_classes, width=base.teacher_width, seed=1)
    student = build_model(base.student, data.num_classes, width=base.student_width, seed=2)
    t0 = time.perf_counter()
    fit(student, base.method, data, teacher=teacher, config=base, device="cpu", progress=False, teacher_cache=cache)
    return time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--per-class", default="1,10,50", help="training images per class, comma-separated")
    p.add_argument("--methods", default="kd,kd+jacobian")
    p.add_argument("--views", type=int, default=8, help="size of the augmented-view pool (the second augmentation)")
    p.add_argument("--steps", type=int, default=SCALES["cpu"].base["steps"])
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: steady timings on a shared machine)")
    p.add_argument("--out", type=Path, default=None, help="also write the table (markdown) here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    scale = SCALES["cpu"].base
    rows = []
    for per_class in (int(v) for v in args.per_class.split(",")):
        data = load("shapes", n_train=per_class * 10 + 500, per_class=per_class, n_test=10, seed=0)
        for method in args.methods.split(","):
            for views in (None, args.views):
                base = Config(method=method, teacher="vgg9", teacher_width=scale["teacher_width"], student="vgg4",
                              student_width=scale["student_width"], batch_size=scale["batch_size"],
                              steps=args.steps, per_class=per_class, augment_views=views, eval_every=10 ** 6)
                _run(data, base.replace(steps=3), False)  # warm-up (allocations, kernels), not timed
                plain, cached, ratios, stats = [], [], [], {}
                for _ in range(args.repeats):
                    plain.append(_run(data, base, False))
                    cache = TeacherCache()
                    cached.append(_run(data, base, cache))
                    ratios.append(plain[-1] / cached[-1])
                    stats = cache.stats()
                row = {"per_class": per_class, "method": method,
                       "augmentation": "fresh every epoch" if views is None else f"pool of {views} views",
                       "ms/step without": 1000 * statistics.median(plain) / args.steps,
                       "ms/step with cache": 1000 * statistics.median(cached) / args.steps,
                       "speed-up": statistics.median(ratios), "hit rate": stats["hit_rate"],
                       "cache MB": stats["bytes"] / 1e6}
                rows.append(row)
                print(to_markdown([row], floatfmt=".3g").splitlines()[-1], flush=True)
    head = (f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch thread(s), "
            f"torch {torch.__version__}; {args.steps} steps, batch {scale['batch_size']}, "
            f"vgg9 w{scale['teacher_width']} teacher, vgg4 w{scale['student_width']} student, median of {args.repeats}")
    table = to_markdown(rows, floatfmt=".3g")
    print(f"\n{head}\n\n{table}")
    if args.out:
        args.out.write_text(f"{head}\n\n{table}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
