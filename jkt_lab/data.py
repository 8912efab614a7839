"""Datasets, per-class few-shot subsets, device-resident batches and input-noise corruption.

Every dataset arrives as a :class:`Data`: float32 images ``(N, C, H, W)`` in ``[0, 1]`` pixel
units, int64 labels, a validation split carved from the training images, and the per-channel
``mean``/``std`` of the training split (models normalise internally with them).

Datasets (``load(name, ...)``):

* ``shapes``       embedded, procedurally generated coloured shapes on textured backgrounds,
                   with ground-truth foreground masks (CPU-sized stand-in for CIFAR).
* ``digits``       scikit-learn's bundled 8x8 digits.
* ``cifar10``, ``cifar100``  torchvision's on-disk format under the data root; ``cifar10``
                   falls back to the JPEG zip below when the torchvision files are missing.
* ``cifar10-jpeg`` CIFAR-10 as JPEGs in a zip (ImageFolder layout ``train/``, ``test/``).
* ``indoor67``     MIT Indoor-67 (``Images/`` plus ``TrainImages.txt``/``TestImages.txt``).
* ``imagefolder``  any ImageFolder tree; ``npz``: arrays in a ``.npz`` file.

Locations: the data root is the ``root`` argument, else ``$JKT_LAB_DATA``, else
``<cache_dir()>/data``; decoded arrays are cached as uint8 ``.npz`` files in ``$JKT_LAB_CACHE``
(default ``~/.cache/jkt_lab``), never beside the source files.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import warnings
import zipfile
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from jkt_lab._checks import check_batch, check_choice, check_int, check_nonnegative

__all__ = [
    "DATASETS",
    "SHAPE_CLASSES",
    "Batches",
    "Data",
    "DataNotFoundError",
    "add_noise",
    "cache_dir",
    "data_root",
    "load",
    "make_shapes",
]

DATASETS: tuple[str, ...] = (
    "shapes", "digits", "cifar10", "cifar100", "cifar10-jpeg", "indoor67", "imagefolder", "npz",
)

SHAPE_CLASSES: tuple[str, ...] = (
    "circle", "square", "triangle", "diamond", "ring",
    "frame", "plus", "x_cross", "horizontal_bar", "vertical_bar",
)

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
INDOOR67_URL = "http://web.mit.edu/torralba/www/indoor.html"
CIFAR10_ZIP_NAME = "cifar10-jpeg.zip"

_CACHE_VERSION = 1
_REPO_ROOT = Path(__file__).resolve().parents[1]
_warned_jpeg = False


class DataNotFoundError(FileNotFoundError):
    """A dataset's files are missing (or corrupt) and could not be obtained; says where to put them."""


# ----------------------------------------------------------------------------------------------
# locations and cache
# ----------------------------------------------------------------------------------------------
def cache_dir() -> Path:
    """Cache directory: ``$JKT_LAB_CACHE``, else ``~/.cache/jkt_lab`` (not created here)."""
    env = os.environ.get("JKT_LAB_CACHE")
    return Path(env).expanduser() if env else Path("~/.cache/jkt_lab").expanduser()


def data_root() -> Path:
    """Data root for downloaded datasets: ``$JKT_LAB_DATA``, else ``cache_dir() / 'data'``."""
    env = os.environ.get("JKT_LAB_DATA")
    return Path(env).expanduser() if env else cache_dir() / "data"


def _cache_file(tag: str, key) -> Path:
    digest = hashlib.sha1(json.dumps([_CACHE_VERSION, key], sort_keys=True, default=str).encode()).hexdigest()
    return cache_dir() / f"{tag}-{digest[:16]}.npz"


def _cached(tag: str, key, build) -> dict[str, np.ndarray]:
    """Arrays from the cache file for ``key``, else ``build()`` written atomically to it."""
    path = _cache_file(tag, key)
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as f:
                return {k: f[k] for k in f.files}
        except Exception:  # unreadable cache (e.g. older format): rebuild it
            pass
    arrays = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{tag}-", suffix=".npz.tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return arrays


def _stat_key(paths) -> list:
    return [[str(Path(p).resolve()), os.stat(p).st_size, os.stat(p).st_mtime_ns] for p in paths]


def _generator(seed: int, *stream: int) -> torch.Generator:
    """CPU generator for ``(seed, *stream)``: independent streams from one user seed."""
    state = np.random.SeedSequence([seed, *stream]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state) >> 1)


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------
def _empty_like(x: torch.Tensor) -> torch.Tensor:
    return x.new_empty((0, *x.shape[1:]))


@dataclass(eq=False, repr=False)
class Data:
    """One dataset: train / validation / test splits in ``[0, 1]`` pixel units, class names,
    per-channel ``mean``/``std`` of the training split, optional ground-truth foreground masks."""

    name: str
    classes: list[str]
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    mask_train: torch.Tensor | None = None
    mask_val: torch.Tensor | None = None
    mask_test: torch.Tensor | None = None
    info: dict = field(default_factory=dict)  # provenance: seed, source, per_class, ...

    def __post_init__(self) -> None:
        self.classes = [str(c) for c in self.classes]
        self.mean = tuple(float(m) for m in self.mean)
        self.std = tuple(float(s) for s in self.std)
        shape = None
        for split in ("train", "val", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() != 4:
                raise TypeError(f"x_{split} must be a float tensor (N, C, H, W), got "
                                f"{getattr(x, 'dtype', type(x).__name__)} {tuple(getattr(x, 'shape', ()))}")
            if not isinstance(y, torch.Tensor) or y.dtype != torch.int64 or y.shape != (x.shape[0],):
                raise TypeError(f"y_{split} must be an int64 tensor of shape ({x.shape[0]},), got "
                                f"{getattr(y, 'dtype', type(y).__name__)} {tuple(getattr(y, 'shape', ()))}")
            if shape is None:
                shape = tuple(x.shape[1:])
            elif tuple(x.shape[1:]) != shape:
                raise ValueError(f"x_{split} has image shape {tuple(x.shape[1:])}, expected {shape} as x_train")
            m = getattr(self, f"mask_{split}")
            if m is not None and tuple(m.shape) != (x.shape[0], *x.shape[2:]):
                raise ValueError(f"mask_{split} must have shape {(x.shape[0], *x.shape[2:])}, got {tuple(m.shape)}")
        if len(self.mean) != shape[0] or len(self.std) != shape[0]:
            raise ValueError(f"mean and std must have one value per channel ({shape[0]}), "
                             f"got {len(self.mean)} and {len(self.std)}")

    # -- properties ----------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W)."""
        return tuple(self.x_train.shape[1:])

    @property
    def device(self) -> torch.device:
        return self.x_train.device

    def _splits(self):
        return ("train", "val", "test")

    def to(self, device) -> "Data":
        """A copy with every tensor on ``device``."""
        device = torch.device(device)
        moved = {}
        for split in self._splits():
            for kind in ("x", "y", "mask"):
                t = getattr(self, f"{kind}_{split}")
                moved[f"{kind}_{split}"] = None if t is None else t.to(device)
        return replace(self, **moved)

    def _subset(self, split: str, index: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
        x, y, m = (getattr(self, f"{k}_{split}") for k in ("x", "y", "mask"))
        index = index.to(x.device)
        return {f"x_{split}": x[index], f"y_{split}": (y[index] if labels is None else labels),
                f"mask_{split}": None if m is None else m[index]}

    def few_shot(self, per_class: int, seed: int = 0) -> "Data":
        """Keep ``per_class`` random training examples of every class present (val/test unchanged).

        Subsets are nested: for one seed, ``few_shot(5)`` lies inside ``few_shot(10)``.
        """
        per_class = check_int(per_class, "per_class", minimum=1)
        seed = check_int(seed, "seed", minimum=0)
        counts = torch.bincount(self.y_train.cpu(), minlength=self.num_classes)
        present = counts > 0  # classes absent from train (e.g. select_classes(relabel=False)) are skipped
        short = present & (counts < per_class)
        if bool(short.any()):
            c = int(torch.nonzero(short)[0])
            raise ValueError(
                f"per_class={per_class} is more than class {c} ({self.classes[c]!r}) has: only "
                f"{int(counts[c])} training example(s); choose per_class <= {int(counts[present].min())}")
        keep = _per_class_pick(self.y_train.cpu(), torch.where(present, per_class, 0), _generator(seed, 3))
        out = replace(self, **self._subset("train", keep))
        out.info = {**self.info, "per_class": per_class, "few_shot_seed": seed}
        return out

    def select_classes(self, classes: Sequence[int], relabel: bool = True) -> "Data":
        """Keep only ``classes`` in every split; with ``relabel`` they become ``0..k-1`` in the
        given order and ``classes`` is renamed to match (e.g. transfer source 0-4, target 5-9)."""
        if isinstance(classes, (str, bytes)) or not isinstance(classes, Sequence):
            raise TypeError(f"classes must be a sequence of class indices, got {type(classes).__name__}")
        chosen = [check_int(c, "classes[i]", minimum=0) for c in classes]
        if not chosen:
            raise ValueError("classes must name at least one class, got an empty sequence")
        if len(set(chosen)) != len(chosen):
            raise ValueError(f"classes must not repeat a class, got {chosen}")
        if max(chosen) >= self.num_classes:
            raise ValueError(f"classes must lie in [0, {self.num_classes}), got {chosen}")
        if not isinstance(relabel, bool):
            raise TypeError(f"relabel must be a bool, got {type(relabel).__name__}")
        lut = torch.full((self.num_classes,), -1, dtype=torch.int64)
        lut[torch.tensor(chosen)] = torch.arange(len(chosen))
        changes = {}
        for split in self._splits():
            y = getattr(self, f"y_{split}")
            new = lut.to(y.device)[y]
            keep = torch.nonzero(new >= 0).squeeze(1)
            changes.update(self._subset(split, keep, new[keep] if relabel else None))
        names = [self.classes[c] for c in chosen] if relabel else list(self.classes)
        out = replace(self, classes=names, **changes)
        out.info = {**self.info, "selected_classes": chosen}
        return out

    def summary(self) -> str:
        """One line: name, classes, image shape, split sizes, normalisation."""
        c, h, w = self.input_shape
        fmt = lambda t: "(" + ", ".join(f"{v:.4f}" for v in t) + ")"  # noqa: E731
        extra = f", per_class {self.info['per_class']}" if "per_class" in self.info else ""
        return (f"{self.name}: {self.num_classes} classes, {c}x{h}x{w}, train {len(self.y_train)}"
                f"{extra} / val {len(self.y_val)} / test {len(self.y_test)}, mean {fmt(self.mean)}, "
                f"std {fmt(self.std)}, on {self.device}")

    def __repr__(self) -> str:
        return f"Data({self.summary()})"


def _per_class_pick(y: torch.Tensor, take: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Sorted indices of ``take[c]`` random examples of each class c (nested in ``take``)."""
    n = y.shape[0]
    perm = torch.randperm(n, generator=gen)
    yp = y[perm]
    order = torch.sort(yp, stable=True).indices  # class-major, random within class
    ys = yp[order]
    starts = torch.searchsorted(ys, ys, right=False)
    rank = torch.arange(n) - starts
    chosen = perm[order[rank < take[ys]]]
    return torch.sort(chosen).values


def _balanced_subset(y: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """Sorted indices of ``n`` examples, classes as balanced as their counts allow."""
    if n >= y.shape[0]:
        return torch.arange(y.shape[0])
    perm = torch.randperm(y.shape[0], generator=gen)
    yp = y[perm]
    order = torch.sort(yp, stable=True).indices
    ys = yp[order]
    rank = torch.empty_like(ys)
    rank[order] = torch.arange(len(ys)) - torch.searchsorted(ys, ys)
    # round-robin over classes: rank first, then a random class order
    key = rank.double() + torch.rand(len(ys), generator=gen, dtype=torch.float64) * 0.5
    chosen = perm[torch.argsort(key)[:n]]
    return torch.sort(chosen).values


# ----------------------------------------------------------------------------------------------
# shapes
# ----------------------------------------------------------------------------------------------
def _shape_masks(cls: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    au, av = np.abs(u), np.abs(v)
    name = SHAPE_CLASSES[cls]
    if name == "circle":
        return u * u + v * v <= 1.0
    if name == "square":
        return np.maximum(au, av) <= 0.8
    if name == "triangle":  # apex up (v grows downwards)
        return (v <= 0.7) & (au <= 0.6 * (v + 0.9))
    if name == "diamond":
        return au + av <= 1.0
    if name == "ring":
        r2 = u * u + v * v
        return (r2 <= 1.0) & (r2 >= 0.55 ** 2)
    if name == "frame":
        m = np.maximum(au, av)
        return (m <= 0.85) & (m >= 0.5)
    if name == "plus":
        return ((au <= 0.25) & (av <= 1.0)) | ((av <= 0.25) & (au <= 1.0))
    if name == "x_cross":
        a, b = np.abs(u + v) * 0.70710678, np.abs(u - v) * 0.70710678
        return ((a <= 0.22) & (b <= 1.0)) | ((b <= 0.22) & (a <= 1.0))
    if name == "horizontal_bar":
        return (au <= 1.0) & (av <= 0.3)
    return (av <= 1.0) & (au <= 0.3)  # vertical_bar


def _shapes(n: int, rng: np.random.Generator, size: int):
    k, s = len(SHAPE_CLASSES), size
    labels = rng.permutation(np.arange(n) % k)
    r = rng.uniform(0.18, 0.32, n) * s                    # radius in pixels
    ax, ay = rng.uniform(0.85, 1.15, n), rng.uniform(0.85, 1.15, n)
    theta = np.deg2rad(rng.uniform(-15.0, 15.0, n))
    margin = 1.2 * r * np.maximum(ax, ay) + 0.5
    cx = margin + rng.uniform(0, 1, n) * np.maximum(s - 2 * margin, 0)
    cy = margin + rng.uniform(0, 1, n) * np.maximum(s - 2 * margin, 0)
    grid = (np.arange(s, dtype=np.float32) + 0.5)
    dx = grid[None, None, :] - cx[:, None, None].astype(np.float32)   # (n, 1, s)
    dy = grid[None, :, None] - cy[:, None, None].astype(np.float32)   # (n, s, 1)
    c, sn = np.cos(theta).astype(np.float32)[:, None, None], np.sin(theta).astype(np.float32)[:, None, None]
    u = (c * dx + sn * dy) / (r * ax).astype(np.float32)[:, None, None]
    v = (c * dy - sn * dx) / (r * ay).astype(np.float32)[:, None, None]
    masks = np.zeros((n, s, s), dtype=bool)
    for cls in range(k):
        idx = np.flatnonzero(labels == cls)
        if idx.size:
            masks[idx] = _shape_masks(cls, u[idx], v[idx])

    # textured background: base colour + coloured gradient + coloured stripes (+ pixel noise)
    g1 = grid / s - 0.5
    fg_col = rng.uniform(0, 1, (n, 3)).astype(np.float32)
    bg_col = (fg_col + rng.uniform(0.3, 0.7, (n, 3))).astype(np.float32) % 1.0   # >= 0.3 apart per channel
    phi = rng.uniform(0, 2 * np.pi, n).astype(np.float32)[:, None, None]
    grad = np.cos(phi) * g1[None, None, :] + np.sin(phi) * g1[None, :, None]          # (n, s, s)
    grad_col = rng.uniform(-0.3, 0.3, (n, 3)).astype(np.float32)
    psi = rng.uniform(0, np.pi, n).astype(np.float32)[:, None, None]
    freq = rng.uniform(2.0, 6.0, n).astype(np.float32)[:, None, None]
    phase = rng.uniform(0, 2 * np.pi, n).astype(np.float32)[:, None, None]
    stripes = np.sin(2 * np.pi * freq * (np.cos(psi) * g1[None, None, :] + np.sin(psi) * g1[None, :, None]) + phase)
    stripe_col = rng.uniform(-0.15, 0.15, (n, 3)).astype(np.float32)
    noise_sigma = rng.uniform(0.02, 0.06, n).astype(np.float32)[:, None, None, None]

    shade = grad_col[:, :, None, None] * grad[:, None]
    bg = bg_col[:, :, None, None] + shade + stripe_col[:, :, None, None] * stripes[:, None]
    fg = fg_col[:, :, None, None] + 0.5 * shade
    img = np.where(masks[:, None], fg, bg)
    img += noise_sigma * rng.standard_normal(img.shape, dtype=np.float32)
    np.clip(img, 0.0, 1.0, out=img)
    return torch.from_numpy(img), torch.from_numpy(labels.astype(np.int64)), torch.from_numpy(masks)


def make_shapes(n: int, seed: int = 0, size: int = 32):
    """``n`` coloured shapes (classes ``SHAPE_CLASSES``, balanced) at random position, scale,
    small rotation and colour on textured backgrounds. Shape, not colour, gives the class.

    Returns ``(images (n, 3, size, size) float32 in [0, 1], labels (n,) int64,
    masks (n, size, size) bool foreground)``; identical for the same ``seed``.
    """
    n = check_int(n, "n", minimum=1)
    seed = check_int(seed, "seed", minimum=0)
    size = check_int(size, "size", minimum=8)
    return _shapes(n, np.random.default_rng(seed), size)


# ----------------------------------------------------------------------------------------------
# image decoding (ImageFolder trees, shared by imagefolder, indoor67 and cifar10-jpeg)
# ----------------------------------------------------------------------------------------------
def _decode_files(paths: list[str], size) -> np.ndarray:
    """uint8 (k, H, W, 3). ``size`` int: shorter side resized then centre-cropped to size x size;
    ``(h, w)``: every image must already be h x w."""
    from PIL import Image

    if isinstance(size, int):
        out = np.empty((len(paths), size, size, 3), np.uint8)
    else:
        out = np.empty((len(paths), size[0], size[1], 3), np.uint8)
    for i, p in enumerate(paths):
        with Image.open(p) as im:
            if isinstance(size, int):
                if im.format == "JPEG":
                    im.draft("RGB", (size, size))
                im = im.convert("RGB")
                w, h = im.size
                scale = size / min(w, h)
                nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
                if (nw, nh) != (w, h):
                    im = im.resize((nw, nh), Image.BILINEAR, reducing_gap=3.0)
                left, top = (nw - size) // 2, (nh - size) // 2
                im = im.crop((left, top, left + size, top + size))
            else:
                im = im.convert("RGB")
                if (im.size[1], im.size[0]) != tuple(size):
                    raise ValueError(
                        f"image {p} is {im.size[1]}x{im.size[0]} but the first image is "
                        f"{size[0]}x{size[1]}; pass image_size to resize all images to one size")
            out[i] = np.asarray(im)
    return out


_open_zips: dict[str, zipfile.ZipFile] = {}


def _workers(n_items: int) -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cpus, 8)) if n_items >= 2000 else 1


def _parallel(fn, chunks: list[tuple], sizes: list[int], desc: str) -> list:
    """``[fn(*c) for c in chunks]``, in worker processes when big, with a tqdm bar over ``sizes``."""
    from concurrent.futures import as_completed
    from concurrent.futures.process import BrokenProcessPool

    from . import progress

    results = [None] * len(chunks)
    workers = _workers(sum(sizes))
    with progress.bar(total=sum(sizes), desc=desc, unit="img", progress=sum(sizes) >= 2000, leave=True) as bar:
        if workers > 1:
            try:
                with ProcessPoolExecutor(max_workers=workers) as pool:
                    futures = {pool.submit(fn, *c): i for i, c in enumerate(chunks)}
                    for fut in as_completed(futures):
                        results[futures[fut]] = fut.result()
                        bar.update(sizes[futures[fut]])
                return results
            except (BrokenProcessPool, PermissionError, NotImplementedError):
                bar.reset()  # no usable process pool here: fall back to one core
        for i, c in enumerate(chunks):
            results[i] = fn(*c)
            bar.update(sizes[i])
    return results


def _chunks(items: list, n: int = 1000) -> list[list]:
    return [items[i:i + n] for i in range(0, len(items), n)]


def _decode_samples(samples: list[tuple[str, int]], size, desc: str):
    """Decode ImageFolder ``samples`` into uint8 NCHW + int64 labels. ``size``: int (resize and
    centre-crop), ``(h, w)`` (must match) or None (the first image's size, which all must match)."""
    from PIL import Image

    paths = [p for p, _ in samples]
    if size is None:
        with Image.open(paths[0]) as im:
            size = (im.size[1], im.size[0])
    parts = _chunks(paths)
    arrays = _parallel(_decode_files, [(p, size) for p in parts], [len(p) for p in parts], desc)
    x = np.ascontiguousarray(np.concatenate(arrays).transpose(0, 3, 1, 2))
    return x, np.array([t for _, t in samples], dtype=np.int64)


def _imagefolder_arrays(root: Path, image_size: int | None, desc: str) -> dict[str, np.ndarray]:
    """Decode an ImageFolder tree with ``train/`` and ``test/`` (or ``val/``) subfolders, or a
    single tree of class folders, through ``torchvision.datasets.ImageFolder``."""
    from torchvision.datasets import ImageFolder
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    splits = {s: root / s for s in ("train", "val", "test") if (root / s).is_dir()}
    if "train" not in splits:
        if splits:
            raise ValueError(f"path {root} has {'/'.join(splits)} but no train/ subfolder")
        splits = {"train": root}
    train = ImageFolder(str(splits.pop("train")))
    out = {"classes": np.array(train.classes)}
    out["x_train"], out["y_train"] = _decode_samples(train.samples, image_size, f"{desc} train")
    size = image_size if image_size is not None else tuple(out["x_train"].shape[2:])
    for split, d in splits.items():
        extra = sorted(set(find_classes(str(d))[0]) - set(train.classes))
        if extra:
            raise ValueError(f"path {d} has class folders not in train/: {extra}")
        samples = make_dataset(str(d), train.class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
        if samples:
            out[f"x_{split}"], out[f"y_{split}"] = _decode_samples(samples, size, f"{desc} {split}")
    if "x_test" not in out and "x_val" in out:  # train/ + val/ only: val/ is the test split
        out["x_test"], out["y_test"] = out.pop("x_val"), out.pop("y_val")
    return out


def _tree_key(root: Path) -> list:
    """Cheap identity of a folder tree: its folders' mtimes (adding or removing files changes
    them; editing a file in place does not: delete the cache file then)."""
    key = [str(root.resolve())]
    for d, dirs, _ in os.walk(root):
        dirs.sort()
        key.append([os.path.relpath(d, root), os.stat(d).st_mtime_ns])
    return key


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


def _cifar_arrays(name: str, root: Path, download: bool | None) -> tuple[dict, str]:
    """(uint8 arrays, dataset name actually used) for cifar10/cifar100 in torchvision's format."""
    global _warned_jpeg
    cls = _cifar_class(name)
    base = root / cls.base_folder
    files = [base / f for f, _ in cls.train_list + cls.test_list] + [base / cls.meta["filename"]]
    if not all(f.is_file() for f in files):
        if name == "cifar10":
            found, _ = _find_cifar10_zip()
            if found is not None:
                if not _warned_jpeg:
                    warnings.warn(
                        f"cifar10: torchvision files not found under {root}; using the JPEG copy {found} "
                        f"(JPEG-lossy, about 5.8/255 per pixel from the originals)", UserWarning, stacklevel=3)
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


# ----------------------------------------------------------------------------------------------
# MIT Indoor-67
# ----------------------------------------------------------------------------------------------
def _indoor67_dir(root: Path, path) -> Path:
    cands = [Path(path)] if path is not None else [root / "indoor67", root / "Indoor67", root]
    for d in cands:
        if (d / "Images").is_dir() and (d / "TrainImages.txt").is_file() and (d / "TestImages.txt").is_file():
            return d
    raise DataNotFoundError(
        f"indoor67: MIT Indoor-67 not found; looked in {', '.join(map(str, cands))}. Download the images "
        f"(indoorCVPR_09.tar) and the split lists TrainImages.txt / TestImages.txt from {INDOOR67_URL} and "
        f"arrange <root>/indoor67/Images/<class>/<file>.jpg with both lists beside Images/ (or pass "
        f"path=). The data root is the root argument, else JKT_LAB_DATA, else {cache_dir() / 'data'}.")


def _indoor67_arrays(d: Path, image_size: int) -> dict:
    def read(name):
        lines = [ln.strip().replace("\\", "/") for ln in (d / name).read_text().splitlines()]
        return [ln for ln in lines if ln]

    train_list, test_list = read("TrainImages.txt"), read("TestImages.txt")
    classes = sorted({ln.split("/")[0] for ln in train_list + test_list})
    idx = {c: i for i, c in enumerate(classes)}

    def build():
        out = {"classes": np.array(classes)}
        for split, lst in (("train", train_list), ("test", test_list)):
            missing = [ln for ln in lst if not (d / "Images" / ln).is_file()]
            if missing:
                raise DataNotFoundError(f"indoor67: {len(missing)} image(s) of {split} list missing under "
                                        f"{d / 'Images'}, e.g. {missing[0]}; download from {INDOOR67_URL}")
            samples = [(str(d / "Images" / ln), idx[ln.split("/")[0]]) for ln in lst]
            out[f"x_{split}"], out[f"y_{split}"] = _decode_samples(samples, image_size, f"decoding indoor67 {split}")
        return out

    key = _stat_key([d / "TrainImages.txt", d / "TestImages.txt"]) + [_tree_key(d / "Images"), image_size]
    return _cached("indoor67", key, build)


# ----------------------------------------------------------------------------------------------
# npz
# ----------------------------------------------------------------------------------------------
def _npz_images(a: np.ndarray, name: str) -> torch.Tensor:
    if a.ndim == 3:
        a = a[:, None]
    if a.ndim != 4:
        raise ValueError(f"{name} must be (N, H, W), (N, C, H, W) or (N, H, W, C), got shape {a.shape}")
    chan = (1, 3, 4)
    if a.shape[-1] in chan and a.shape[1] not in chan:
        a = a.transpose(0, 3, 1, 2)  # NHWC -> NCHW
    elif a.shape[1] not in chan:
        raise ValueError(f"{name}: cannot find a channel axis of size 1 or 3 in shape {a.shape}")
    t = torch.from_numpy(np.ascontiguousarray(a))
    if t.dtype == torch.uint8:
        return t
    if t.is_floating_point():
        t = t.float()
        if not bool(torch.isfinite(t).all()) or float(t.min()) < 0 or float(t.max()) > 1:
            raise ValueError(f"{name}: float images must be finite and in [0, 1]")
        return t
    if t.dtype == torch.bool or t.is_complex() or int(t.min()) < 0 or int(t.max()) > 255:
        raise ValueError(f"{name}: integer images must be in 0..255, got dtype {t.dtype}")
    return t.to(torch.uint8)


def _npz_arrays(path: Path) -> dict:
    if not path.is_file():
        raise DataNotFoundError(f"npz: file {path} not found (path must name a .npz with x_train, y_train, "
                                f"x_test, y_test and optionally classes, x_val, y_val)")
    with np.load(path, allow_pickle=False) as f:
        missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in f.files]
        if missing:
            raise ValueError(f"path {path} lacks array(s) {missing}; has {f.files}")
        return {k: f[k] for k in f.files}


# ----------------------------------------------------------------------------------------------
# load
# ----------------------------------------------------------------------------------------------
def _as_images(x) -> torch.Tensor:
    """uint8 or float NCHW -> float32 in [0, 1]."""
    x = torch.as_tensor(x)
    if x.dtype == torch.uint8:
        return x.float().div_(255.0)
    return x.float()


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-2:] == (size, size):
        return x
    if x.shape[0] == 0:
        return x.new_empty((0, x.shape[1], size, size))
    down = size < max(x.shape[-2:])
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                         antialias=down).clamp_(0.0, 1.0)


def _labels(y, name: str, num_classes: int | None = None) -> torch.Tensor:
    y = torch.as_tensor(np.asarray(y))
    if y.is_floating_point() or y.dtype == torch.bool or y.dim() != 1:
        raise ValueError(f"{name} must be a 1-D integer array of class indices, got {y.dtype} {tuple(y.shape)}")
    y = y.long()
    if y.numel() and (int(y.min()) < 0 or (num_classes is not None and int(y.max()) >= num_classes)):
        raise ValueError(f"{name} must lie in [0, {num_classes}), got [{int(y.min())}, {int(y.max())}]")
    return y


def _channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std on the [0, 1] scale (uint8: exact, from 256-bin histograms)."""
    means, stds = [], []
    for c in range(x.shape[1]):
        xc = x[:, c]
        if x.dtype == torch.uint8:
            h = torch.bincount(xc.reshape(-1), minlength=256).double()
            v = torch.arange(256, dtype=torch.float64) / 255.0
            m = float((h * v).sum() / h.sum())
            var = float((h * v * v).sum() / h.sum()) - m * m
        else:
            var, m = (float(t) for t in torch.var_mean(xc, correction=0))
        means.append(m)
        stds.append(math.sqrt(max(var, 0.0)))
    return tuple(means), tuple(stds)


def _opt_int(value, name: str, minimum: int):
    return None if value is None else check_int(value, name, minimum=minimum)


def load(name: str, *, root: str | Path | None = None, path: str | Path | None = None,
         per_class: int | None = None, val_per_class: int | None = None, seed: int = 0,
         download: bool | None = None, n_train: int | None = None, n_test: int | None = None,
         image_size: int | None = None) -> Data:
    """Load dataset ``name`` (one of ``DATASETS``) as a :class:`Data`.

    Order of operations: read (cached) -> ``n_train``/``n_test`` balanced subsets (``shapes``:
    number generated, default 10000/2000) -> resize to ``image_size`` -> carve ``val_per_class``
    examples per class out of train (default ``None``: 10% per class, at most 500) -> ``mean``/``std``
    of the remaining train -> ``per_class`` few-shot subset of it (``Data.few_shot``).
    ``root``: data root of cifar10/cifar100/indoor67. ``path``: the file or folder of
    cifar10-jpeg (zip or tree), indoor67, imagefolder (required) and npz (required).
    ``download`` (cifar): None tries and turns failure into a clear error; False never downloads.
    ``image_size``: digits/npz/cifar resized (bilinear); indoor67 (default 64) and imagefolder
    resize the shorter side and centre-crop.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str (one of {', '.join(DATASETS)}), got {type(name).__name__}")
    check_choice(name, "name", DATASETS)
    per_class = _opt_int(per_class, "per_class", 1)
    val_per_class = _opt_int(val_per_class, "val_per_class", 0)
    seed = check_int(seed, "seed", minimum=0)
    n_train = _opt_int(n_train, "n_train", 1)
    n_test = _opt_int(n_test, "n_test", 1)
    image_size = _opt_int(image_size, "image_size", 1)
    if download is not None and not isinstance(download, bool):
        raise TypeError(f"download must be None, True or False, got {type(download).__name__}")
    for arg, value in (("root", root), ("path", path)):
        if value is not None and not isinstance(value, (str, os.PathLike)):
            raise TypeError(f"{arg} must be a str or Path, got {type(value).__name__}")
    root_dir = Path(root).expanduser() if root is not None else data_root()
    path = Path(path).expanduser() if path is not None else None

    masks = {}
    val = None
    shown = name
    if name == "shapes":
        size = image_size or 32
        if size < 8:
            raise ValueError(f"image_size must be >= 8 for shapes, got {size}")
        xtr, ytr, mtr = _shapes(n_train or 10000, np.random.default_rng(seed), size)
        xte, yte, mte = _shapes(n_test or 2000, np.random.default_rng([seed, 1]), size)
        classes = list(SHAPE_CLASSES)
        masks = {"train": mtr, "test": mte}
        n_train = n_test = None  # already the requested sizes
        image_size = None
    elif name == "digits":
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        d = load_digits()
        x = torch.from_numpy((d.images / 16.0).astype(np.float32))[:, None]
        tr, te = train_test_split(np.arange(len(d.target)), test_size=0.2, stratify=d.target, random_state=seed)
        tr, te = torch.from_numpy(np.sort(tr)), torch.from_numpy(np.sort(te))
        y = torch.from_numpy(d.target.astype(np.int64))
        xtr, ytr, xte, yte = x[tr], y[tr], x[te], y[te]
        classes = [str(c) for c in d.target_names]
    else:
        if name in ("cifar10", "cifar100"):
            arrays, shown = _cifar_arrays(name, root_dir, download)
        elif name == "cifar10-jpeg":
            found, looked = _find_cifar10_zip(path)
            if found is None:
                raise _missing_zip_error(looked)
            arrays = _cifar10_jpeg_arrays(found)
        elif name == "indoor67":
            arrays = _indoor67_arrays(_indoor67_dir(root_dir, path), image_size or 64)
            image_size = None
        elif name == "imagefolder":
            if path is None:
                raise ValueError("path is required for imagefolder: a folder with train/ and test/ (or val/) "
                                 "subfolders of class folders, or one tree of class folders")
            if not path.is_dir():
                raise DataNotFoundError(f"imagefolder: path {path} is not a folder")
            arrays = _cached("imagefolder", _tree_key(path) + [image_size],
                             lambda: _imagefolder_arrays(path, image_size, "decoding imagefolder"))
            image_size = None
        else:  # npz
            if path is None:
                raise ValueError("path is required for npz: a .npz file with x_train, y_train, x_test, y_test")
            arrays = _npz_arrays(path)
        classes = [str(c) for c in arrays["classes"]] if "classes" in arrays else None
        xtr = _npz_images(arrays["x_train"], "x_train")
        ytr = _labels(arrays["y_train"], "y_train")
        if "x_test" in arrays:
            xte, yte = _npz_images(arrays["x_test"], "x_test"), _labels(arrays["y_test"], "y_test")
        else:  # single ImageFolder tree: deterministic stratified split, 20% test
            pick = _per_class_pick(ytr, (torch.bincount(ytr) * 0.2).ceil().long(), _generator(seed, 4))
            rest = torch.ones(len(ytr), dtype=torch.bool)
            rest[pick] = False
            xte, yte, xtr, ytr = xtr[pick], ytr[pick], xtr[rest], ytr[rest]
        if "x_val" in arrays:
            val = (_npz_images(arrays["x_val"], "x_val"), _labels(arrays["y_val"], "y_val"))
        if classes is None:
            top = max(int(ytr.max()), int(yte.max()) if len(yte) else 0)
            classes = [str(c) for c in range(top + 1)]
        if len(ytr) and int(ytr.max()) >= len(classes) or len(yte) and int(yte.max()) >= len(classes):
            raise ValueError(f"labels exceed the {len(classes)} classes given")
        if xtr.shape[1:] != xte.shape[1:]:
            raise ValueError(f"x_train images {tuple(xtr.shape[1:])} and x_test images "
                             f"{tuple(xte.shape[1:])} differ in shape")

    if n_train is not None:
        keep = _balanced_subset(ytr, n_train, _generator(seed, 5))
        xtr, ytr = xtr[keep], ytr[keep]
    if n_test is not None:
        keep = _balanced_subset(yte, n_test, _generator(seed, 6))
        xte, yte = xte[keep], yte[keep]

    # validation split carved from train (still uint8 where the source is)
    k = len(classes)
    mtr, mval = masks.get("train"), None
    if val is None:
        counts = torch.bincount(ytr, minlength=k)
        if val_per_class is None:
            take = torch.clamp(counts // 10, max=500)
        else:
            take = torch.full((k,), val_per_class)
            if bool((counts[counts > 0] <= val_per_class).any()):
                c = int(torch.where(counts > 0, counts, counts.max() + 1).argmin())
                raise ValueError(f"val_per_class={val_per_class} leaves no training example of class {c} "
                                 f"({classes[c]!r}), which has {int(counts[c])}; choose a smaller val_per_class")
        pick = _per_class_pick(ytr, take, _generator(seed, 2)) if int(take.sum()) else ytr[:0]
        if len(pick):
            rest = torch.ones(len(ytr), dtype=torch.bool)
            rest[pick] = False
            xval, yval = xtr[pick], ytr[pick]
            if mtr is not None:
                mval, mtr = mtr[pick], mtr[rest]
            xtr, ytr = xtr[rest], ytr[rest]
        else:
            xval, yval = _empty_like(xtr), ytr[:0]
            mval = None if mtr is None else mtr[:0]
    else:
        xval, yval = val
        if len(yval) and int(yval.max()) >= k:
            raise ValueError(f"y_val exceeds the {k} classes")
    if len(ytr) == 0:
        raise ValueError(f"{name}: no training examples left (n_train={n_train}, val_per_class={val_per_class})")

    if image_size is not None:
        xtr, xval, xte = (_resize(_as_images(t), image_size) for t in (xtr, xval, xte))
    mean, std = _channel_stats(xtr)
    xtr, xval, xte = _as_images(xtr), _as_images(xval), _as_images(xte)
    data = Data(name=shown, classes=classes, x_train=xtr, y_train=ytr, x_val=xval, y_val=yval,
                x_test=xte, y_test=yte, mean=mean, std=std,
                mask_train=mtr, mask_val=mval, mask_test=masks.get("test"),
                info={"seed": seed, "source": name})
    if per_class is not None:
        data = data.few_shot(per_class, seed)
    return data


# ----------------------------------------------------------------------------------------------
# batches and noise
# ----------------------------------------------------------------------------------------------
def _crop_flip(x: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor | None, pad: int) -> torch.Tensor:
    """Per-example random crop of the zero-padded batch (offsets (B, 2) in [0, 2*pad]) and
    optional horizontal flip, by one gather (no per-image loop)."""
    b, c, h, w = x.shape
    if pad:
        x = F.pad(x, (pad, pad, pad, pad))
    rows = offsets[:, 0:1] + torch.arange(h, device=x.device)               # (B, H)
    cols = offsets[:, 1:2] + torch.arange(w, device=x.device)               # (B, W)
    if flips is not None:
        cols = torch.where(flips[:, None], cols.flip(1), cols)
    bi = torch.arange(b, device=x.device)[:, None, None, None]
    ci = torch.arange(c, device=x.device)[None, :, None, None]
    return x[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]


class Batches:
    """Mini-batches ``(x, y)`` (or ``(x, y, idx)`` with ``return_index``) served from the tensors'
    device. Epoch ``k``'s order and augmentation depend only on ``(seed, k)``; iterating advances
    the epoch counter, ``set_epoch(k)`` resumes. Augmentation: random crop of the zero-padded
    image (``pad`` pixels) and horizontal flip, drawn on a CPU generator (same on CPU and GPU)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, *, shuffle: bool = True,
                 augment: bool = False, pad: int = 4, flip: bool = True, drop_last: bool = False,
                 seed: int = 0, return_index: bool = False):
        check_batch(x, "x", min_dim=1, finite=False)
        if not isinstance(y, torch.Tensor) or y.is_floating_point() or y.dtype == torch.bool:
            raise TypeError(f"y must be an integer torch.Tensor, got {getattr(y, 'dtype', type(y).__name__)}")
        if y.shape != (x.shape[0],):
            raise ValueError(f"y must have shape ({x.shape[0]},) (one label per example), got {tuple(y.shape)}")
        if y.device != x.device:
            raise ValueError(f"x and y must be on one device, got {x.device} and {y.device}")
        self.batch_size = check_int(batch_size, "batch_size", minimum=1)
        self.pad = check_int(pad, "pad", minimum=0)
        self.seed = check_int(seed, "seed", minimum=0)
        for flag, v in (("shuffle", shuffle), ("augment", augment), ("flip", flip),
                        ("drop_last", drop_last), ("return_index", return_index)):
            if not isinstance(v, bool):
                raise TypeError(f"{flag} must be a bool, got {type(v).__name__}")
        if augment and x.dim() != 4:
            raise ValueError(f"x must be (N, C, H, W) images for augment=True, got shape {tuple(x.shape)}")
        if drop_last and x.shape[0] < self.batch_size:
            raise ValueError(f"batch_size={self.batch_size} exceeds the {x.shape[0]} examples with drop_last=True")
        self.x, self.y = x, y
        self.shuffle, self.augment, self.flip = shuffle, augment, flip
        self.drop_last, self.return_index = drop_last, return_index
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """The next iteration serves epoch ``epoch``."""
        self.epoch = check_int(epoch, "epoch", minimum=0)

    def __len__(self) -> int:
        n = self.x.shape[0]
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self):
        epoch, self.epoch = self.epoch, self.epoch + 1
        return self._epoch(epoch)

    def _epoch(self, epoch: int):
        n, dev = self.x.shape[0], self.x.device
        gen = _generator(self.seed, epoch)
        order = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
        if self.augment:
            offsets = torch.randint(0, 2 * self.pad + 1, (n, 2), generator=gen).to(dev)
            flips = (torch.rand(n, generator=gen) < 0.5).to(dev) if self.flip else None
        order = order.to(dev)
        for i in range(len(self)):
            sl = slice(i * self.batch_size, (i + 1) * self.batch_size)
            idx = order[sl]
            xb, yb = self.x[idx], self.y[idx]
            if self.augment:
                xb = _crop_flip(xb, offsets[sl], None if flips is None else flips[sl], self.pad)
            yield (xb, yb, idx) if self.return_index else (xb, yb)


def add_noise(x: torch.Tensor, sigma: float, *, seed: int | None = None,
              generator: torch.Generator | None = None, clamp: bool = False) -> torch.Tensor:
    """Gaussian input noise ``x + sigma * z``, ``z ~ N(0, I)``, in [0, 1] pixel units (before
    normalisation; the paper's noisy inputs, Sec. 3). ``sigma == 0`` returns ``x`` itself.
    ``seed``: noise drawn on a CPU generator (same on every device); ``generator``: drawn with it;
    neither: the global RNG on ``x``'s device. ``clamp`` clips the result to [0, 1]."""
    check_batch(x, "x", min_dim=1)
    sigma = check_nonnegative(sigma, "sigma")
    if seed is not None and generator is not None:
        raise ValueError("pass seed or generator, not both")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if not isinstance(clamp, bool):
        raise TypeError(f"clamp must be a bool, got {type(clamp).__name__}")
    if sigma == 0:
        return x
    if seed is not None:
        generator = torch.Generator().manual_seed(check_int(seed, "seed", minimum=0))
    if generator is not None:
        z = torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype).to(x.device)
    else:
        z = torch.randn_like(x)
    out = x + sigma * z
    return out.clamp_(0.0, 1.0) if clamp else out
