"""Append-only JSON-lines results store keyed by a config hash, plus tables of results.

One experiment run = one record = one line of JSON. A record holds at least ``"config"`` (what
was run) and usually ``"metrics"`` and ``"history"``; the store adds ``"key"`` (the config's
hash) and ``"created"``. Each line goes to disk with a single ``write`` on an ``O_APPEND`` file
followed by ``fsync``, so a run killed mid-write leaves at most one incomplete line, which
reading skips with a warning. Reading keeps one record per key (the latest, as ``get`` does; two
processes that ran the same config both appended it) and says how many it left out. :meth:`ResultStore.claim` holds
a run's key while it trains (a lock file beside the store), so a second process on the same store
skips or waits instead of training the run again, and :meth:`ResultStore.check_writable` finds a
read-only or full disk before a run trains, not after. This module uses the standard library only
(the kill tests load it by file path): it converts torch/numpy values when those are already
imported, without importing them.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import errno
import hashlib
import json
import math
import os
import platform
import statistics
import sys
import threading
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from numbers import Integral, Real
from pathlib import Path, PurePath

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; concurrent processes are not kept apart there
    fcntl = None

__all__ = [
    "ResultStore",
    "ResultStoreWarning",
    "check_folder",
    "file_lock",
    "config_hash",
    "to_jsonable",
    "make_record",
    "flatten",
    "lookup",
    "table",
    "to_markdown",
    "to_html",
]


class ResultStoreWarning(UserWarning):
    """A line of a results file could not be read (e.g. a run killed mid-write) and was skipped."""


# --------------------------------------------------------------------------- JSON conversion


def to_jsonable(value, name: str = "record"):
    """Plain JSON types from numpy/torch scalars and arrays (-> lists), Paths (-> str),
    tuples (-> lists), dataclasses and objects with ``to_dict()``.

    Non-finite floats (NaN, +-inf) become ``None`` (JSON has no NaN); so a NaN metric reads
    back as ``null``/``None``. Mapping keys must be str (int keys are turned into str).
    """
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, Integral):
        return int(value)
    if isinstance(value, Real):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if isinstance(k, bool) or not isinstance(k, (str, Integral)):
                raise TypeError(f"{name} keys must be str, got {type(k).__name__} key {k!r}")
            k = k if isinstance(k, str) else str(int(k))
            out[k] = to_jsonable(v, f"{name}[{k!r}]")
        return out
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v, f"{name}[{i}]") for i, v in enumerate(value)]
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        return to_jsonable(value.detach().cpu().tolist(), name)
    np = sys.modules.get("numpy")
    if np is not None and isinstance(value, (np.ndarray, np.generic)):
        return to_jsonable(value.tolist(), name)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(dataclasses.asdict(value), name)
    if callable(getattr(value, "to_dict", None)):
        return to_jsonable(value.to_dict(), name)
    raise TypeError(
        f"{name} must be JSON-serialisable (numbers, str, bool, None, lists, dicts, numpy/torch "
        f"values, Paths), got {type(value).__name__}"
    )


def _check_config(config, name: str = "config") -> dict:
    if not isinstance(config, Mapping):
        raise TypeError(f"{name} must be a mapping (e.g. a dict of run settings), got {type(config).__name__}")
    return to_jsonable(config, name)


def config_hash(config: Mapping) -> str:
    """First 16 hex digits of the sha256 of the config's canonical JSON (sorted keys,
    compact separators, ``repr`` floats). Key order does not matter; ``1`` and ``1.0`` differ."""
    canonical = json.dumps(_check_config(config), sort_keys=True, separators=(",", ":"),
                           ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


# --------------------------------------------------------------------------- writable places, locks


def _probe(folder: Path) -> None:
    """Write, fsync and remove a small file in ``folder`` (made if missing): raises the OSError
    (naming the path) of a read-only, full or missing place."""
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / f".jkt_lab-probe-{os.getpid()}-{threading.get_ident()}.tmp"
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, b"\0" * 4096)  # a full disk fails here, not after hours of training
        os.fsync(fd)
    except OSError as err:  # os.write does not name the file
        raise OSError(err.errno, err.strerror or str(err), str(folder)) from err
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(probe)


def check_folder(folder: str | os.PathLike) -> None:
    """Raise ``OSError`` (its ``filename`` the path that failed) unless a file can be written in
    ``folder`` (made if missing)."""
    _probe(Path(folder))


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, *, wait: bool = True):
    """Hold an exclusive lock (``flock``) on the file ``path`` (made if missing) for the ``with``
    block; yields True, or False at once when ``wait`` is False and another process (or thread)
    holds it. The file is removed when released; without ``fcntl`` (Windows) no lock is taken."""
    if fcntl is None:
        yield True
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            break
        try:  # the previous holder removed the file on release: lock the one that is there now
            current = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            try:
                yield True
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                os.close(fd)
            return
        os.close(fd)
    yield False


# --------------------------------------------------------------------------- the store


class ResultStore:
    """Append-only JSON-lines file of run records, looked up by config hash (``"key"``).

    Reading never raises on a damaged file: incomplete or corrupt lines (and lines without a
    ``config``) are skipped with a :class:`ResultStoreWarning` naming the line; ``skipped`` then
    holds how many. :meth:`records` and ``get``/``done``/``in`` see one record per key: the
    latest.
    """

    def __init__(self, path: str | os.PathLike):
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a str or Path, got {type(path).__name__}")
        self.path = Path(path)
        self.skipped = 0  # lines the last read skipped
        self._cache: tuple[tuple, dict[str, dict]] | None = None

    def __repr__(self) -> str:
        return f"ResultStore({str(self.path)!r})"

    # -- writing -----------------------------------------------------------------------
    def append(self, record: Mapping) -> dict:
        """Write one record (must contain a ``"config"`` mapping); returns the stored dict."""
        if not isinstance(record, Mapping):
            raise TypeError(f"record must be a mapping, got {type(record).__name__}")
        if "config" not in record:
            raise ValueError("record must contain 'config' (the mapping of settings that identifies the run)")
        config = _check_config(record["config"], "record['config']")
        body = to_jsonable(record, "record")
        key = body.get("key")
        if key is None:
            key = config_hash(config)
        elif not isinstance(key, str):
            raise TypeError(f"record['key'] must be a str, got {type(key).__name__}")
        created = body.get("created") or datetime.now(timezone.utc).isoformat()
        stored = {"key": key, "created": created, **{k: v for k, v in body.items() if k not in ("key", "created")}}
        data = (json.dumps(stored, ensure_ascii=False, allow_nan=False, separators=(",", ":")) + "\n").encode("utf-8")

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    data = b"\n" + data  # close a line left incomplete by a killed writer
                written = os.write(fd, data)
                while written < len(data):  # rare short write: finish the same line
                    written += os.write(fd, data[written:])
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as err:  # a full or read-only disk: say which file (os.write does not)
            raise OSError(err.errno, err.strerror or str(err), str(self.path)) from err
        return stored

    @property
    def locks(self) -> Path:
        """The folder of the lock files that claim run keys: ``.<store name>.locks`` beside the store."""
        return self.path.with_name(f".{self.path.name}.locks")

    def claim(self, key: str, *, wait: bool = True):
        """A context that holds run ``key`` for this process while it trains (:func:`file_lock`);
        it yields False at once when ``wait`` is False and another process holds the key."""
        return file_lock(self.locks / f"{self._key(key)}.lock", wait=wait)

    def check_writable(self, *folders: str | os.PathLike) -> None:
        """Raise ``OSError`` (its ``filename`` the path that failed) unless a record can be
        appended to the store and files written in its locks folder and in each of ``folders``
        (e.g. the runs folder): run before training, so that a read-only or full disk stops a
        command before its first run, not after it."""
        if self.path.is_dir():
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(self.path))
        if self.path.exists():
            os.close(os.open(self.path, os.O_WRONLY | os.O_APPEND))
        for folder in (self.path.parent, self.locks, *folders):
            _probe(Path(folder))

    # -- reading -----------------------------------------------------------------------
    def records(self, *, unique: bool = True) -> list[dict]:
        """All complete records, in file order; damaged lines are skipped with a warning. With
        ``unique``, one record per key: the latest, in the place of the key's first record (the
        others are left out, with one warning that counts them)."""
        self.skipped = 0
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return []
        lines = raw.split(b"\n")
        ends_clean = raw.endswith(b"\n")
        out = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            last = number == len(lines) and not ends_clean
            try:
                record = json.loads(line.decode("utf-8"))
                if not isinstance(record, dict):
                    raise ValueError("not a JSON object")
                if not isinstance(record.get("config"), Mapping):
                    raise ValueError("no 'config' (the settings of a run)")
                if "key" not in record:
                    record["key"] = config_hash(record["config"])
            except (ValueError, TypeError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
                what = "incomplete last line (a run killed mid-write?)" if last else "corrupt line"
                warnings.warn(
                    f"{self.path}: skipped line {number} ({len(line)} bytes), {what}: {err}",
                    ResultStoreWarning, stacklevel=2,
                )
                self.skipped += 1
                continue
            out.append(record)
        if unique:
            latest = {record["key"]: record for record in out}
            if len(latest) < len(out):
                warnings.warn(
                    f"{self.path}: left out {len(out) - len(latest)} earlier record(s) of runs recorded "
                    f"more than once (two processes ran the same config?); the latest of each is kept",
                    ResultStoreWarning, stacklevel=2)
                out = list(latest.values())
        return out

    def _index(self) -> dict[str, dict]:
        """Latest record per key, re-read only when the file changed."""
        try:
            st = self.path.stat()
            signature = (st.st_ino, st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            return {}
        if self._cache is None or self._cache[0] != signature:
            index = {}
            for record in self.records(unique=False):
                index[record["key"]] = record
            self._cache = (signature, index)
        return self._cache[1]

    @staticmethod
    def _key(key_or_config) -> str:
        if isinstance(key_or_config, str):
            return key_or_config
        if isinstance(key_or_config, Mapping):
            return config_hash(key_or_config)
        raise TypeError(f"key_or_config must be a key (str) or a config mapping, got {type(key_or_config).__name__}")

    def get(self, key_or_config) -> dict | None:
        """Latest record with this key (or this config's key), or None."""
        record = self._index().get(self._key(key_or_config))
        return copy.deepcopy(record) if record is not None else None

    def done(self, config: Mapping) -> bool:
        """True when a record for this config is already stored (skip re-running it)."""
        return self._key(_check_config(config)) in self._index()

    def keys(self) -> set[str]:
        return set(self._index())

    def __contains__(self, key_or_config) -> bool:
        return self._key(key_or_config) in self._index()

    def __iter__(self) -> Iterator[dict]:
        return iter(self.records())

    def __len__(self) -> int:
        return len(self.records())


# --------------------------------------------------------------------------- records


def _version(package: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        module = sys.modules.get(package)
        return str(getattr(module, "__version__", "unknown"))


def make_record(config: Mapping, metrics: Mapping, history=None, wall_time_s=None, device=None,
                extra: Mapping | None = None) -> dict:
    """A record for :meth:`ResultStore.append`: config, metrics, history, run time, device
    (str; ``"unknown"`` if not given), host and package versions."""
    config = _check_config(config)
    if not isinstance(metrics, Mapping):
        raise TypeError(f"metrics must be a mapping of metric name to value, got {type(metrics).__name__}")
    if wall_time_s is not None:
        if isinstance(wall_time_s, bool) or not isinstance(wall_time_s, Real):
            raise TypeError(f"wall_time_s must be a number of seconds, got {type(wall_time_s).__name__}")
        wall_time_s = float(wall_time_s)
        if not math.isfinite(wall_time_s) or wall_time_s < 0:
            raise ValueError(f"wall_time_s must be a finite number >= 0, got {wall_time_s}")
    if extra is not None and not isinstance(extra, Mapping):
        raise TypeError(f"extra must be a mapping or None, got {type(extra).__name__}")
    record = {
        "config": config,
        "metrics": to_jsonable(metrics, "metrics"),
        "history": to_jsonable(history, "history"),
        "wall_time_s": wall_time_s,
        "device": "unknown" if device is None else str(device),
        "host": platform.node(),
        "versions": {
            "python": platform.python_version(),
            **{p: _version(p) for p in ("torch", "torchvision", "numpy", "jkt_lab")},
        },
    }
    if extra is not None:
        record["extra"] = to_jsonable(extra, "extra")
    return record


# --------------------------------------------------------------------------- tables


def flatten(record: Mapping, prefix: str = "") -> dict:
    """Nested mappings to one level with dotted keys: ``{"config": {"method": m}}`` -> ``{"config.method": m}``."""
    out = {}
    for k, v in record.items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, name + "."))
        else:
            out[name] = v
    return out


_MISSING = object()


def lookup(record: Mapping, path: str, default=None):
    """Value at a dotted path (``"metrics.test_acc"``); keys that contain dots are found too."""
    parts = path.split(".")

    def walk(node, parts):
        if not isinstance(node, Mapping):
            return _MISSING
        for i in range(len(parts), 0, -1):
            k = ".".join(parts[:i])
            if k in node:
                found = node[k] if i == len(parts) else walk(node[k], parts[i:])
                if found is not _MISSING:
                    return found
        return _MISSING

    found = walk(record, parts)
    return default if found is _MISSING else found


def _names(value, name: str) -> list[str]:
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise TypeError(f"{name} must be a list of column names (dotted paths), got {type(value).__name__}")
    for c in value:
        if not isinstance(c, str):
            raise TypeError(f"{name} must hold str column names, got {type(c).__name__}")
    return list(value)


def _is_number(v) -> bool:
    return isinstance(v, Real) and not isinstance(v, bool)


def table(records: Iterable[Mapping], columns: Sequence[str], *, group_by: Sequence[str] | None = None,
          metric: str | None = None) -> list[dict]:
    """Rows of dotted-path columns, one per record.

    With ``group_by`` and ``metric``: one row per distinct ``group_by`` value (first-seen order)
    with ``<metric>.mean``, ``<metric>.std`` (sample std, ddof=1; None when n < 2) and ``n`` (the
    number of records with a numeric metric) aggregated over the rest, e.g. over seeds. Other
    ``columns`` keep their value when it is the same across the group, else None.
    """
    columns = _names(columns, "columns")
    if isinstance(records, Mapping) or not isinstance(records, Iterable):
        raise TypeError(f"records must be an iterable of record mappings, got {type(records).__name__}")
    records = list(records)
    for i, r in enumerate(records):
        if not isinstance(r, Mapping):
            raise TypeError(f"records[{i}] must be a mapping, got {type(r).__name__}")
    if (group_by is None) != (metric is None):
        raise ValueError("group_by and metric must be given together (group rows, then aggregate the metric)")
    if group_by is None:
        return [{c: lookup(r, c) for c in columns} for r in records]
    group_by = _names(group_by, "group_by")
    if not isinstance(metric, str):
        raise TypeError(f"metric must be a column name (str), got {type(metric).__name__}")

    groups: dict[str, list[Mapping]] = {}
    for r in records:
        gkey = json.dumps([to_jsonable(lookup(r, g), g) for g in group_by], sort_keys=True)
        groups.setdefault(gkey, []).append(r)
    rows = []
    for members in groups.values():
        row = {g: lookup(members[0], g) for g in group_by}
        for c in columns:
            if c in group_by or c == metric:
                continue
            values = [lookup(m, c) for m in members]
            row[c] = values[0] if all(v == values[0] for v in values) else None
        values = [float(v) for v in (lookup(m, metric) for m in members)
                  if _is_number(v) and math.isfinite(v)]
        row[f"{metric}.mean"] = statistics.fmean(values) if values else None
        row[f"{metric}.std"] = statistics.stdev(values) if len(values) > 1 else None
        row["n"] = len(values)
        rows.append(row)
    return rows


def _text(value, floatfmt: str) -> str:
    """A cell's text: None blank, integers as they are, floats as ``floatfmt``, others as JSON."""
    if value is None:
        return ""
    if isinstance(value, bool) or isinstance(value, Integral):
        return str(value)
    if isinstance(value, Real):
        return format(float(value), floatfmt)
    if not isinstance(value, str):
        value = json.dumps(to_jsonable(value, "cell"))
    return value


def _cell(value, floatfmt: str) -> str:
    return _text(value, floatfmt).replace("|", "\\|").replace("\n", " ")


def _layout(rows, columns, floatfmt) -> tuple[list[Mapping], list[str], list[bool]]:
    """Checked rows, their columns (default: every key, first-seen order) and which are numeric."""
    if isinstance(rows, Mapping) or not isinstance(rows, Iterable):
        raise TypeError(f"rows must be a list of row mappings, got {type(rows).__name__}")
    rows = list(rows)
    if columns is None:
        columns = list(dict.fromkeys(k for r in rows for k in r))
    columns = _names(columns, "columns")
    if not isinstance(floatfmt, str):
        raise TypeError(f"floatfmt must be a format spec str such as '.2f', got {type(floatfmt).__name__}")
    try:
        format(1.0, floatfmt)
    except ValueError as err:
        raise ValueError(f"floatfmt must be a float format spec such as '.2f', got {floatfmt!r}") from err
    numeric = [
        any(r.get(c) is not None for r in rows) and all(r.get(c) is None or _is_number(r.get(c)) for r in rows)
        for c in columns
    ]
    return rows, columns, numeric


def to_markdown(rows: Sequence[Mapping], columns: Sequence[str] | None = None, floatfmt: str = ".2f") -> str:
    """A GitHub markdown table; numeric columns right-aligned, floats as ``floatfmt``, None blank."""
    rows, columns, numeric = _layout(rows, columns, floatfmt)
    if not columns:
        return ""
    lines = [
        "| " + " | ".join(_cell(c, floatfmt) for c in columns) + " |",
        "|" + "|".join("---:" if n else "---" for n in numeric) + "|",
    ]
    for r in rows:
        lines.append("| " + " | ".join(_cell(r.get(c), floatfmt) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def to_html(rows: Sequence[Mapping], columns: Sequence[str] | None = None, floatfmt: str = ".2f",
            caption: str | None = None) -> str:
    """The same table as :func:`to_markdown`, as an HTML ``<table>`` (text escaped; numeric
    columns carry ``class="num"`` for right alignment)."""
    from html import escape
    rows, columns, numeric = _layout(rows, columns, floatfmt)
    if not columns:
        return ""
    cls = [' class="num"' if n else "" for n in numeric]
    head = "".join(f"<th{k}>{escape(str(c))}</th>" for c, k in zip(columns, cls))
    body = "".join("<tr>" + "".join(f"<td{k}>{escape(_text(r.get(c), floatfmt))}</td>" for c, k in zip(columns, cls))
                   + "</tr>" for r in rows)
    cap = f"<caption>{escape(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
