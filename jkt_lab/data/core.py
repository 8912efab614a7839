"""The shared core of :mod:`jkt_lab.data`: the :class:`Data` container, per-class few-shot and
class selection, device-resident :class:`Batches`, input noise, the decoded-array cache, and the
conversion of a source's arrays into checked tensors (:func:`from_arrays`).

Every reader of a source (``shapes``, ``cifar``, ``files``) returns a :class:`Raw`; ``load`` in
``jkt_lab/data/__init__.py`` turns it into a :class:`Data`. It imports nothing else from
``jkt_lab.data``.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from jkt_lab._checks import check_batch, check_int, check_nonnegative

_CACHE_VERSION = 1


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
    _write_atomic(path, lambda f: np.savez(f, **arrays))
    return arrays


def _write_atomic(path: Path, write) -> None:
    """``write(binary file)`` into a temporary file beside ``path``, then renamed over it: readers
    see the old file or the whole new one, and a crash or kill leaves no partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=path.suffix + ".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
# what a source's reader returns
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Request:
    """The checked arguments of ``load`` that a reader may use."""

    root: Path                  # data root (cifar10/cifar100/indoor67)
    path: Path | None           # the file or folder named by the user
    seed: int
    n_train: int | None
    n_test: int | None
    image_size: int | None
    download: bool | None


@dataclass
class Raw:
    """A source as read: train/test tensors (uint8 or float in [0, 1]), an optional given
    validation split, class names, optional masks. ``sized``: the reader already drew
    ``n_train``/``n_test`` images; ``resized``: it already produced ``image_size`` images."""

    classes: list[str]
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    val: tuple[torch.Tensor, torch.Tensor] | None = None
    masks: dict = field(default_factory=dict)
    name: str | None = None     # the dataset actually read, when it differs (cifar10 -> cifar10-jpeg)
    sized: bool = False
    resized: bool = False


def _checked_images(a: np.ndarray, name: str) -> torch.Tensor:
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


def _labels(y, name: str, num_classes: int | None = None) -> torch.Tensor:
    y = torch.as_tensor(np.asarray(y))
    if y.is_floating_point() or y.dtype == torch.bool or y.dim() != 1:
        raise ValueError(f"{name} must be a 1-D integer array of class indices, got {y.dtype} {tuple(y.shape)}")
    y = y.long()
    if y.numel() and (int(y.min()) < 0 or (num_classes is not None and int(y.max()) >= num_classes)):
        raise ValueError(f"{name} must lie in [0, {num_classes}), got [{int(y.min())}, {int(y.max())}]")
    return y


def from_arrays(arrays: dict, seed: int, *, resized: bool = False, name: str | None = None) -> Raw:
    """Checked tensors from a source's arrays (``x_train``, ``y_train``, optional ``x_test``/``y_test``,
    ``x_val``/``y_val``, ``classes``). Without a test split (a single ImageFolder tree): a
    deterministic stratified 20% of train becomes the test split."""
    classes = [str(c) for c in arrays["classes"]] if "classes" in arrays else None
    xtr = _checked_images(arrays["x_train"], "x_train")
    ytr = _labels(arrays["y_train"], "y_train")
    if "x_test" in arrays:
        xte, yte = _checked_images(arrays["x_test"], "x_test"), _labels(arrays["y_test"], "y_test")
    else:  # single ImageFolder tree: deterministic stratified split, 20% test
        pick = _per_class_pick(ytr, (torch.bincount(ytr) * 0.2).ceil().long(), _generator(seed, 4))
        rest = torch.ones(len(ytr), dtype=torch.bool)
        rest[pick] = False
        xte, yte, xtr, ytr = xtr[pick], ytr[pick], xtr[rest], ytr[rest]
    val = None
    if "x_val" in arrays:
        val = (_checked_images(arrays["x_val"], "x_val"), _labels(arrays["y_val"], "y_val"))
    if classes is None:
        top = max(int(ytr.max()), int(yte.max()) if len(yte) else 0)
        classes = [str(c) for c in range(top + 1)]
    if len(ytr) and int(ytr.max()) >= len(classes) or len(yte) and int(yte.max()) >= len(classes):
        raise ValueError(f"labels exceed the {len(classes)} classes given")
    if xtr.shape[1:] != xte.shape[1:]:
        raise ValueError(f"x_train images {tuple(xtr.shape[1:])} and x_test images "
                         f"{tuple(xte.shape[1:])} differ in shape")
    return Raw(classes, xtr, ytr, xte, yte, val=val, name=name, resized=resized)


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
    """Mini-batches ``(x, y)`` served from the tensors' device; with ``return_index``, also each
    example's index, with ``return_keys`` a key of the exact input (``(x, y, [idx,] keys)``).
    Epoch ``k``'s order and augmentation depend only on ``(seed, k)``; iterating advances the
    epoch counter, ``set_epoch(k)`` resumes. Augmentation: random crop of the zero-padded image
    (``pad`` pixels) and horizontal flip, drawn on a CPU generator (same on CPU and GPU), fresh
    every epoch, or, with ``views=K``, one of a fixed pool of K augmented views per image (drawn
    once from ``seed``): inputs then repeat, which a teacher cache can exploit.

    A key is ``index * n_views + view`` (:attr:`n_views`): equal keys mean equal inputs."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, *, shuffle: bool = True,
                 augment: bool = False, pad: int = 4, flip: bool = True, drop_last: bool = False,
                 seed: int = 0, return_index: bool = False, views: int | None = None, return_keys: bool = False):
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
                        ("drop_last", drop_last), ("return_index", return_index), ("return_keys", return_keys)):
            if not isinstance(v, bool):
                raise TypeError(f"{flag} must be a bool, got {type(v).__name__}")
        if augment and x.dim() != 4:
            raise ValueError(f"x must be (N, C, H, W) images for augment=True, got shape {tuple(x.shape)}")
        if drop_last and x.shape[0] < self.batch_size:
            raise ValueError(f"batch_size={self.batch_size} exceeds the {x.shape[0]} examples with drop_last=True")
        if views is not None:
            views = check_int(views, "views", minimum=1)
            if not augment:
                raise ValueError("views (a pool of augmented views per image) needs augment=True")
        self.x, self.y = x, y
        self.shuffle, self.augment, self.flip = shuffle, augment, flip
        self.drop_last, self.return_index, self.return_keys = drop_last, return_index, return_keys
        self.views = views
        self.epoch = 0
        side = 2 * self.pad + 1
        if not augment:
            self.n_views = 1
        elif views is not None:
            self.n_views = views
            gen = _generator(self.seed, 2 ** 31)  # a stream of its own: the per-epoch draws are unchanged
            n = x.shape[0]
            self._pool_offsets = torch.randint(0, side, (n, views, 2), generator=gen)
            self._pool_flips = torch.rand(n, views, generator=gen) < 0.5 if flip else None
        else:
            self.n_views = side * side * (2 if flip else 1)

    def set_epoch(self, epoch: int) -> None:
        """The next iteration serves epoch ``epoch``."""
        self.epoch = check_int(epoch, "epoch", minimum=0)

    def __len__(self) -> int:
        n = self.x.shape[0]
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self):
        epoch, self.epoch = self.epoch, self.epoch + 1
        return self._epoch(epoch)

    def _augmentation(self, gen: torch.Generator, order: torch.Tensor):
        """This epoch's crop offsets (n, 2), flips (n,) or None, and view numbers (n,) of the
        examples in ``order`` (position by position), on the CPU."""
        n = order.shape[0]
        if self.views is not None:
            pick = torch.randint(0, self.views, (n,), generator=gen)
            flips = None if self._pool_flips is None else self._pool_flips[order, pick]
            return self._pool_offsets[order, pick], flips, pick
        offsets = torch.randint(0, 2 * self.pad + 1, (n, 2), generator=gen)
        flips = (torch.rand(n, generator=gen) < 0.5) if self.flip else None
        view = offsets[:, 0] * (2 * self.pad + 1) + offsets[:, 1]
        return offsets, flips, view * 2 + flips.long() if flips is not None else view

    def _epoch(self, epoch: int):
        n, dev = self.x.shape[0], self.x.device
        gen = _generator(self.seed, epoch)
        order = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
        if self.augment:
            offsets, flips, view = self._augmentation(gen, order)
            offsets, view = offsets.to(dev), view.to(dev)
            flips = None if flips is None else flips.to(dev)
        order = order.to(dev)
        for i in range(len(self)):
            sl = slice(i * self.batch_size, (i + 1) * self.batch_size)
            idx = order[sl]
            xb, yb = self.x[idx], self.y[idx]
            if self.augment:
                xb = _crop_flip(xb, offsets[sl], None if flips is None else flips[sl], self.pad)
            out = (xb, yb, idx) if self.return_index else (xb, yb)
            if self.return_keys:
                out += (idx * self.n_views + (view[sl] if self.augment else 0),)
            yield out


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
