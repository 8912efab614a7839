"""Runs in parallel on one machine: a pool of worker processes, one run each at a time.

:class:`ProcessExecutor` has the interface of :class:`jkt_lab.cluster.RayExecutor` (``teacher``,
``run``, ``summary``), so ``reproduce`` (and ``jkt-lab reproduce --executor processes``) use it the
same way, without Ray. It is for a machine with many cores, or a GPU that one small student
leaves mostly idle: each worker runs :func:`jkt_lab.experiments.run` with no store, with
``threads`` torch threads, and returns the record; **the parent alone appends records** to the
results file, in completion order, so the store stays append-only and a kill loses no finished run.
Runs are deterministic per config whatever the worker (randomness is a function of the seed and
the step), so the records equal those of a serial sweep on the same device with the same number of
torch threads (a different thread count sums floats in another order: differences near 1e-7).
"""
from __future__ import annotations

import multiprocessing as mp
import sys
from collections.abc import Iterable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

from tqdm.auto import tqdm

from ._checks import check_int
from .config import Config
from .experiments import get_teacher, load_data, needs_teacher, resolve_data, run
from .results import ResultStore, config_hash

__all__ = ["ProcessExecutor"]


def _init_worker(threads: int) -> None:
    import torch
    torch.set_num_threads(threads)


def _run_one(config_dict: dict, device: str) -> dict:
    return run(Config.from_dict(config_dict), store=None, device=device, progress=False)


class ProcessExecutor:
    """``workers`` processes (spawned), each with ``threads`` torch threads, on ``device``."""

    def __init__(self, workers: int, *, device: str = "auto", threads: int = 1, progress: bool = True):
        self.workers = check_int(workers, "workers", minimum=1)
        self.threads = check_int(threads, "threads", minimum=1)
        if not isinstance(device, str) or device.split(":")[0] not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
        self.device, self.progress = device, progress
        self.failures: list[dict] = []

    def __enter__(self) -> "ProcessExecutor":
        return self

    def __exit__(self, *exc) -> None:
        return None

    @property
    def gpu_per_run(self) -> bool:
        """Whether the runs go to a GPU (for ``reproduce --scale auto``)."""
        from .train import resolve_device
        return resolve_device(self.device).type == "cuda"

    def teacher(self, config: Config) -> dict:
        """Load or train the teacher here, in the parent, so workers find it in the runs directory."""
        return get_teacher(config, device=self.device, progress=self.progress)[1]

    def run(self, configs: Iterable[Config], store: ResultStore | str | Path) -> list[dict]:
        """Run every config not yet in ``store``; returns the records appended (completion order)."""
        store = ResultStore(store) if isinstance(store, (str, Path)) else store
        todo: dict[str, Config] = {}
        for c in configs:
            c = resolve_data(c)
            key = config_hash(c.to_dict())
            if not store.done(c.to_dict()):
                todo.setdefault(key, c)
        if not todo:
            return []
        first = next(iter(todo.values()))
        load_data(first, classes=first.classes, per_class=first.per_class)  # decode once, before the workers
        for c in {config_hash(c.teacher_config().to_dict()): c for c in todo.values() if needs_teacher(c)}.values():
            self.teacher(c)
        out = []
        bar = tqdm(total=len(todo), desc="runs", unit="run", disable=not self.progress, file=sys.stdout)
        with ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                                 initargs=(self.threads,)) as pool:
            pending = {pool.submit(_run_one, c.to_dict(), self.device): c for c in todo.values()}
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    c = pending.pop(fut)
                    try:
                        out.append(store.append(fut.result()))
                    except Exception as err:  # a failed run is reported; the others go on
                        self.failures.append({"run": f"{c.extra.get('variant', c.method)} per_class={c.per_class} "
                                                     f"seed={c.seed}", "node": "local", "error": f"{type(err).__name__}: {err}"})
                        print(f"failed: {self.failures[-1]['run']}: {self.failures[-1]['error']}", file=sys.stderr)
                    bar.update(1)
        bar.close()
        return out

    def summary(self) -> int:
        """Print the failures (if any) and return the exit status: 0 when every run succeeded, else 1."""
        if not self.failures:
            return 0
        print(f"{len(self.failures)} failed (rerun the same command to retry them):", file=sys.stderr)
        for f in self.failures:
            print(f"  {f['run']}: {f['error']}", file=sys.stderr)
        return 1
