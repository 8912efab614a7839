"""From a :class:`~jkt_lab.config.Config` to a stored result: data, teacher, student, fit, record.

This is the layer the command line, the widgets and the notebooks call. Teachers are trained
once per teacher config and cached under the runs directory (``JKT_LAB_RUNS``, default
``~/.cache/jkt_lab/runs``); students are recorded in a :class:`~jkt_lab.results.ResultStore`,
and a sweep skips every config already in the store.
"""
from __future__ import annotations

import contextlib
import copy
import itertools
import json
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

from . import data as data_mod
from ._checks import check_names
from .config import Config
from .methods import get_method
from .models import MultiHead, build_model, replace_head
from .pretrained import WeightsFileError, pretrained_teacher, read_weights, shipped_for
from .results import ResultStore, check_folder, config_hash, file_lock, make_record
from .saliency import jacobian_norm, saliency_cosine
from .train import Result, evaluate, fit, resolve_device, robustness

__all__ = ["runs_dir", "resolve_data", "load_data", "needs_teacher", "trains_teacher", "teacher_files",
           "cache_teacher", "get_teacher", "build_student", "run", "check_writable", "trained_student", "expand_grid",
           "sweep", "load_spec", "quick_config", "measure", "NOISE_SIGMAS", "PROBE"]

NOISE_SIGMAS = (0.0, 0.02, 0.05, 0.1, 0.2)
PROBE = 256  # test images on which a run measures input Jacobians (saliency cosine, Jacobian norms)


def runs_dir() -> Path:
    """Where teachers and checkpoints live: ``$JKT_LAB_RUNS`` or ``~/.cache/jkt_lab/runs``."""
    return Path(os.environ.get("JKT_LAB_RUNS", Path.home() / ".cache" / "jkt_lab" / "runs")).expanduser()


def resolve_data(config: Config, base: str | Path | None = None) -> Config:
    """``config`` with its ``data_path`` made absolute (a relative one is taken from ``base``,
    default the working directory) and ``data_fingerprint`` set to the content fingerprint of the
    data there (:func:`jkt_lab.data.fingerprint`), so the run's key, its record and its teacher's
    key all name the data. A config that already carries a fingerprint must match the data now at
    the path: changed data is an error, never a silent run on other data. Without ``data_path``:
    ``config`` itself."""
    if config.data_path is None:
        return config
    path = Path(config.data_path).expanduser()
    if not path.is_absolute():
        path = Path(base or Path.cwd()) / path
    path = path.resolve()
    if not path.exists():
        raise data_mod.DataNotFoundError(f"data_path {path} does not exist (dataset {config.dataset!r}, "
                                         f"data_path={config.data_path!r})")
    found = data_mod.fingerprint(path)
    if config.data_fingerprint not in (None, found):
        raise ValueError(f"the data at data_path {path} changed: its fingerprint is now {found}, the config was "
                         f"made for {config.data_fingerprint}; to run on the data as it is now, leave "
                         f"data_fingerprint unset (--data-fingerprint none)")
    return config.replace(data_path=str(path), data_fingerprint=found)


def load_data(config: Config, *, classes: tuple[int, ...] | None = None, per_class: int | None = None,
              seed: int | None = None) -> data_mod.Data:
    """The dataset of ``config`` (your own at ``data_path``, checked against ``data_fingerprint``:
    :func:`resolve_data`): validation split fixed (seed 0), classes selected, then the
    ``per_class`` few-shot subset drawn with the run's seed."""
    config = resolve_data(config)
    kwargs = {k: getattr(config, k) for k in ("n_train", "n_test", "image_size") if getattr(config, k) is not None}
    data = _read(config.dataset, path=config.data_path, **kwargs)
    if classes:
        data = data.select_classes(list(classes))
    if per_class is not None:
        data = data.few_shot(per_class, seed=config.seed if seed is None else seed)
    return data


_GENERATED: dict = {}  # the last generated dataset read (shapes: ~1 s of CPU per read), by its arguments


def _read(name: str, **kwargs) -> data_mod.Data:
    """``data.load(name, seed=0, **kwargs)``; a generated dataset is kept in memory between runs
    (a demo or a sweep reads the same one for every run; ``Data`` methods return new objects)."""
    if name != "shapes":
        return data_mod.load(name, seed=0, **kwargs)  # decoded arrays are cached on disk
    key = json.dumps(kwargs, sort_keys=True)
    if key not in _GENERATED:
        _GENERATED.clear()
        _GENERATED[key] = data_mod.load(name, seed=0, **kwargs)
    return _GENERATED[key]


def _model(name, width, num_classes, data, seed):
    return build_model(name, num_classes, in_channels=data.input_shape[0], mean=data.mean, std=data.std,
                       width=width, seed=seed)


def needs_teacher(config: Config) -> bool:
    """True when ``run(config)`` uses a teacher: its method matches one, or the student starts from it."""
    return get_method(config.method).needs_teacher or config.init == "finetune"


def trains_teacher(config: Config) -> bool:
    """True when :func:`get_teacher` trains ``config``'s teacher (and caches it in the runs directory);
    False for a teacher that ships with the package or an ImageNet network used as it is."""
    tconf = resolve_data(config).teacher_config()
    return not (tconf.teacher_pretrained and tconf.teacher_epochs == 0) and shipped_for(tconf) is None


def teacher_files(config: Config, root: Path | None = None) -> tuple[str, Path, Path]:
    """The key of ``config``'s teacher (its config's hash) and where its weights and info are cached."""
    key = config_hash(resolve_data(config).teacher_config().to_dict())
    folder = (root or runs_dir()) / "teachers"
    return key, folder / f"{key}.pt", folder / f"{key}.json"


def cache_teacher(config: Config, state_dict: Mapping[str, torch.Tensor], info: Mapping,
                  root: Path | None = None) -> None:
    """Put a teacher trained elsewhere (its ``state_dict`` and ``info``, as :func:`get_teacher`
    returns them) in the runs directory, so that :func:`get_teacher` loads it instead of training."""
    _, weights, meta = teacher_files(config, root)
    if weights.exists() and meta.exists():
        return
    _save_weights(state_dict, weights)
    _write_json(meta, info)


def get_teacher(config: Config, *, device="auto", progress: bool = True, root: Path | None = None,
                callback: Callable[[dict], None] | None = None) -> tuple[nn.Module, dict]:
    """The teacher of ``config``: a teacher shipped with the package (``jkt_lab.pretrained``) when
    one was trained with exactly this teacher config, else loaded from the runs directory, or
    trained (and saved) once.

    Returns ``(teacher, info)`` where ``info`` holds the teacher's config, metrics and wall time.
    """
    config = resolve_data(config)
    tconf = config.teacher_config()
    key, weights, meta = teacher_files(config, root)
    folder = weights.parent
    if tconf.teacher_pretrained and tconf.teacher_epochs == 0:
        # The paper's transfer source: an ImageNet network used as it is (1000 outputs).
        teacher = build_model(tconf.student, 1000, pretrained=True, seed=tconf.seed).eval()
        info = {"key": key, "config": tconf.to_dict(), "metrics": {"test_acc": None}, "history": [],
                "wall_time_s": 0.0, "device": "pretrained"}
        return teacher.to(resolve_device(device)), info
    shipped = shipped_for(tconf)
    if shipped is not None:  # a teacher that ships with the package: never trained again
        teacher, card = pretrained_teacher(shipped, device=resolve_device(device))
        info = {"key": key, "config": tconf.to_dict(), "metrics": {"test_acc": card["test_acc"]}, "history": [],
                "wall_time_s": card["wall_time_s"], "device": card["device"], "shipped": shipped}
        return teacher, info
    data = load_data(tconf, classes=tconf.classes)
    if tconf.teacher_pretrained:
        teacher = build_model(tconf.student, data.num_classes, in_channels=data.input_shape[0],
                              width=tconf.student_width, pretrained=True, seed=tconf.seed)
    else:
        teacher = _model(tconf.student, tconf.student_width, data.num_classes, data, tconf.seed)
    cached = _read_cached(weights, meta, "teacher")
    if cached is None:
        with file_lock(folder / f"{key}.lock"):  # two processes asking for one teacher: one trains it, one waits
            cached = _read_cached(weights, meta, "teacher")  # trained by the other meanwhile?
            if cached is None:
                cached = _train_teacher(teacher, data, tconf, key, folder, device, progress, callback)
    state, info = cached
    teacher.load_state_dict(state)
    teacher.eval()
    return teacher.to(resolve_device(device)), info


def _train_teacher(teacher, data, tconf, key, folder, device, progress, callback) -> tuple[dict, dict]:
    """Train ``teacher`` and cache it as ``key`` in ``folder``; returns its state dict and info."""
    result = fit(teacher, "ce", data, config=tconf, device=device, progress=progress,
                 checkpoint=folder / f"{key}.ckpt", callback=callback, desc=f"teacher {tconf.student} on {data.name}")
    info = {"key": key, "config": tconf.to_dict(), "metrics": result.metrics, "history": result.history,
            "wall_time_s": result.wall_time_s, "device": result.device}
    _save_weights(teacher, folder / f"{key}.pt")
    _write_json(folder / f"{key}.json", info)
    (folder / f"{key}.ckpt").unlink(missing_ok=True)
    (folder / f"{key}.ckpt.prev").unlink(missing_ok=True)
    return teacher.state_dict(), info


def _read_cached(weights: Path, meta: Path, what: str) -> tuple[dict, dict] | None:
    """A cache entry of the runs directory (weights and their JSON), or None when it is not
    there. An unreadable one (cut by a kill mid-write, or a file that is not plain weights, which
    is never unpickled) is named in a warning and removed, so that it is made again."""
    if not (weights.exists() and meta.exists()):
        return None
    try:
        info = json.loads(meta.read_text())
        if not isinstance(info, dict):
            raise ValueError("not a JSON object")
        return read_weights(weights), info
    except (OSError, ValueError) as exc:  # WeightsFileError is a ValueError
        damaged = exc if isinstance(exc, WeightsFileError) else f"file {meta} is unreadable ({exc})"
        warnings.warn(f"the cached {what}'s {damaged}; it is made again", stacklevel=3)
        for path in (weights, meta):
            with contextlib.suppress(OSError):
                path.unlink()
        return None


def build_student(config: Config, data: data_mod.Data, teacher: nn.Module | None) -> nn.Module:
    """A new student (``init="scratch"``) or a copy of the teacher with a new head
    (``init="finetune"``; for ``lwf`` the old head is kept beside the new one)."""
    if config.init == "scratch":
        if config.method == "lwf":
            raise ValueError("method 'lwf' fine-tunes the teacher: set init='finetune'")
        return _model(config.student, config.student_width, data.num_classes, data, config.seed)
    if teacher is None:
        raise ValueError("init='finetune' needs a teacher to start from")
    backbone = copy.deepcopy(teacher).cpu()
    for p in backbone.parameters():
        p.requires_grad_(True)
    if config.method == "lwf":
        return MultiHead(backbone, data.num_classes, seed=config.seed)
    return replace_head(backbone, data.num_classes, seed=config.seed)


def run(config: Config, *, store: ResultStore | str | Path | None = None, device="auto", progress: bool = True,
        callback: Callable[[dict], None] | None = None, noise_sigmas: Iterable[float] = NOISE_SIGMAS,
        val_noise_sigmas: Iterable[float] = (), skip_done: bool = True, wait: bool = True) -> dict | None:
    """Run one config end to end and return its record (also appended to ``store``, if given).

    The record's metrics hold test/val/train accuracy, accuracy under Gaussian input noise at
    each of ``noise_sigmas`` (``noise_acc``; on the validation split at ``val_noise_sigmas``:
    ``val_noise_acc``), the mean norm of the student's top-1 input Jacobian on the first
    :data:`PROBE` test images (``jacobian_norm``, :func:`~jkt_lab.saliency.jacobian_norm`), and
    with a teacher of the same outputs the teacher-student saliency cosine, the teacher's
    Jacobian norm on the same images (``teacher_jacobian_norm``) and its test accuracy.

    Before training, the store and the runs directory must be writable (:func:`check_writable`),
    and the run's key is claimed in the store, so that a second process skips or waits for it.
    With ``wait=False``, a run that another process is training now (its key claimed in the same
    store: :meth:`~jkt_lab.results.ResultStore.claim`) is left to it and None is returned.
    """
    if not isinstance(config, Config):
        raise TypeError(f"config must be a jkt_lab.Config, got {type(config).__name__}")
    method = get_method(config.method)
    config = resolve_data(config)
    if isinstance(store, (str, Path)):
        store = ResultStore(store)
    if store is not None and skip_done and store.done(config.to_dict()):
        return store.get(config.to_dict())
    key = config_hash(config.to_dict())
    check_writable(store)  # a read-only or full disk stops the run before it trains
    with (store.claim(key, wait=wait) if store is not None else contextlib.nullcontext(True)) as mine:
        if not mine:
            return None
        if store is not None and skip_done and store.done(config.to_dict()):
            return store.get(config.to_dict())  # another process ran it while this one waited
        saved = _unstored_record(key, store) if store is not None and skip_done else None
        if saved is not None:  # trained for this store, its record not stored then (a full disk): record it now
            return _store_record(saved, key, store)
        return _run(config, method, key, store, device, progress, callback, noise_sigmas, val_noise_sigmas)


def check_writable(store: ResultStore | str | Path | None = None) -> None:
    """Raise ``OSError`` (its ``filename`` the path that failed) unless ``store`` (if given) can
    be appended to and the runs directory written (:meth:`ResultStore.check_writable`)."""
    if store is None:
        check_folder(runs_dir())
    else:
        (ResultStore(store) if isinstance(store, (str, Path)) else store).check_writable(runs_dir())


def _student_files(key: str) -> tuple[Path, Path, Path]:
    """Where a trained student's weights and record are kept in the runs directory, and the
    marker (``.pending``: the store it was trained for) that is there until the store has the record."""
    folder = runs_dir() / "students"
    return folder / f"{key}.pt", folder / f"{key}.json", folder / f"{key}.pending"


def _unstored_record(key: str, store: ResultStore) -> dict | None:
    """The record of a run trained for ``store`` that never reached it, else None."""
    weights, meta, pending = _student_files(key)
    try:
        if json.loads(pending.read_text()) == str(store.path.resolve()) and weights.exists():
            record = json.loads(meta.read_text())
            return record if record.get("key") == key else None
    except (OSError, ValueError, AttributeError):
        pass
    return None


def _store_record(record: dict, key: str, store: ResultStore | None) -> dict:
    """Append ``record`` to ``store`` (if any) and keep it beside the student's weights."""
    _, meta, pending = _student_files(key)
    if store is not None:
        _write_json(pending, str(store.path.resolve()))
        record = store.append(record)
        pending.unlink()
    _write_json(meta, record)
    return record


def _run(config, method, key, store, device, progress, callback, noise_sigmas, val_noise_sigmas) -> dict:
    t0 = time.perf_counter()
    data = load_data(config, classes=config.classes, per_class=config.per_class)
    teacher, tinfo = None, None
    if needs_teacher(config):
        teacher, tinfo = get_teacher(config, device=device, progress=progress)
        if method.matches_logits and teacher.num_classes != data.num_classes:
            raise ValueError(
                f"teacher has {teacher.num_classes} outputs but the student's data has {data.num_classes} classes: "
                f"method {config.method!r} matches outputs; use the same classes, or a transfer method (at, at+jacobian, lwf)")
    student = build_student(config, data, teacher)
    result: Result = fit(student, config.method, data, teacher=teacher if method.needs_teacher else None,
                         config=config, device=device, progress=progress, callback=callback)
    metrics = {**result.metrics, **measure(student, data.to(result.device), teacher, noise_sigmas=noise_sigmas,
                                           val_noise_sigmas=val_noise_sigmas)}
    record = make_record(config.to_dict(), metrics, history=result.history, wall_time_s=time.perf_counter() - t0,
                         device=result.device, extra={"teacher_key": tinfo["key"] if tinfo else None,
                                                      "train_wall_time_s": result.wall_time_s})
    record = {"key": key, **record}
    # the weights and the record beside them first: a store that fails now (a full disk) loses no training
    weights, meta, _ = _student_files(key)
    _save_weights(student, weights)
    _write_json(meta, record)
    return _store_record(record, key, store)


def measure(model: nn.Module, data: data_mod.Data, teacher: nn.Module | None = None, *,
            noise_sigmas: Iterable[float] = NOISE_SIGMAS, val_noise_sigmas: Iterable[float] = ()) -> dict:
    """What :func:`run` records about a trained model beyond its accuracies (see there):
    ``noise_acc``, ``val_noise_acc`` (when ``val_noise_sigmas``), ``jacobian_norm``, and with a
    ``teacher`` of the same outputs ``saliency_cosine``, ``teacher_jacobian_norm`` and
    ``teacher_test_acc``; all on ``data``'s device."""
    metrics = {"noise_acc": {f"{r['sigma']:g}": r["acc"] for r in robustness(model, data, list(noise_sigmas))}}
    val_noise_sigmas = list(val_noise_sigmas)
    if val_noise_sigmas and data.x_val.shape[0]:
        metrics["val_noise_acc"] = {f"{r['sigma']:g}": r["acc"]
                                    for r in robustness(model, data, val_noise_sigmas, split="val")}
    probe = data.x_test[:PROBE]
    metrics["jacobian_norm"] = jacobian_norm(model, probe)
    if teacher is not None and teacher.num_classes == data.num_classes:  # the teacher on the student's test images
        metrics["saliency_cosine"] = saliency_cosine(model, teacher, probe)
        metrics["teacher_jacobian_norm"] = jacobian_norm(teacher, probe)
        metrics["teacher_test_acc"] = evaluate(teacher, data.x_test, data.y_test)["acc"]
    return metrics


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    """``write`` to a temporary file of its own beside ``path``, then rename it to ``path``: a
    kill mid-write leaves no cut file at ``path``, and concurrent writers do not collide."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _save_weights(model: nn.Module | Mapping[str, torch.Tensor], path: Path) -> None:
    """Write a model's (or a state dict's) weights atomically (:func:`_atomic`)."""
    state = model.state_dict() if isinstance(model, nn.Module) else model
    _atomic(path, lambda tmp: torch.save({k: v.detach().cpu() for k, v in state.items()}, tmp))


def _write_json(path: Path, obj) -> None:
    """Write a JSON file of the runs directory atomically (:func:`_atomic`)."""
    _atomic(path, lambda tmp: tmp.write_text(json.dumps(obj)))


def trained_student(config: Config, *, store: ResultStore | str | Path | None = None, device="auto",
                    progress: bool = True) -> tuple[nn.Module, dict]:
    """The trained student of ``config`` and its record: loaded from the runs directory when this
    config was run before (and its record is in ``store``, if given), else trained now."""
    config = resolve_data(config)
    weights, meta, _ = _student_files(config_hash(config.to_dict()))
    store = ResultStore(store) if isinstance(store, (str, Path)) else store
    cached = _read_cached(weights, meta, "student") if store is None or store.done(config.to_dict()) else None
    if cached is None:
        record = run(config, store=store, device=device, progress=progress, skip_done=False)
        cached = read_weights(weights), record
    state, record = cached
    data = load_data(config, classes=config.classes)
    teacher = get_teacher(config, device="cpu", progress=progress)[0] if config.init == "finetune" else None
    student = build_student(config, data, teacher)
    student.load_state_dict(state)
    return student.eval().to(resolve_device(device)), record


def quick_config(config: Config) -> Config:
    """The same run at toy size (quick mode): few images, narrow models, one teacher epoch, a
    few steps. Architectures stay the same (widths shrink where a model has a width)."""
    def narrow(name, width, toy):
        return width if name.startswith(("resnet", "wrn")) else toy
    return config.replace(n_train=min(config.n_train or 600, 600), n_test=min(config.n_test or 200, 200),
                          teacher_epochs=min(config.teacher_epochs, 1), epochs=min(config.epochs, 1),
                          steps=min(config.steps or 10, 10),
                          teacher_width=narrow(config.teacher, config.teacher_width, 8),
                          student_width=narrow(config.student, config.student_width, 4),
                          per_class=None if config.per_class is None else min(config.per_class, 20))


def expand_grid(base: Config, grid: Mapping[str, Iterable]) -> list[Config]:
    """Every combination of the grid's values applied to ``base`` (in a stable order)."""
    if not isinstance(grid, Mapping):
        raise TypeError(f"grid must be a mapping of field -> list of values, got {type(grid).__name__}")
    keys = list(grid)
    values = []
    for k in keys:
        v = grid[k]
        if isinstance(v, (str, bytes)) or not isinstance(v, Iterable):
            raise ValueError(f"grid[{k!r}] must be a list of values, got {v!r}")
        values.append(list(v))
    return [base.replace(**dict(zip(keys, combo))) for combo in itertools.product(*values)]


def sweep(configs: Iterable[Config], store: ResultStore | str | Path, *, device="auto", progress: bool = True,
          on_record: Callable[[dict], None] | None = None, verbose: bool = True) -> list[dict]:
    """Run each config not yet in ``store`` (resumable: finished runs are skipped); ``verbose``
    prints one line per run, ``progress`` shows progress bars."""
    store = ResultStore(store) if isinstance(store, (str, Path)) else store
    configs = list(configs)
    for i, config in enumerate(configs):  # every name and data path checked before the first run
        check_names(config, f"run {i + 1} of {len(configs)}: ")
    configs = [resolve_data(c) for c in configs]
    check_writable(store)
    records: list[dict | None] = [None] * len(configs)
    # Runs another process on the same store is training are left for last, then waited for.
    for wait in (False, True):
        for i, config in enumerate(configs):
            if records[i] is not None:
                continue
            done = store.done(config.to_dict())
            if verbose and not (wait and done):
                state = "done, skipped" if done else "running"
                print(f"[{i + 1}/{len(configs)}] {config.method} per_class={config.per_class} seed={config.seed}: "
                      f"{state}", flush=True)
            records[i] = run(config, store=store, device=device, progress=progress, wait=wait)
            if records[i] is None:
                if verbose:
                    print(f"[{i + 1}/{len(configs)}] another process is running it; back to it at the end", flush=True)
            elif on_record is not None:
                on_record(records[i])
    return records


def load_spec(path: str | Path) -> list[Config]:
    """Read a sweep spec (YAML or TOML): ``base`` (Config fields) and ``grid`` (field -> values),
    or a list of such blocks under ``sweeps``. Returns the configs. A relative ``data_path`` (in
    ``base`` or ``grid``) is taken from the spec file's folder."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"sweep spec {path} does not exist")
    text = path.read_text()
    if path.suffix == ".toml":
        import tomllib
        spec = tomllib.loads(text)
    elif path.suffix in (".yaml", ".yml"):
        import yaml
        spec = yaml.safe_load(text)
    else:
        raise ValueError(f"spec must be a .toml, .yaml or .yml file, got {path.name}")
    blocks = spec.get("sweeps", [spec]) if isinstance(spec, dict) else None
    if not blocks:
        raise ValueError(f"{path}: expected a mapping with 'base' and 'grid' (or a list under 'sweeps')")
    folder = path.resolve().parent

    def from_spec(p):
        return str(folder / Path(p).expanduser()) if isinstance(p, str) else p

    configs: list[Config] = []
    for block in blocks:
        base, grid = dict(block.get("base", {})), dict(block.get("grid", {}))
        if "data_path" in base:
            base["data_path"] = from_spec(base["data_path"])
        if isinstance(grid.get("data_path"), list):
            grid["data_path"] = [from_spec(p) for p in grid["data_path"]]
        try:
            for field, values in [*((k, [v]) for k, v in base.items()), *grid.items()]:
                for value in values if isinstance(values, list) else [values]:
                    check_names({field: value})
            configs += expand_grid(Config.from_dict(base), grid)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{path}: {exc}") from exc
    return configs
