"""Image files on disk: ImageFolder trees (decoded in parallel, shared with the CIFAR-10 JPEG
reader), MIT Indoor-67 with its official split lists, and arrays in a ``.npz`` file."""
from __future__ import annotations

import os
import warnings
import zipfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from .core import DataNotFoundError, Raw, Request, _cached, _stat_key, cache_dir, from_arrays
from .fingerprints import fingerprint

INDOOR67_URL = "http://web.mit.edu/torralba/www/indoor.html"
SKIP_BAD_IMAGES = "JKT_LAB_SKIP_BAD_IMAGES"  # =1: leave out images that cannot be decoded (jkt-lab --skip-bad-images)


def skip_bad_images() -> bool:
    """True when ``$JKT_LAB_SKIP_BAD_IMAGES`` is 1/true/yes: ImageFolder images that cannot be
    decoded are left out with a warning instead of stopping the read."""
    return os.environ.get(SKIP_BAD_IMAGES, "").strip().lower() in ("1", "true", "yes", "on")


# ----------------------------------------------------------------------------------------------
# image decoding (ImageFolder trees, shared by imagefolder, indoor67 and cifar10-jpeg)
# ----------------------------------------------------------------------------------------------
def _decode_files(paths: list[str], size, skip: bool = False) -> tuple[np.ndarray, list[int]]:
    """uint8 (k, H, W, 3) and the indices of the files left out. ``size`` int: shorter side
    resized then centre-cropped to size x size; ``(h, w)``: every image must already be h x w.
    A file that cannot be decoded is a ValueError naming it, or with ``skip`` left out."""
    from PIL import Image

    if isinstance(size, int):
        out = np.empty((len(paths), size, size, 3), np.uint8)
    else:
        out = np.empty((len(paths), size[0], size[1], 3), np.uint8)
    bad = []
    for i, p in enumerate(paths):
        try:
            out[i] = _decode_file(p, size)
        except (OSError, SyntaxError, Image.DecompressionBombError) as exc:  # PIL's errors for damaged files
            if not skip:
                raise ValueError(f"image {p} cannot be decoded ({exc}); replace or delete it, or leave such files "
                                 f"out with --skip-bad-images ({SKIP_BAD_IMAGES}=1)") from None
            bad.append(i)
    return np.delete(out, bad, axis=0), bad


def _decode_file(p: str, size) -> np.ndarray:
    """One image as uint8 (H, W, 3) (see :func:`_decode_files`)."""
    from PIL import Image

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
        return np.asarray(im)


def _workers(n_items: int) -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cpus, 8)) if n_items >= 2000 else 1


def _parallel(fn, chunks: list[tuple], sizes: list[int], desc: str) -> list:
    """``[fn(*c) for c in chunks]``, in worker processes when big, with a tqdm bar over ``sizes``."""
    from concurrent.futures import as_completed
    from concurrent.futures.process import BrokenProcessPool

    from .. import progress

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


def _decode_samples(samples: list[tuple[str, int]], size, desc: str, skip: bool = False):
    """Decode ImageFolder ``samples`` into uint8 NCHW + int64 labels. ``size``: int (resize and
    centre-crop), ``(h, w)`` (must match) or None (the first readable image's size, which all must
    match). ``skip``: files that cannot be decoded are left out, with a warning."""
    from PIL import Image

    paths = [p for p, _ in samples]
    for p in paths if size is None else ():
        try:
            with Image.open(p) as im:
                size = (im.size[1], im.size[0])
                break
        except (OSError, SyntaxError):  # decoding names it (or leaves it out)
            continue
    parts = _chunks(paths)
    decoded = _parallel(_decode_files, [(p, size, skip) for p in parts], [len(p) for p in parts], desc)
    starts = np.cumsum([0] + [len(p) for p in parts])
    bad = [int(start) + i for start, (_, left) in zip(starts, decoded) for i in left]
    if bad:
        warnings.warn(f"left out {len(bad)} image(s) that cannot be decoded, e.g. {paths[bad[0]]}", stacklevel=2)
    x = np.ascontiguousarray(np.concatenate([a for a, _ in decoded]).transpose(0, 3, 1, 2))
    y = np.delete(np.array([t for _, t in samples], dtype=np.int64), bad)
    return x, y


def _imagefolder_arrays(root: Path, image_size: int | None, desc: str, skip: bool = False) -> dict[str, np.ndarray]:
    """Decode an ImageFolder tree with ``train/`` and ``test/`` (or ``val/``) subfolders, or a
    single tree of class folders, through ``torchvision.datasets.ImageFolder``; ``skip``: leave
    out the images that cannot be decoded."""
    from torchvision.datasets import ImageFolder
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    splits = {s: root / s for s in ("train", "val", "test") if (root / s).is_dir()}
    if "train" not in splits:
        if splits:
            raise ValueError(f"path {root} has {'/'.join(splits)} but no train/ subfolder")
        splits = {"train": root}
    train = ImageFolder(str(splits.pop("train")))
    out = {"classes": np.array(train.classes)}
    out["x_train"], out["y_train"] = _decode_samples(train.samples, image_size, f"{desc} train", skip)
    size = image_size if image_size is not None else tuple(out["x_train"].shape[2:])
    for split, d in splits.items():
        extra = sorted(set(find_classes(str(d))[0]) - set(train.classes))
        if extra:
            raise ValueError(f"path {d} has class folders not in train/: {extra}")
        samples = make_dataset(str(d), train.class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
        if samples:
            out[f"x_{split}"], out[f"y_{split}"] = _decode_samples(samples, size, f"{desc} {split}", skip)
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
NPZ_HELP = "numpy.savez(path, x_train=..., y_train=..., x_test=..., y_test=...) writes one"


def _npz_arrays(path: Path) -> dict:
    if not path.is_file():
        raise DataNotFoundError(f"npz: file {path} not found (path must name a .npz with x_train, y_train, "
                                f"x_test, y_test and optionally classes, x_val, y_val)")
    if path.stat().st_size == 0 or not zipfile.is_zipfile(path):
        what = "is empty (0 bytes)" if path.stat().st_size == 0 else "is not an .npz file (a zip archive of arrays)"
        raise ValueError(f"path {path} {what}; {NPZ_HELP}")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:  # damaged, or object arrays (never unpickled)
        raise ValueError(f"path {path} is not a readable .npz file ({exc}); {NPZ_HELP}") from None
    missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in arrays]
    if missing:
        raise ValueError(f"path {path} lacks array(s) {missing}; has {list(arrays)}")
    return arrays


def _check_classes(arrays: dict, path: Path) -> dict:
    """Refuse data a classifier cannot be trained on: no training images, fewer than 2 classes,
    or (without ``classes`` names) labels with gaps, which would add empty classes to the model."""
    if len(arrays["x_train"]) == 0:
        raise ValueError(f"path {path}: x_train holds no images")
    labels = [np.asarray(arrays[k]).ravel() for k in ("y_train", "y_test", "y_val") if k in arrays]
    seen = np.unique(np.concatenate(labels)) if labels else np.array([], np.int64)
    if "classes" not in arrays and seen.size and seen.dtype.kind in "iu" and seen.min() >= 0:
        gaps = sorted(set(range(int(seen.max()) + 1)) - set(seen.tolist()))
        if gaps:
            raise ValueError(f"path {path}: the labels skip {gaps[:10]}{' ...' if len(gaps) > 10 else ''}, which "
                             f"would be classes with no image; number the classes 0..{seen.size - 1}, or add a "
                             f"'classes' array naming all {int(seen.max()) + 1} classes")
    n_train = np.unique(np.asarray(arrays["y_train"])).size
    if n_train < 2:
        names = [str(c) for c in arrays["classes"]] if "classes" in arrays else []
        raise ValueError(f"path {path}: the training images are of {n_train} class{'' if n_train == 1 else 'es'}"
                         f"{' (' + ', '.join(names) + ')' if names else ''}; a classifier needs at least 2 classes")
    return arrays


# ----------------------------------------------------------------------------------------------
# readers
# ----------------------------------------------------------------------------------------------
def read_indoor67(req: Request) -> Raw:
    """MIT Indoor-67 under ``path`` or the data root; shorter side resized to ``image_size``
    (default 64) and centre-cropped."""
    arrays = _indoor67_arrays(_indoor67_dir(req.root, req.path), req.image_size or 64)
    return from_arrays(arrays, req.seed, resized=True)


def read_imagefolder(req: Request) -> Raw:
    """An ImageFolder tree at ``path`` (decoded once, cached by its content fingerprint);
    ``image_size`` resizes the shorter side and centre-crops."""
    path = req.path
    if path is None:
        raise ValueError("path is required for imagefolder: a folder with train/ and test/ (or val/) "
                         "subfolders of class folders, or one tree of class folders")
    if not path.is_dir():
        raise DataNotFoundError(f"imagefolder: path {path} is not a folder")
    skip = skip_bad_images()
    arrays = _cached("imagefolder", [fingerprint(path), req.image_size] + (["skip bad images"] if skip else []),
                     lambda: _imagefolder_arrays(path, req.image_size, "decoding imagefolder", skip))  # by content
    return from_arrays(_check_classes(arrays, path), req.seed, resized=True)


def read_npz(req: Request) -> Raw:
    """Arrays in the ``.npz`` file at ``path``."""
    if req.path is None:
        raise ValueError("path is required for npz: a .npz file with x_train, y_train, x_test, y_test")
    return from_arrays(_check_classes(_npz_arrays(req.path), req.path), req.seed)
