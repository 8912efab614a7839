"""What one press of Run costs in notebook 03's panel: a CIFAR-10 kd+jacobian student, trained and evaluated.

    OMP_NUM_THREADS=1 python benchmarks/widget_run.py --threads 2 --repeats 2
    PYTHONPATH=<another checkout> python benchmarks/widget_run.py ...   # the same run with other code

The panel's run (``jkt_lab.widgets.distillation_panel``: ``jkt_lab.experiments.run`` of
``jkt_lab.nbtools.course_config(quick=False, dataset="cifar10")``: the shipped VGG-9 width-32
teacher, a VGG-4 width-16 student, 10 images per class, 300 steps of batches of 64, a history
row every 50 epochs, then the record's measurements: test and validation accuracy, accuracy
under noise, Jacobian norms and cosines), into a temporary store, timed from the call to the
record, in wall time and in the process's CPU time (over all its threads; with one thread,
what the run takes on an idle core: on a shared machine the wall time grows with the load, the
CPU time hardly does). ``--views K`` adds runs drawing augmentation from a pool of K views
(``Config.augment_views``), alternating with the fresh-augmentation runs. The decoded data and
the teacher are loaded once before timing (the notebook has them by then). The load average is
printed before and after: the machine is shared.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

import jkt_lab
from jkt_lab.experiments import get_teacher, load_data, run
from jkt_lab.nbtools import course_config


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--views", default="", help="pool sizes K to time beside fresh augmentation, comma-separated")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    base = course_config(quick=False, dataset="cifar10")
    variants = [("fresh augmentation", base)] + [
        (f"pool of {k} views", base.replace(augment_views=int(k))) for k in args.views.split(",") if k]
    load_data(base, per_class=base.per_class)
    get_teacher(base, device="cpu", progress=False)
    print(f"jkt_lab from {Path(jkt_lab.__file__).parent}, torch {torch.__version__}, {torch.get_num_threads()} "
          f"thread(s); load average before: {os.getloadavg()}", flush=True)
    times: dict[str, list[tuple[float, float, float]]] = {label: [] for label, _ in variants}
    for r in range(args.repeats):
        for label, config in variants:
            with tempfile.TemporaryDirectory() as tmp:
                t0, c0 = time.perf_counter(), time.process_time()
                rec = run(config, store=Path(tmp) / "runs.jsonl", device="cpu", progress=False)
                wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            times[label].append((wall, cpu, rec["extra"]["train_wall_time_s"]))
            print(f"  {label}: {wall:.1f} s wall ({rec['extra']['train_wall_time_s']:.1f} s of it training), "
                  f"{cpu:.1f} s CPU, test acc {100 * rec['metrics']['test_acc']:.1f}%, "
                  f"load average {os.getloadavg()[0]:.1f}", flush=True)
    for label, t in times.items():
        print(f"{label}: median {statistics.median(w for w, _, _ in t):.1f} s wall, "
              f"{statistics.median(c for _, c, _ in t):.1f} s CPU ({len(t)} run(s))")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
