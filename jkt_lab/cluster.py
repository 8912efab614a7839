"""Sweeps on a Ray cluster: each run a Ray task, one crash-safe results file on the driver.

``pip install -e ".[cluster]"`` adds Ray; ``jkt-lab sweep SPEC --executor ray [--address ADDRESS]``
(and ``jkt-lab reproduce --executor ray``) use :class:`RayExecutor`. Ray is imported only when an
executor first connects, so the default (serial) path never loads it.

- **One task per run.** A task calls :func:`jkt_lab.experiments.run` with no store and returns the
  record; it asks Ray for ``cpus_per_run`` CPUs and, when the runs go to a GPU (``device="cuda"``,
  or ``"auto"`` on a cluster that has GPUs), one GPU.
- **The driver alone writes the results file**, one :meth:`~jkt_lab.results.ResultStore.append`
  (``fsync``-ed line) per record, in completion order (``ray.wait``), so the store stays
  append-only and a kill of the driver or of a worker loses no finished run. Runs already in the
  store are skipped, and Ray retries a task whose worker process or node died (``max_retries``).
- **Teachers are trained once, before the students that need them.** Runs are grouped by teacher
  key (the hash of ``config.teacher_config()``); each distinct teacher is loaded from the driver's
  runs directory, or trained by one task, and its student tasks take that task's result as an
  argument, so Ray starts them only once it is there.
- **Teachers reach the workers through Ray's object store**, as ``state_dict`` and ``info``
  (``ray.put`` when the driver already has it; else the teacher task's return value). A worker
  writes them into its own runs directory under the teacher key
  (:func:`~jkt_lab.experiments.cache_teacher`) and :func:`~jkt_lab.experiments.get_teacher` loads
  them from there. Why not a shared runs directory: cluster nodes rarely share a file system, a
  teacher's weights are small (the paper's VGG-9 is a few MB; each node fetches them once), and
  nodes then never write the same files over NFS. The driver also caches each teacher it receives,
  so a rerun does not train it again. Teachers that need no training travel otherwise: the
  shipped ones (:mod:`jkt_lab.pretrained`) with the package itself, ImageNet networks used as they
  are (``teacher_pretrained`` with ``teacher_epochs=0``) through each worker's torchvision.
- **Data on workers** comes from each node's own ``JKT_LAB_DATA`` (or torchvision's download). A
  worker without it fails its task with the dataset's own error
  (:class:`~jkt_lab.data.DataNotFoundError`); the driver prints it with the worker's node address,
  goes on with the other runs, and :meth:`RayExecutor.summary` lists every failure at the end.
  A config's own ``data_path`` must hold the same files on the driver (which fingerprints them, so
  that run keys name the data) and on every worker (a worker whose files differ fails the run).
- **Progress**: one bar on the driver (runs done / total, failures), and a line per finished run
  naming the node it ran on. Trained students stay in the runs directory of the node that trained
  them (the record, not the weights, comes back).
"""
from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ._checks import check_int, check_positive
from .config import Config
from .experiments import (cache_teacher, get_teacher, needs_teacher, resolve_data, run, teacher_files,
                          trains_teacher)
from .results import ResultStore, config_hash

__all__ = ["RayExecutor"]

INSTALL_HINT = "the ray executor needs Ray: pip install -e \".[cluster]\" (or pip install \"ray>=2.9\")"


def _ray():
    try:
        import ray
    except ImportError as err:
        raise ModuleNotFoundError(f"{INSTALL_HINT} ({err})") from err
    return ray


def _describe(config: Config) -> str:
    return (f"{config.extra.get('variant', config.method)} {config.dataset} per_class={config.per_class} "
            f"seed={config.seed} [{config_hash(config.to_dict())[:8]}]")


# --------------------------------------------------------------------------- on the workers


def _tells_node(task):
    """A task that returns ``(result, node address)``; an exception leaves it carrying the address
    as ``node_address`` (a RayTaskError that ``ray.get`` re-raises does not say where it ran)."""
    @functools.wraps(task)
    def on_worker(*args):
        node = _ray().util.get_node_ip_address()
        try:
            return task(*args), node
        except Exception as err:
            err.node_address = node
            raise
    return on_worker


@_tells_node
def _teacher_task(config: Config, device: str):
    """The teacher of ``config`` (trained here once, or found in this node's runs directory)."""
    teacher, info = get_teacher(config, device=device, progress=False)
    return {k: v.detach().cpu() for k, v in teacher.state_dict().items()}, info


@_tells_node
def _run_task(config: Config, teacher, device: str):
    """One run; its teacher, ``((state_dict, info), node)`` or None, is cached on this node first."""
    if teacher is not None:
        (state, info), _ = teacher
        cache_teacher(config, state, info)
    return run(config, store=None, device=device, progress=False)


# --------------------------------------------------------------------------- on the driver


class RayExecutor:
    """Runs lists of :class:`~jkt_lab.config.Config` on a Ray cluster (see the module docstring).

    ``address``: the cluster to join (``"auto"``, ``"HEAD_IP:6379"``, ``"ray://..."``); None starts
    a local one on this machine, unless Ray is already initialised (then that connection is used).
    ``device``: ``"auto"``, ``"cpu"`` or ``"cuda"``, as for :func:`jkt_lab.experiments.run`.
    Use as a context manager (a Ray it started is shut down on exit); failures collect in
    ``failures`` (dicts with ``run``, ``node``, ``error``).
    """

    def __init__(self, address: str | None = None, *, device: str = "auto", progress: bool = True,
                 cpus_per_run: float = 1, max_retries: int = 3):
        if address is not None and (not isinstance(address, str) or not address.strip()):
            raise ValueError(f"address must be a Ray cluster address such as 'auto' or 'HEAD_IP:6379', got {address!r}")
        if not isinstance(device, str) or device.split(":")[0] not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
        self.address, self.device, self.progress = address, device, progress
        self.cpus_per_run = check_positive(cpus_per_run, "cpus_per_run")
        self.max_retries = check_int(max_retries, "max_retries", minimum=0)
        self.failures: list[dict] = []
        self._ray = None
        self._started = False
        self._gpus = 0
        self._teachers: dict[str, object] = {}  # teacher key -> ObjectRef of ((state_dict, info), node)

    def __repr__(self) -> str:
        return f"RayExecutor(address={self.address!r}, device={self.device!r})"

    # -- connection ----------------------------------------------------------------------
    def _connect(self):
        if self._ray is not None:
            return self._ray
        ray = _ray()
        if not ray.is_initialized():
            kwargs = {"address": self.address} if self.address else {"include_dashboard": False}
            ray.init(**kwargs)
            self._started = True
        self._ray = ray
        cluster_gpus = ray.cluster_resources().get("GPU", 0)
        if self.device.startswith("cuda") and not cluster_gpus:
            raise ValueError(f"device={self.device!r} asks for a GPU per run, but the Ray cluster has none; "
                             f"use device='cpu' or 'auto'")
        self._gpus = 1 if self.device.startswith("cuda") or (self.device == "auto" and cluster_gpus) else 0
        return ray

    def close(self) -> None:
        """Shut Ray down if this executor started it."""
        if self._started and self._ray is not None:
            self._ray.shutdown()
        self._ray, self._started = None, False

    def __enter__(self) -> "RayExecutor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def gpu_per_run(self) -> bool:
        """Whether each run gets a GPU: ``device="cuda"``, or ``"auto"`` on a cluster with GPUs."""
        if self.device != "auto":
            return self.device.startswith("cuda")
        self._connect()
        return bool(self._gpus)

    def _options(self) -> dict:
        return {"num_cpus": self.cpus_per_run, "num_gpus": self._gpus, "max_retries": self.max_retries}

    @property
    def _worker_device(self) -> str:
        return "cuda" if self._gpus else "cpu"  # the task sees only the GPU Ray gave it

    # -- teachers ------------------------------------------------------------------------
    def _teacher_ref(self, config: Config):
        """(ObjectRef of ``((state_dict, info), node)``, the teacher of ``config``; True when a task
        was started to train it)."""
        key, weights, meta = teacher_files(config)
        if key in self._teachers:
            return self._teachers[key], False
        ray = self._connect()
        if weights.exists() and meta.exists():
            state = torch.load(weights, map_location="cpu", weights_only=True)
            ref, started = ray.put(((state, json.loads(meta.read_text())), "the driver")), False
        else:
            task = ray.remote(_teacher_task).options(**self._options())
            ref, started = task.remote(config, self._worker_device), True
        self._teachers[key] = ref
        return ref, started

    def _teacher_done(self, config: Config, value) -> dict:
        (state, info), node = value
        cache_teacher(config, state, info)  # the driver keeps it too: a rerun does not train it again
        acc = info["metrics"].get("test_acc")
        self._say(f"teacher {info['key']} ({config.teacher} on {config.dataset}) trained on node {node} in "
                  f"{info['wall_time_s']:.1f} s" + (f": test accuracy {100 * acc:.1f}%" if acc is not None else ""))
        return info

    def teacher(self, config: Config) -> dict | None:
        """Train (once, on the cluster) or load the teacher of ``config``; cache it in the driver's runs
        directory and return its info, or None when it failed (the failure is reported)."""
        if not trains_teacher(config):  # it comes with the package (or torchvision) on every node
            return get_teacher(config, device="cpu", progress=False)[1]
        key, weights, meta = teacher_files(config)
        if key not in self._teachers and weights.exists() and meta.exists():
            return json.loads(meta.read_text())  # the driver has it: no need to start Ray
        ray = self._connect()
        ref, started = self._teacher_ref(config)
        try:
            value = ray.get(ref)
        except ray.exceptions.RayError as err:
            self._failed(f"teacher of {_describe(config)}", err)
            return None
        return self._teacher_done(config, value) if started else value[0][1]

    # -- runs ----------------------------------------------------------------------------
    def run(self, configs: Iterable[Config], store: ResultStore | str | Path) -> list[dict]:
        """Run every config not yet in ``store`` on the cluster; returns the records appended (in
        completion order). Failed runs are reported and collected in ``failures``."""
        store = ResultStore(store) if isinstance(store, (str, Path)) else store
        if not isinstance(store, ResultStore):
            raise TypeError(f"store must be a ResultStore or a path, got {type(store).__name__}")
        unique: dict[str, Config] = {}
        for i, c in enumerate(configs):
            if not isinstance(c, Config):
                raise TypeError(f"configs[{i}] must be a jkt_lab.Config, got {type(c).__name__}")
            c = resolve_data(c)  # a data_path is checked here (keys name the data), as a serial sweep does
            unique.setdefault(config_hash(c.to_dict()), c)
        if not unique:
            return []
        todo = [c for c in unique.values() if not store.done(c.to_dict())]
        self._say(f"{len(unique)} runs, {len(unique) - len(todo)} already done, {len(todo)} to run on Ray")
        if not todo:
            return []
        ray = self._connect()
        task = ray.remote(_run_task).options(**self._options())
        pending = {}  # ObjectRef -> ("teacher" | "run", config)
        for c in todo:
            teacher = None
            if needs_teacher(c) and trains_teacher(c):
                teacher, started = self._teacher_ref(c)
                if started:
                    pending[teacher] = ("teacher", c)
            pending[task.remote(c, teacher, self._worker_device)] = ("run", c)
        records, failed, t0 = [], 0, time.perf_counter()
        with tqdm(total=len(unique), initial=len(unique) - len(todo), desc="runs", unit="run",
                  disable=not self.progress, file=sys.stderr) as bar:
            while pending:
                (ref,), _ = ray.wait(list(pending), num_returns=1)
                kind, c = pending.pop(ref)
                try:
                    value = ray.get(ref)
                except ray.exceptions.RayError as err:
                    self._failed(("teacher of " if kind == "teacher" else "") + _describe(c), err)
                    if kind == "run":
                        failed += 1
                        bar.set_postfix(failed=failed)
                        bar.update(1)
                    continue
                if kind == "teacher":
                    self._teacher_done(c, value)
                    continue
                record, node = value
                records.append(store.append(record))
                acc = record["metrics"].get("test_acc")
                self._say(f"[{len(records) + failed}/{len(todo)}] {_describe(c)}: done on node {node} "
                          f"({record['host']}) in {record['wall_time_s']:.1f} s" +
                          (f", test accuracy {100 * acc:.1f}%" if acc is not None else ""))
                bar.update(1)
        self._say(f"{len(records)} runs done, {failed} failed, in {time.perf_counter() - t0:.1f} s on Ray")
        return records

    # -- reporting -----------------------------------------------------------------------
    def _say(self, line: str) -> None:
        tqdm.write(line, file=sys.stdout)
        sys.stdout.flush()

    def _failed(self, what: str, err: Exception) -> None:
        # A task's own exception arrives as a RayTaskError carrying it (cause), and _tells_node put the
        # worker's address on it; a dead worker or node after the last retry arrives as another RayError.
        cause = getattr(err, "cause", None) or err
        node = getattr(cause, "node_address", None) or "unknown"
        message = f"{type(cause).__name__}: {str(cause).strip().splitlines()[0] if str(cause).strip() else ''}"
        self.failures.append({"run": what, "node": node, "error": message})
        print(f"FAILED {what} on node {node}: {message}", file=sys.stderr, flush=True)

    def summary(self) -> int:
        """Print the failures (if any) and return the exit status: 0 when every run succeeded, else 1."""
        if not self.failures:
            return 0
        print(f"{len(self.failures)} failed (rerun the same command to retry them; finished runs are kept):",
              file=sys.stderr)
        for f in self.failures:
            print(f"  {f['run']} on node {f['node']}: {f['error']}", file=sys.stderr)
        return 1
