"""CIFAR-10/100 in torchvision's on-disk format (downloaded on first use when online), and
CIFAR-10 as JPEGs in a zip or an extracted tree (ImageFolder layout ``train/``, ``test/``), the
offline fallback of ``cifar10``."""
from __future__ import annotations

import os
import warnings
import zipfile
from pathlib import Path

import numpy as np

from .core import DataNotFoundError, Raw, Request, _cached, _stat_key, cache_dir, data_root, from_arrays
from .files import _chunks, _imagefolder_arrays, _parallel, _tree_key

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
CIFAR10_ZIP_NAME = "cifar10-jpeg.zip"

_REPO_ROOT = Path(__file__).resolve().parents[2]
_warned_jpeg = False


class JpegFallbackWarning(UserWarning):
    """``cifar10`` was loaded from the JPEG copy (lossy) because torchvision's files are not
    there. The course says where its data come from once, in plain words
    (:func:`jkt_lab.nbtools.course_summary`), and silences this warning in its notebooks."""
_open_zips: dict[str, zipfile.ZipFile] = {}


# ----------------------------------------------------------------------------------------------
# CIFAR-10 JPEG zip
# ----------------------------------------------------------------------------------------------
def _zip_candidates() -> list[Path]:
    bases = [_REPO_ROOT, Path.cwd()]
    out = [b / ".data" / CIFAR10_ZIP_NAME for b in bases]
    out += [b.parent / "shared" / "data" / CIFAR10_ZIP_NAME for b in bases]
    out.append(data_root() / CIFAR10_ZIP_NAME)
    seen, unique = set(), []
    for p in out:
        if str(p) not in seen:
            seen.add(str(p))
            unique.append(p)
    return unique


def _find_cifar10_zip(path=None) -> tuple[Path | None, list[Path]]:
    """(zip or directory found, places looked). ``path`` > ``$JKT_LAB_CIFAR10_ZIP`` > search."""
    if path is not None:
        return (Path(path) if Path(path).exists() else None), [Path(path)]
    env = os.environ.get("JKT_LAB_CIFAR10_ZIP")
    if env:
        p = Path(env).expanduser()
        return (p if p.exists() else None), [p]
    looked = _zip_candidates()
    for p in looked:
        if p.is_file():
            return p, looked
    return None, looked


def _decode_zip_members(zip_path: str, members: list[str]) -> np.ndarray:
    """uint8 (k, H, W, 3) of JPEG/PNG members, read straight from the zip (no extraction)."""
    import io

    from PIL import Image

    z = _open_zips.get(zip_path)
    if z is None:
        z = _open_zips[zip_path] = zipfile.ZipFile(zip_path)
    images = []
    for m in members:
        with Image.open(io.BytesIO(z.read(m))) as im:
            images.append(np.asarray(im.convert("RGB")))
    shapes = {a.shape for a in images}
    if len(shapes) > 1:
        raise ValueError(f"zip {zip_path}: images differ in size ({sorted(shapes)}); expected one size")
    return np.stack(images)


def _zip_imagefolder_samples(names: list[str]) -> tuple[list[str], dict[str, list[tuple[str, int]]]]:
    """ImageFolder's rules applied to a zip listing: classes are the sorted folder names under
    ``train/``; samples go class by class, files in ``sorted(os.walk(...))`` order, filtered by
    torchvision's ``IMG_EXTENSIONS``. (Checked against ``ImageFolder`` on an extracted copy in
    the tests.)"""
    import posixpath

    from torchvision.datasets.folder import IMG_EXTENSIONS

    names = [n.replace("\\", "/") for n in names]
    tops = {n.split("/")[0] for n in names if "/" in n and not n.startswith(("__MACOSX", "."))}
    prefix = ""
    if "train" not in tops and len(tops) == 1:
        prefix = tops.pop() + "/"
    files = [n[len(prefix):] for n in names if n.startswith(prefix) and not n.endswith("/")]
    dirs = {posixpath.dirname(n) for n in files} | {n[len(prefix):].rstrip("/") for n in names
                                                       if n.startswith(prefix) and n.endswith("/")}
    classes = sorted({d.split("/")[1] for d in dirs if d.startswith("train/") and d.count("/") >= 1})
    if not classes:
        raise ValueError("zip has no train/<class>/ folders (ImageFolder layout expected)")
    idx = {c: i for i, c in enumerate(classes)}
    samples: dict[str, list[tuple[str, int]]] = {}
    for split in ("train", "val", "test"):
        found = []
        for n in files:
            parts = n.split("/")
            if len(parts) >= 3 and parts[0] == split and n.lower().endswith(IMG_EXTENSIONS):
                if parts[1] not in idx:
                    raise ValueError(f"zip folder {split}/{parts[1]}/ is not a class of train/")
                found.append((idx[parts[1]], posixpath.dirname(n), posixpath.basename(n), prefix + n))
        if found:
            found.sort()
            samples[split] = [(full, c) for c, _, _, full in found]
    empty = [c for c in classes if not any(t == idx[c] for _, t in samples.get("train", []))]
    if empty:
        raise ValueError(f"zip train/ class folder(s) without images: {empty}")
    return classes, samples


def _cifar10_jpeg_arrays(source: Path) -> dict[str, np.ndarray]:
    """Decoded uint8 arrays of the JPEG CIFAR-10 (zip or extracted tree), cached by size+mtime."""
    source = Path(source)
    if source.is_dir():
        return _cached("cifar10-jpeg-dir", _tree_key(source),
                       lambda: _imagefolder_arrays(source, None, "decoding cifar10-jpeg"))
    st = source.stat()
    key = ["zip", st.st_size, st.st_mtime_ns]

    def build():
        with zipfile.ZipFile(source) as z:
            classes, samples = _zip_imagefolder_samples(z.namelist())
        out = {"classes": np.array(classes)}
        try:
            for split, lst in samples.items():
                parts = _chunks([p for p, _ in lst], 2500)
                arrays = _parallel(_decode_zip_members, [(str(source), p) for p in parts],
                                   [len(p) for p in parts], f"decoding cifar10-jpeg {split}")
                out[f"x_{split}"] = np.ascontiguousarray(np.concatenate(arrays).transpose(0, 3, 1, 2))
                out[f"y_{split}"] = np.array([t for _, t in lst], dtype=np.int64)
        finally:
            z = _open_zips.pop(str(source), None)
            if z is not None:
                z.close()
        if "x_test" not in out:
            raise ValueError(f"zip {source} has no test/<class>/ images")
        return out

    return _cached("cifar10-jpeg", key, build)


def _missing_zip_error(looked: list[Path]) -> DataNotFoundError:
    places = ", ".join(str(p) for p in looked)
    return DataNotFoundError(
        f"CIFAR-10 JPEG zip ({CIFAR10_ZIP_NAME}) not found; looked at: {places}. Pass path=..., or set "
        f"JKT_LAB_CIFAR10_ZIP to the zip, or put it in <repo>/.data/{CIFAR10_ZIP_NAME}. It holds "
        f"train/<class>/NNNN.jpg and test/<class>/NNNN.jpg (torchvision ImageFolder layout).")


# ----------------------------------------------------------------------------------------------
# torchvision CIFAR-10/100
# ----------------------------------------------------------------------------------------------
def _cifar_class(name: str):
    from torchvision.datasets import CIFAR10, CIFAR100

    return CIFAR10 if name == "cifar10" else CIFAR100


def _cifar_error(name: str, root: Path, reason: str) -> DataNotFoundError:
    cls = _cifar_class(name)
    files = [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    url = CIFAR10_URL if name == "cifar10" else CIFAR100_URL
    return DataNotFoundError(
        f"{name}: {reason}. torchvision expects the directory {root / cls.base_folder} holding "
        f"{', '.join(files)}. Download {url} and extract it into {root} (or load with download=True "
        f"on a machine with internet). The data root is the root argument, else the JKT_LAB_DATA "
        f"environment variable, else {cache_dir() / 'data'}.")


def _torchvision_files(cls, root: Path) -> list[Path]:
    """The files torchvision's ``cls`` (CIFAR10/CIFAR100) reads under ``root``."""
    base = root / cls.base_folder
    return [base / f for f, _ in cls.train_list + cls.test_list] + [base / cls.meta["filename"]]


def _cifar_arrays(name: str, root: Path, download: bool | None) -> tuple[dict, str]:
    """(uint8 arrays, dataset name actually used) for cifar10/cifar100 in torchvision's format."""
    global _warned_jpeg
    cls = _cifar_class(name)
    base = root / cls.base_folder
    files = _torchvision_files(cls, root)
    if not all(f.is_file() for f in files):
        if name == "cifar10":
            found, _ = _find_cifar10_zip()
            if found is not None:
                if not _warned_jpeg:
                    warnings.warn(
                        f"cifar10: torchvision files not found under {root}; using the JPEG copy {found} "
                        f"(JPEG-lossy, about 5.8/255 per pixel from the originals)", JpegFallbackWarning, stacklevel=4)
                    _warned_jpeg = True
                return _cifar10_jpeg_arrays(found), "cifar10-jpeg"
        if download is False:
            raise _cifar_error(name, root, f"files not found under {root} and download=False")
        try:
            cls(str(root), train=True, download=True)
        except Exception as err:  # URLError, HTTPError, socket errors, md5 failures, ...
            raise _cifar_error(name, root, f"files not found under {root} and the download failed "
                                           f"({type(err).__name__}: {err})") from err

    def build():
        try:
            train = cls(str(root), train=True, download=False)
            test = cls(str(root), train=False, download=False)
        except RuntimeError as err:
            raise _cifar_error(name, root, f"files under {base} failed torchvision's md5 integrity "
                                           f"check ({err}); delete and download them again") from err
        return {"x_train": np.ascontiguousarray(train.data.transpose(0, 3, 1, 2)),
                "y_train": np.asarray(train.targets, np.int64),
                "x_test": np.ascontiguousarray(test.data.transpose(0, 3, 1, 2)),
                "y_test": np.asarray(test.targets, np.int64),
                "classes": np.array(train.classes)}

    return _cached(name, _stat_key(files), build), name


def cifar10_available(root: str | Path | None = None) -> Path | None:
    """Where CIFAR-10 is on this machine without a download: torchvision's folder under the data
    root (``root``, else ``$JKT_LAB_DATA``, else ``<cache_dir()>/data``), else the JPEG zip that
    :func:`load` falls back to; None when neither is there."""
    cls = _cifar_class("cifar10")
    files = _torchvision_files(cls, Path(root) if root is not None else data_root())
    if all(f.is_file() for f in files):
        return files[0].parent
    return _find_cifar10_zip()[0]


# ----------------------------------------------------------------------------------------------
# readers
# ----------------------------------------------------------------------------------------------
def read_cifar10(req: Request) -> Raw:
    """torchvision's CIFAR-10 under the data root (else the JPEG zip, when found)."""
    arrays, shown = _cifar_arrays("cifar10", req.root, req.download)
    return from_arrays(arrays, req.seed, name=shown)


def read_cifar100(req: Request) -> Raw:
    """torchvision's CIFAR-100 under the data root."""
    arrays, shown = _cifar_arrays("cifar100", req.root, req.download)
    return from_arrays(arrays, req.seed, name=shown)


def read_cifar10_jpeg(req: Request) -> Raw:
    """The CIFAR-10 JPEGs: ``path`` (zip or tree), else ``$JKT_LAB_CIFAR10_ZIP``, else the usual places."""
    found, looked = _find_cifar10_zip(req.path)
    if found is None:
        raise _missing_zip_error(looked)
    return from_arrays(_cifar10_jpeg_arrays(found), req.seed)
