"""Wall time of one sweep run serially and on a local Ray cluster with 1 and 2 workers, as ratios to
the serial time measured in the same run (needs the cluster extra: pip install -e ".[cluster]").

    python benchmarks/cluster_speedup.py                     # results/specs/shapes_few_shot.yaml, --quick sizes
    python benchmarks/cluster_speedup.py SPEC --full --workers 1,2,4

Every setting starts from an empty runs directory and results file, so each trains the teacher
again. Serial is ``experiments.sweep`` in this process, with torch's default threads and with one
thread (what each Ray worker gets); ``ray, N workers`` is ``ray.init(num_cpus=N)`` (one CPU per run)
then :class:`jkt_lab.cluster.RayExecutor`: its time counts the workers' start (importing torch)
but not Ray's own start, shown apart.
The load average is printed: on a shared machine the figures move with the other jobs.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from jkt_lab.cluster import RayExecutor
from jkt_lab.experiments import load_spec, quick_config, sweep
from jkt_lab.results import ResultStore, config_hash, to_markdown

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("spec", nargs="?", default=str(ROOT / "results/specs/shapes_few_shot.yaml"))
    parser.add_argument("--full", action="store_true", help="the spec's own sizes (default: --quick sizes)")
    parser.add_argument("--workers", default="1,2", help="comma-separated numbers of Ray workers")
    args = parser.parse_args(argv)
    import ray

    configs = load_spec(args.spec)
    if not args.full:
        configs = list({config_hash(q.to_dict()): q for q in map(quick_config, configs)}.values())
    work = Path(tempfile.mkdtemp(prefix="jkt_cluster_bench_"))
    print(f"{len(configs)} runs from {args.spec}{'' if args.full else ' (quick sizes)'}; {os.cpu_count()} CPUs "
          f"({platform.node()}), load average {os.getloadavg()[0]:.1f}", flush=True)
    rows = []

    def fresh(name):
        os.environ["JKT_LAB_RUNS"] = str(work / name / "runs")  # Ray workers inherit it at ray.init
        return ResultStore(work / name / "results.jsonl")

    threads = torch.get_num_threads()
    for label, n_threads in ((f"serial, {threads} torch threads", threads), ("serial, 1 torch thread", 1)):
        store = fresh(f"serial{n_threads}")
        torch.set_num_threads(n_threads)
        t0 = time.perf_counter()
        sweep(configs, store, device="cpu", progress=False, verbose=False)
        rows.append({"setting": label, "runs": len(store), "ray start (s)": None,
                     "sweep (s)": time.perf_counter() - t0})
        print(f"{label}: {rows[-1]['sweep (s)']:.1f} s", flush=True)
    torch.set_num_threads(threads)
    for n in (int(w) for w in args.workers.split(",")):
        store = fresh(f"ray{n}")
        t0 = time.perf_counter()
        ray.init(num_cpus=n, include_dashboard=False, log_to_driver=False)
        start = time.perf_counter() - t0
        try:
            t0 = time.perf_counter()
            with RayExecutor(device="cpu", progress=False) as executor:
                executor.run(configs, store)
            took = time.perf_counter() - t0
        finally:
            ray.shutdown()
        rows.append({"setting": f"ray, {n} worker{'s' if n > 1 else ''} (1 thread each)", "runs": len(store),
                     "ray start (s)": start, "sweep (s)": took})
        print(f"{rows[-1]['setting']}: {took:.1f} s (+ {start:.1f} s to start Ray)", flush=True)
    for row in rows:
        row["speed-up vs serial"] = rows[0]["sweep (s)"] / row["sweep (s)"]
        row["vs serial, 1 thread"] = rows[1]["sweep (s)"] / row["sweep (s)"]
    print()
    print(to_markdown(rows, floatfmt=".2f"))
    print(f"load average at the end: {os.getloadavg()[0]:.1f} ({os.cpu_count()} CPUs)")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
