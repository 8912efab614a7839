"""Content fingerprints of a user's data (a file, or a folder tree such as an ImageFolder).

A fingerprint names the data by what it holds, not where it lies or when it was touched: the
sha256 of every file's bytes, together with its path inside the folder (class folders are
labels). Runs, teachers and decoded-array caches are keyed by it, so changing one image gives
new keys. Reading every byte on every run would be slow for a large tree, so each file's hash is
cached by ``(size, mtime)`` in ``<cache_dir()>/fingerprints/``: a rerun reads only the files that
changed.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from .core import DataNotFoundError, _write_atomic, cache_dir

# A file modified within this many nanoseconds of being hashed could change again within the
# same mtime tick (coarse-mtime file systems); its hash is then not cached, and read again next time.
_RACY_NS = 2_000_000_000


def _files(root: Path) -> list[tuple[str, Path]]:
    """``(path relative to root, path)`` of every file below ``root`` (a file: itself, named ""),
    sorted; hidden files and folders (names starting with ".") are skipped."""
    if root.is_file():
        return [("", root)]
    out = []
    for d, dirs, names in os.walk(root, followlinks=True):
        dirs[:] = sorted(n for n in dirs if not n.startswith("."))
        for n in names:
            p = Path(d) / n
            if not n.startswith(".") and p.is_file():
                out.append((p.relative_to(root).as_posix(), p))
    return sorted(out)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fingerprint(path: str | os.PathLike) -> str:
    """The content fingerprint of the file or folder ``path``: the first 16 hex digits of the sha256
    over ``(relative path, sha256 of the bytes)`` of each of its files. Same bytes under the same
    names, same fingerprint, wherever the data lies; any changed, added, removed or renamed file
    changes it."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or Path, got {type(path).__name__}")
    root = Path(path).expanduser().resolve()
    if not root.exists():
        raise DataNotFoundError(f"data path {root} does not exist")
    memo_path = cache_dir() / "fingerprints" / f"{hashlib.sha1(str(root).encode()).hexdigest()[:16]}.json"
    try:
        memo = json.loads(memo_path.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):  # none yet, or unreadable: hash everything
        memo = {}
    keep, total = {}, hashlib.sha256()
    for rel, p in _files(root):
        st = p.stat()
        seen = memo.get(rel)
        if isinstance(seen, list) and seen[:2] == [st.st_size, st.st_mtime_ns]:
            digest = seen[2]
        else:
            digest = _sha256(p)
        if st.st_mtime_ns < time.time_ns() - _RACY_NS:
            keep[rel] = [st.st_size, st.st_mtime_ns, digest]
        total.update(f"{rel}\0{digest}\n".encode())
    if keep != memo:
        text = json.dumps({"path": str(root), "files": keep}).encode()
        _write_atomic(memo_path, lambda f: f.write(text))
    return total.hexdigest()[:16]
