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

Modules, imported one way (``core`` <- ``fingerprints`` <- ``files`` <- ``cifar``; ``core`` <- ``shapes``):
``core`` (Data, few-shot subsets, Batches, add_noise, the cache), ``shapes`` (shapes, digits),
``files`` (ImageFolder trees, Indoor-67, npz), ``cifar`` (torchvision CIFAR, the JPEG zip),
``fingerprints`` (content fingerprints of a user's files, which key runs and caches). Each
source has one reader ``read_*(Request) -> Raw``; :func:`load` picks it from a table, then applies
the shared steps: subsets, validation split, resize, statistics, few-shot.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from jkt_lab._checks import check_choice, check_int

from .cifar import (CIFAR10_URL, CIFAR10_ZIP_NAME, CIFAR100_URL, cifar10_available, read_cifar10, read_cifar10_jpeg,
                    read_cifar100)
from .core import (
    Batches,
    Data,
    DataNotFoundError,
    Raw,
    Request,
    _balanced_subset,
    _empty_like,
    _generator,
    _per_class_pick,
    add_noise,
    cache_dir,
    data_root,
)
from .files import INDOOR67_URL, read_imagefolder, read_indoor67, read_npz
from .fingerprints import fingerprint
from .shapes import SHAPE_CLASSES, make_shapes, read_digits, read_shapes

__all__ = [
    "CIFAR10_URL",
    "CIFAR10_ZIP_NAME",
    "CIFAR100_URL",
    "DATASETS",
    "INDOOR67_URL",
    "SHAPE_CLASSES",
    "Batches",
    "Data",
    "DataNotFoundError",
    "PATH_DATASETS",
    "USER_DATASETS",
    "add_noise",
    "cifar10_available",
    "cache_dir",
    "data_root",
    "fingerprint",
    "load",
    "make_shapes",
]

# The sources: dataset name -> its reader.
_READERS = {
    "shapes": read_shapes,
    "digits": read_digits,
    "cifar10": read_cifar10,
    "cifar100": read_cifar100,
    "cifar10-jpeg": read_cifar10_jpeg,
    "indoor67": read_indoor67,
    "imagefolder": read_imagefolder,
    "npz": read_npz,
}

DATASETS: tuple[str, ...] = tuple(_READERS)
# Datasets read from a file or folder that ``path`` names (a run's ``Config.data_path``) ...
PATH_DATASETS: tuple[str, ...] = ("cifar10-jpeg", "indoor67", "imagefolder", "npz")
# ... and those that are nothing without it: your own data.
USER_DATASETS: tuple[str, ...] = ("imagefolder", "npz")


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
    req = Request(root=Path(root).expanduser() if root is not None else data_root(),
                  path=Path(path).expanduser() if path is not None else None,
                  seed=seed, n_train=n_train, n_test=n_test, image_size=image_size, download=download)

    raw = _READERS[name](req)
    if raw.sized:  # the reader drew n_train/n_test images itself
        n_train = n_test = None
    xtr, ytr, xte, yte = _subsets(raw, n_train, n_test, seed)
    xtr, ytr, mtr, xval, yval, mval = _validation_split(raw, xtr, ytr, val_per_class, seed)
    if len(ytr) == 0:
        raise ValueError(f"{name}: no training examples left (n_train={n_train}, val_per_class={val_per_class})")
    if image_size is not None and not raw.resized:
        xtr, xval, xte = (_resize(_as_images(t), image_size) for t in (xtr, xval, xte))
    mean, std = _channel_stats(xtr)
    xtr, xval, xte = _as_images(xtr), _as_images(xval), _as_images(xte)
    data = Data(name=raw.name or name, classes=raw.classes, x_train=xtr, y_train=ytr, x_val=xval, y_val=yval,
                x_test=xte, y_test=yte, mean=mean, std=std,
                mask_train=mtr, mask_val=mval, mask_test=raw.masks.get("test"),
                info={"seed": seed, "source": name})
    if per_class is not None:
        data = data.few_shot(per_class, seed)
    return data


# ----------------------------------------------------------------------------------------------
# the shared steps after reading
# ----------------------------------------------------------------------------------------------
def _subsets(raw: Raw, n_train: int | None, n_test: int | None, seed: int):
    """Class-balanced ``n_train``/``n_test`` subsets of the train and test splits."""
    xtr, ytr, xte, yte = raw.x_train, raw.y_train, raw.x_test, raw.y_test
    if n_train is not None:
        keep = _balanced_subset(ytr, n_train, _generator(seed, 5))
        xtr, ytr = xtr[keep], ytr[keep]
    if n_test is not None:
        keep = _balanced_subset(yte, n_test, _generator(seed, 6))
        xte, yte = xte[keep], yte[keep]
    return xtr, ytr, xte, yte


def _validation_split(raw: Raw, xtr, ytr, val_per_class: int | None, seed: int):
    """``(x_train, y_train, mask_train, x_val, y_val, mask_val)``: the source's own validation
    split, else ``val_per_class`` examples per class carved from train (still uint8 where the
    source is; default 10% per class, at most 500)."""
    classes = raw.classes
    k = len(classes)
    mtr, mval = raw.masks.get("train"), None
    if raw.val is not None:
        xval, yval = raw.val
        if len(yval) and int(yval.max()) >= k:
            raise ValueError(f"y_val exceeds the {k} classes")
        return xtr, ytr, mtr, xval, yval, mval
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
    if not len(pick):
        return xtr, ytr, mtr, _empty_like(xtr), ytr[:0], None if mtr is None else mtr[:0]
    rest = torch.ones(len(ytr), dtype=torch.bool)
    rest[pick] = False
    if mtr is not None:
        mval, mtr = mtr[pick], mtr[rest]
    return xtr[rest], ytr[rest], mtr, xtr[pick], ytr[pick], mval


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
