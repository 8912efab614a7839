"""Tests for jkt_lab.data: datasets, splits, few-shot subsets, batches, input noise.

Every test runs with JKT_LAB_CACHE / JKT_LAB_DATA pointing into tmp_path and with the
CIFAR-10 JPEG zip search disabled (JKT_LAB_CIFAR10_ZIP names a missing file), so nothing
touches ~/.cache, the shared data folder or the network, except the one slow test that
loads the real zip into a temporary cache.
"""
from __future__ import annotations

import hashlib
import io
import os
import pickle
import stat
import time
import urllib.error
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import jkt_lab.data as D
import jkt_lab.data.cifar as C
from jkt_lab.data import DATASETS, Batches, Data, DataNotFoundError, add_noise, load, make_shapes

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
REAL_ZIP = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-jpeg.zip"


@pytest.fixture(autouse=True)
def data_env(tmp_path, monkeypatch):
    """Private cache and data root per test; no zip search outside tmp_path."""
    monkeypatch.setenv("JKT_LAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("JKT_LAB_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("JKT_LAB_CIFAR10_ZIP", str(tmp_path / "no-such-cifar10-jpeg.zip"))
    monkeypatch.setattr(C, "_warned_jpeg", False)
    return tmp_path


def cache_files(tmp_path):
    d = tmp_path / "cache"
    return sorted(p.name for p in d.iterdir()) if d.is_dir() else []


def toy_data(n_per_class=(6, 6, 6, 6), n_val=2, n_test=3, with_masks=True) -> Data:
    """x_train[i] is the constant image i/N and mask_train[i] is (i % 2): lets a test check
    that images, labels and masks stay aligned through subsetting."""
    y = torch.cat([torch.full((n,), c) for c, n in enumerate(n_per_class)])
    n = len(y)
    x = (torch.arange(n, dtype=torch.float32) / n).view(n, 1, 1, 1).expand(n, 3, 4, 4).clone()
    m = (torch.arange(n) % 2).bool().view(n, 1, 1).expand(n, 4, 4).clone()
    k = len(n_per_class)
    yv, yt = torch.arange(k).repeat(n_val), torch.arange(k).repeat(n_test)
    return Data(name="toy", classes=[f"c{i}" for i in range(k)], x_train=x, y_train=y,
                x_val=torch.rand(len(yv), 3, 4, 4), y_val=yv, x_test=torch.rand(len(yt), 3, 4, 4), y_test=yt,
                mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
                mask_train=m if with_masks else None,
                mask_val=torch.zeros(len(yv), 4, 4, dtype=torch.bool) if with_masks else None,
                mask_test=torch.zeros(len(yt), 4, 4, dtype=torch.bool) if with_masks else None)


# ------------------------------------------------------------------------------------------
# shapes
# ------------------------------------------------------------------------------------------
def test_make_shapes_10k():
    x, y, m = make_shapes(10000, seed=0)  # its speed is a benchmark's business, not a timed test's
    assert x.shape == (10000, 3, 32, 32) and x.dtype == torch.float32
    assert y.shape == (10000,) and y.dtype == torch.int64
    assert m.shape == (10000, 32, 32) and m.dtype == torch.bool
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert torch.bincount(y).tolist() == [1000] * len(D.SHAPE_CLASSES)


def test_make_shapes_deterministic_by_seed():
    a, b = make_shapes(300, seed=7), make_shapes(300, seed=7)
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    c = make_shapes(300, seed=8)
    assert not torch.equal(a[0], c[0])


def test_make_shapes_masks_nonempty_inside_and_contrasting():
    x, y, m = make_shapes(2000, seed=3)
    area = m.sum(dim=(1, 2))
    assert int(area.min()) >= 20  # every image holds a visible shape
    border = m[:, 0, :].any(1) | m[:, -1, :].any(1) | m[:, :, 0].any(1) | m[:, :, -1].any(1)
    assert not bool(border.any())  # the whole shape lies inside the image
    assert float(area.float().mean()) < 0.5 * 32 * 32
    fg = (x * m[:, None]).sum((2, 3)) / area[:, None]
    bg = (x * ~m[:, None]).sum((2, 3)) / (32 * 32 - area[:, None])
    assert float((fg - bg).abs().max(1).values.median()) > 0.2  # shapes stand out from backgrounds
    # colour carries no class information: per-class mean foreground colours are alike
    per_class = torch.stack([fg[y == c].mean(0) for c in range(10)])
    assert float((per_class - per_class.mean(0)).abs().max()) < 0.08
    # shape area differs by class (ring/frame/bars small, square/circle large): shapes differ
    class_area = torch.stack([area[y == c].float().mean() for c in range(10)])
    assert float(class_area.max() / class_area.min()) > 2


def test_make_shapes_argument_errors():
    with pytest.raises(ValueError, match="n"):
        make_shapes(0)
    with pytest.raises(TypeError, match="seed"):
        make_shapes(5, seed=1.5)
    with pytest.raises(ValueError, match="size"):
        make_shapes(5, size=4)


def test_load_shapes_splits_masks_and_stats():
    d = load("shapes", n_train=500, n_test=100, seed=1)
    assert d.name == "shapes" and d.num_classes == 10 and d.classes == list(D.SHAPE_CLASSES)
    assert d.input_shape == (3, 32, 32) and d.device == torch.device("cpu")
    assert len(d.y_val) == 50 and len(d.y_train) == 450 and len(d.y_test) == 100  # 10% per class to val
    assert torch.bincount(d.y_val).tolist() == [5] * 10
    assert d.mask_train.shape == (450, 32, 32) and d.mask_val.shape == (50, 32, 32)
    assert d.mask_test.shape == (100, 32, 32)
    mean = d.x_train.mean(dim=(0, 2, 3))
    std = d.x_train.std(dim=(0, 2, 3), unbiased=False)
    assert np.allclose(d.mean, mean.tolist(), atol=1e-4) and np.allclose(d.std, std.tolist(), atol=1e-4)
    again = load("shapes", n_train=500, n_test=100, seed=1)
    assert torch.equal(d.x_train, again.x_train) and torch.equal(d.x_val, again.x_val)
    assert torch.equal(d.mask_train, again.mask_train) and torch.equal(d.x_test, again.x_test)
    other = load("shapes", n_train=500, n_test=100, seed=2)
    assert not torch.equal(d.x_train, other.x_train)
    # test images are a different stream from training images
    assert not torch.equal(d.x_test[:5], make_shapes(100, seed=1)[0][:5])


def test_load_shapes_without_val_is_make_shapes():
    d = load("shapes", n_train=200, n_test=50, val_per_class=0, seed=4)
    x, y, m = make_shapes(200, seed=4)
    assert torch.equal(d.x_train, x) and torch.equal(d.y_train, y) and torch.equal(d.mask_train, m)
    assert d.x_val.shape == (0, 3, 32, 32) and d.y_val.shape == (0,) and d.mask_val.shape == (0, 32, 32)


def test_load_shapes_val_masks_aligned():
    d = load("shapes", n_train=200, n_test=50, val_per_class=4, seed=4)
    x, y, m = make_shapes(200, seed=4)
    full = {tuple(img.flatten()[:40].tolist()): mask for img, mask in zip(x, m)}
    for img, mask in zip(torch.cat([d.x_train, d.x_val]), torch.cat([d.mask_train, d.mask_val])):
        assert torch.equal(full[tuple(img.flatten()[:40].tolist())], mask)


# ------------------------------------------------------------------------------------------
# digits
# ------------------------------------------------------------------------------------------
def test_load_digits():
    d = load("digits", seed=0)
    assert d.input_shape == (1, 8, 8) and d.num_classes == 10 and d.classes == [str(i) for i in range(10)]
    n = len(d.y_train) + len(d.y_val) + len(d.y_test)
    assert n == 1797 and len(d.y_test) == 360
    x = torch.cat([d.x_train, d.x_val, d.x_test])
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert torch.equal(x * 16, (x * 16).round())  # 16 grey levels
    counts = torch.bincount(d.y_test)
    assert int(counts.min()) >= 35 and int(counts.max()) <= 37  # stratified
    assert len(d.mean) == 1 and len(d.std) == 1
    same, other = load("digits", seed=0), load("digits", seed=1)
    assert torch.equal(same.x_test, d.x_test) and not torch.equal(other.x_test, d.x_test)
    big = load("digits", image_size=16, per_class=3)
    assert big.input_shape == (1, 16, 16) and torch.bincount(big.y_train).tolist() == [3] * 10


# ------------------------------------------------------------------------------------------
# CIFAR-10/100 in torchvision's on-disk format
# ------------------------------------------------------------------------------------------
# Choice: the tiny files below are python pickles in the exact layout of the real archives
# (str keys, as the original python-2 pickles load under encoding="latin1"; uint8 'data' rows
# of 3072 = R, G, B planes), loaded by the real torchvision.datasets.CIFAR10/100 classes.
# torchvision checks every file's md5 against the list on the class (`_check_integrity`), which
# tiny files cannot pass, so the `cifar_md5` fixture monkeypatches only those md5 lists with
# the md5s of the files written here; the loading code path itself is untouched.
def _dump(path: Path, obj) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)
    return hashlib.md5(path.read_bytes()).hexdigest()


def write_cifar10(root: Path, per_batch=20, n_test=30, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    base = root / "cifar-10-batches-py"
    md5, xs, ys = {}, [], []
    for i in range(1, 6):
        x = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        y = [int(v) for v in np.arange(per_batch) % 10]
        md5[f"data_batch_{i}"] = _dump(base / f"data_batch_{i}",
                                       {"batch_label": f"training batch {i} of 5", "data": x, "labels": y,
                                        "filenames": [f"{j}.png" for j in range(per_batch)]})
        xs.append(x)
        ys += y
    xt = rng.integers(0, 256, (n_test, 3072), dtype=np.uint8)
    yt = [int(v) for v in np.arange(n_test) % 10]
    md5["test_batch"] = _dump(base / "test_batch", {"batch_label": "testing batch 1 of 1", "data": xt, "labels": yt})
    md5["batches.meta"] = _dump(base / "batches.meta", {"label_names": CIFAR10_CLASSES, "num_cases_per_batch": per_batch,
                                                        "num_vis": 3072})
    return {"md5": md5, "x_train": np.concatenate(xs).reshape(-1, 3, 32, 32), "y_train": np.array(ys),
            "x_test": xt.reshape(-1, 3, 32, 32), "y_test": np.array(yt)}


def write_cifar100(root: Path, n_train=200, n_test=100, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    base = root / "cifar-100-python"
    fine = [f"class{i:03d}" for i in range(100)]
    x, xt = rng.integers(0, 256, (n_train, 3072), dtype=np.uint8), rng.integers(0, 256, (n_test, 3072), dtype=np.uint8)
    y, yt = [int(v) for v in np.arange(n_train) % 100], [int(v) for v in np.arange(n_test) % 100]
    md5 = {
        "train": _dump(base / "train", {"data": x, "fine_labels": y, "coarse_labels": [v // 5 for v in y]}),
        "test": _dump(base / "test", {"data": xt, "fine_labels": yt, "coarse_labels": [v // 5 for v in yt]}),
        "meta": _dump(base / "meta", {"fine_label_names": fine, "coarse_label_names": [f"s{i}" for i in range(20)]}),
    }
    return {"md5": md5, "x_train": x.reshape(-1, 3, 32, 32), "y_train": np.array(y), "classes": fine}


@pytest.fixture
def cifar_md5(monkeypatch):
    """Point torchvision's md5 lists at the tiny files (only the lists are patched)."""
    from torchvision.datasets import CIFAR10, CIFAR100

    def patch(cls, md5):
        monkeypatch.setattr(cls, "train_list", [[f, md5[f]] for f, _ in cls.train_list])
        monkeypatch.setattr(cls, "test_list", [[f, md5[f]] for f, _ in cls.test_list])
        monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5[cls.meta["filename"]]})

    return {"cifar10": lambda md5: patch(CIFAR10, md5), "cifar100": lambda md5: patch(CIFAR100, md5)}


def test_cifar10_real_format_and_cache(data_env, cifar_md5, monkeypatch):
    from torchvision.datasets import CIFAR10

    truth = write_cifar10(data_env / "data")
    cifar_md5["cifar10"](truth["md5"])
    d = load("cifar10", download=False, val_per_class=0)
    assert d.name == "cifar10" and d.classes == CIFAR10_CLASSES and d.input_shape == (3, 32, 32)
    assert torch.equal(d.x_train, torch.from_numpy(truth["x_train"]).float() / 255)
    assert torch.equal(d.y_train, torch.from_numpy(truth["y_train"]))
    assert torch.equal(d.x_test, torch.from_numpy(truth["x_test"]).float() / 255)
    assert any(n.startswith("cifar10-") and n.endswith(".npz") for n in cache_files(data_env))
    assert np.allclose(d.mean, d.x_train.mean(dim=(0, 2, 3)).tolist(), atol=1e-5)

    def boom(*args, **kwargs):
        raise AssertionError("second load must come from the cache")

    monkeypatch.setattr(CIFAR10, "__init__", boom)
    again = load("cifar10", download=False, val_per_class=0)
    assert torch.equal(again.x_train, d.x_train) and torch.equal(again.y_test, d.y_test)
    # explicit root argument wins over JKT_LAB_DATA
    monkeypatch.setenv("JKT_LAB_DATA", str(data_env / "elsewhere"))
    assert torch.equal(load("cifar10", root=data_env / "data", val_per_class=0).x_test, d.x_test)


def test_cifar100_real_format(data_env, cifar_md5):
    truth = write_cifar100(data_env / "data")
    cifar_md5["cifar100"](truth["md5"])
    d = load("cifar100", download=False, val_per_class=1)
    assert d.num_classes == 100 and d.classes == truth["classes"]
    assert len(d.y_val) == 100 and len(d.y_train) == 100 and len(d.y_test) == 100
    x = torch.cat([d.x_train, d.x_val])
    want = torch.from_numpy(truth["x_train"]).float() / 255
    assert torch.equal(torch.sort(x.flatten(1).sum(1)).values, torch.sort(want.flatten(1).sum(1)).values)
    few = load("cifar100", download=False, val_per_class=1, per_class=1)
    assert torch.bincount(few.y_train).tolist() == [1] * 100


def test_cifar_md5_mismatch_is_clear_error(data_env):
    write_cifar10(data_env / "data")  # tiny files fail torchvision's real md5 check
    with pytest.raises(DataNotFoundError, match="md5"):
        load("cifar10", download=False)


def test_cifar_missing_offline_download_false(data_env):
    with pytest.raises(DataNotFoundError) as err:
        load("cifar10", download=False)
    msg = str(err.value)
    assert "JKT_LAB_DATA" in msg and "cifar-10-batches-py" in msg and D.CIFAR10_URL in msg
    assert str(data_env / "data") in msg
    assert isinstance(err.value, FileNotFoundError)
    with pytest.raises(DataNotFoundError, match="cifar-100-python"):
        load("cifar100", download=False)


def test_cifar_missing_download_fails(data_env, monkeypatch):
    import torchvision.datasets.cifar as tv_cifar

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", no_network)
    with pytest.raises(DataNotFoundError) as err:
        load("cifar100")  # download=None: try, and report a failure clearly
    msg = str(err.value)
    assert "JKT_LAB_DATA" in msg and "URLError" in msg and D.CIFAR100_URL in msg


# ------------------------------------------------------------------------------------------
# CIFAR-10 JPEG zip
# ------------------------------------------------------------------------------------------
def write_jpeg_zip(path: Path, n_train=4, n_test=2, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    entries = []
    for split, n in (("train", n_train), ("test", n_test)):
        for c in CIFAR10_CLASSES:
            for i in range(n):
                img = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8).repeat(4, 0).repeat(4, 1)
                buf = io.BytesIO()
                Image.fromarray(img).save(buf, format="JPEG", quality=90)
                entries.append((f"{split}/{c}/{i:04d}.jpg", buf.getvalue()))
    order = rng.permutation(len(entries))  # zip order must not matter
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as z:
        for split in ("train", "test"):
            z.writestr(f"{split}/", b"")
        for j in order:
            z.writestr(*entries[j])
    return path


@pytest.fixture
def jpeg_zip(data_env):
    folder = data_env / "readonly"
    zp = write_jpeg_zip(folder / "cifar10-jpeg.zip")
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP)
    yield zp
    folder.chmod(stat.S_IRWXU)


def test_cifar10_jpeg_zip_twice_cache_not_beside_zip(data_env, jpeg_zip, monkeypatch):
    listing = sorted(os.listdir(jpeg_zip.parent))
    d = load("cifar10-jpeg", path=jpeg_zip, val_per_class=0)
    assert d.classes == CIFAR10_CLASSES and len(d.y_train) == 40 and len(d.y_test) == 20
    assert torch.bincount(d.y_train).tolist() == [4] * 10
    assert sorted(os.listdir(jpeg_zip.parent)) == listing  # nothing written beside the zip
    files = cache_files(data_env)
    assert len(files) == 1 and files[0].startswith("cifar10-jpeg-") and files[0].endswith(".npz")

    def boom(*args, **kwargs):
        raise AssertionError("second load must come from the cache")

    monkeypatch.setattr(C, "_decode_zip_members", boom)
    again = load("cifar10-jpeg", path=jpeg_zip, val_per_class=0)
    assert torch.equal(again.x_train, d.x_train) and torch.equal(again.y_test, d.y_test)
    # found through JKT_LAB_CIFAR10_ZIP as well
    monkeypatch.setenv("JKT_LAB_CIFAR10_ZIP", str(jpeg_zip))
    assert torch.equal(load("cifar10-jpeg", val_per_class=0).x_test, d.x_test)
    assert cache_files(data_env) == files  # no temporary files left behind


def test_cifar10_jpeg_zip_matches_torchvision_imagefolder(data_env, jpeg_zip):
    """Reading the zip directly gives exactly what ImageFolder gives on the extracted tree."""
    out = data_env / "extracted"
    with zipfile.ZipFile(jpeg_zip) as z:
        z.extractall(out)
    a = load("cifar10-jpeg", path=jpeg_zip, val_per_class=0)
    b = load("imagefolder", path=out, val_per_class=0)
    assert a.classes == b.classes
    for name in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    c = load("cifar10-jpeg", path=out, val_per_class=0)  # an extracted tree works too
    assert torch.equal(c.x_train, a.x_train)


def test_cifar10_falls_back_to_jpeg_zip(data_env, monkeypatch):
    zp = write_jpeg_zip(data_env / "z" / "cifar10-jpeg.zip")
    monkeypatch.setenv("JKT_LAB_CIFAR10_ZIP", str(zp))
    with pytest.warns(UserWarning, match="JPEG"):
        d = load("cifar10", download=False, val_per_class=1)
    assert d.name == "cifar10-jpeg" and d.num_classes == 10 and len(d.y_val) == 10


def test_cifar10_available_finds_the_torchvision_folder_then_the_zip(data_env, monkeypatch):
    from jkt_lab.data import cifar10_available
    assert cifar10_available() is None                                   # nothing here
    zp = write_jpeg_zip(data_env / "z" / "cifar10-jpeg.zip")
    monkeypatch.setenv("JKT_LAB_CIFAR10_ZIP", str(zp))
    assert cifar10_available() == zp
    write_cifar10(data_env / "data")                                     # torchvision's files win
    assert cifar10_available() == data_env / "data" / "cifar-10-batches-py"
    assert cifar10_available(root=data_env / "elsewhere") == zp


def test_cifar10_jpeg_missing_zip(data_env):
    with pytest.raises(DataNotFoundError, match="JKT_LAB_CIFAR10_ZIP"):
        load("cifar10-jpeg")


def test_cache_write_is_atomic(data_env, monkeypatch):
    zp = write_jpeg_zip(data_env / "z" / "cifar10-jpeg.zip")

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", killed)
    with pytest.raises(KeyboardInterrupt):
        load("cifar10-jpeg", path=zp)
    assert cache_files(data_env) == []  # neither a partial cache nor a temporary file


# ------------------------------------------------------------------------------------------
# ImageFolder, Indoor-67, npz
# ------------------------------------------------------------------------------------------
def write_tree(root: Path, classes, n, size=(12, 10), fmt="PNG", seed=0, grey_first=False):
    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            w, h = size if isinstance(size, tuple) else size(i)
            arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            img = Image.fromarray(arr)
            if grey_first and i == 0:
                img = img.convert("L")
            img.save(root / c / f"{i:03d}.{fmt.lower()}", format=fmt)


def test_imagefolder_train_test(data_env):
    root = data_env / "tree"
    write_tree(root / "train", ["emu", "cat", "dog"], 5, grey_first=True)
    write_tree(root / "test", ["emu", "cat", "dog"], 2, fmt="JPEG", seed=1)
    d = load("imagefolder", path=root, val_per_class=1)
    assert d.classes == ["cat", "dog", "emu"] and d.input_shape == (3, 10, 12)
    assert len(d.y_train) == 12 and len(d.y_val) == 3 and len(d.y_test) == 6
    small = load("imagefolder", path=root, image_size=8, val_per_class=0)
    assert small.input_shape == (3, 8, 8) and len(small.y_train) == 15


def test_imagefolder_single_tree_split_and_errors(data_env):
    root = data_env / "one"
    write_tree(root, ["a", "b"], 10)
    d = load("imagefolder", path=root, val_per_class=0, seed=3)
    assert len(d.y_test) == 4 and len(d.y_train) == 16 and torch.bincount(d.y_test).tolist() == [2, 2]
    again = load("imagefolder", path=root, val_per_class=0, seed=3)
    assert torch.equal(again.x_test, d.x_test)
    other = load("imagefolder", path=root, val_per_class=0, seed=4)
    assert not torch.equal(other.x_test, d.x_test)
    with pytest.raises(ValueError, match="path"):
        load("imagefolder")
    mixed = data_env / "mixed"
    write_tree(mixed, ["a", "b"], 3, size=lambda i: (10 + i, 10))
    with pytest.raises(ValueError, match="image_size"):
        load("imagefolder", path=mixed)
    assert load("imagefolder", path=mixed, image_size=6, val_per_class=0).input_shape == (3, 6, 6)


def write_indoor67(root: Path):
    classes = ["kitchen", "bar", "library"]
    train, test = [], []
    rng = np.random.default_rng(0)
    for c in classes:
        (root / "Images" / c).mkdir(parents=True)
        for i in range(5):
            name = f"int{i}.jpg"
            w, h = (50, 40) if i % 2 else (30, 60)
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "Images" / c / name)
            (train if i < 3 else test).append(f"{c}/{name}")
    Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(root / "Images" / "bar" / "unlisted.jpg")
    (root / "TrainImages.txt").write_text("\n".join(train) + "\n")
    (root / "TestImages.txt").write_text("\r\n".join(test))
    return classes


def test_indoor67(data_env):
    classes = write_indoor67(data_env / "data" / "indoor67")
    d = load("indoor67", image_size=16, val_per_class=0)
    assert d.classes == sorted(classes) and d.input_shape == (3, 16, 16)
    assert len(d.y_train) == 9 and len(d.y_test) == 6
    assert torch.bincount(d.y_test).tolist() == [2, 2, 2]
    assert load("indoor67", val_per_class=0).input_shape == (3, 64, 64)  # documented default size


def test_indoor67_missing(data_env):
    with pytest.raises(DataNotFoundError, match="web.mit.edu/torralba/www/indoor.html"):
        load("indoor67")


def test_npz_nhwc_uint8_and_nchw_float(data_env):
    rng = np.random.default_rng(0)
    xtr = rng.integers(0, 256, (30, 6, 6, 3), dtype=np.uint8)
    xte = rng.integers(0, 256, (9, 6, 6, 3), dtype=np.uint8)
    ytr, yte = np.arange(30) % 3, np.arange(9) % 3
    p = data_env / "a.npz"
    np.savez(p, x_train=xtr, y_train=ytr, x_test=xte, y_test=yte, classes=np.array(["x", "y", "z"]))
    d = load("npz", path=p, val_per_class=0)
    assert d.classes == ["x", "y", "z"] and d.input_shape == (3, 6, 6)
    assert torch.equal(d.x_train, torch.from_numpy(xtr).permute(0, 3, 1, 2).float() / 255)
    q = data_env / "b.npz"
    np.savez(q, x_train=(xtr.transpose(0, 3, 1, 2) / 255).astype(np.float32), y_train=ytr,
             x_test=(xte.transpose(0, 3, 1, 2) / 255).astype(np.float32), y_test=yte)
    e = load("npz", path=q, val_per_class=0)
    assert e.classes == ["0", "1", "2"] and torch.allclose(e.x_train, d.x_train)
    bad = data_env / "bad.npz"
    np.savez(bad, x_train=xtr * 2.0, y_train=ytr, x_test=xte, y_test=yte)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        load("npz", path=bad)
    np.savez(bad, x_train=xtr, y_train=ytr)
    with pytest.raises(ValueError, match="x_test"):
        load("npz", path=bad)
    with pytest.raises(ValueError, match="path"):
        load("npz")


# ------------------------------------------------------------------------------------------
# load arguments, helpers
# ------------------------------------------------------------------------------------------
def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as err:
        load("mnist")
    for name in DATASETS:
        assert repr(name) in str(err.value)
    with pytest.raises(TypeError, match="name"):
        load(3)


@pytest.mark.parametrize("kwargs, word", [
    ({"n_train": 0}, "n_train"), ({"seed": -1}, "seed"), ({"per_class": 0}, "per_class"),
    ({"image_size": 0}, "image_size"), ({"val_per_class": -1}, "val_per_class"),
    ({"val_per_class": 20}, "val_per_class"), ({"per_class": 50}, "per_class"),
])
def test_load_argument_errors(kwargs, word):
    with pytest.raises(ValueError, match=word):
        load("shapes", **{"n_train": 200, "n_test": 20, **kwargs})


def test_cache_dir_and_data_root(monkeypatch, tmp_path):
    assert D.cache_dir() == tmp_path / "cache" and D.data_root() == tmp_path / "data"
    monkeypatch.delenv("JKT_LAB_CACHE")
    monkeypatch.delenv("JKT_LAB_DATA")
    assert D.cache_dir() == Path.home() / ".cache" / "jkt_lab"
    assert D.data_root() == Path.home() / ".cache" / "jkt_lab" / "data"


# ------------------------------------------------------------------------------------------
# Data: few_shot, select_classes, to, summary
# ------------------------------------------------------------------------------------------
def test_few_shot_balanced_nested_aligned():
    d = toy_data()
    f = d.few_shot(3, seed=1)
    assert torch.bincount(f.y_train).tolist() == [3, 3, 3, 3]
    idx = (f.x_train[:, 0, 0, 0] * len(d.y_train)).round().long()  # recover original indices
    assert torch.equal(f.y_train, d.y_train[idx]) and torch.equal(f.mask_train, d.mask_train[idx])
    assert f.x_val is d.x_val and f.x_test is d.x_test and f.mean == d.mean
    small = d.few_shot(2, seed=1)
    small_idx = set((small.x_train[:, 0, 0, 0] * len(d.y_train)).round().long().tolist())
    assert small_idx <= set(idx.tolist())  # nested subsets for one seed
    assert torch.equal(d.few_shot(3, seed=1).x_train, f.x_train)
    assert not torch.equal(d.few_shot(3, seed=2).x_train, f.x_train)
    assert "per_class 3" in f.summary()


def test_few_shot_errors_name_per_class():
    d = toy_data(n_per_class=(6, 2, 6))
    with pytest.raises(ValueError, match="per_class") as err:
        d.few_shot(3)
    assert "c1" in str(err.value)
    with pytest.raises(ValueError, match="per_class"):
        d.few_shot(0)
    with pytest.raises(TypeError, match="per_class"):
        d.few_shot(2.5)
    assert torch.bincount(d.few_shot(2).y_train).tolist() == [2, 2, 2]


def test_select_classes_relabels_in_given_order():
    d = toy_data(n_per_class=(2, 3, 4, 5, 6), with_masks=True)
    s = d.select_classes([3, 1])
    assert s.classes == ["c3", "c1"] and s.num_classes == 2
    assert torch.bincount(s.y_train).tolist() == [5, 3]
    assert torch.bincount(s.y_val).tolist() == [2, 2] and torch.bincount(s.y_test).tolist() == [3, 3]
    idx = (s.x_train[:, 0, 0, 0] * len(d.y_train)).round().long()
    assert torch.equal(torch.tensor([3, 1])[s.y_train], d.y_train[idx])
    assert torch.equal(s.mask_train, d.mask_train[idx])
    keep = d.select_classes([4, 2], relabel=False)
    assert keep.classes == d.classes and sorted(set(keep.y_train.tolist())) == [2, 4]
    assert torch.bincount(keep.few_shot(2).y_train, minlength=5).tolist() == [0, 0, 2, 0, 2]
    src, tgt = d.select_classes(range(0, 2)), d.select_classes(range(2, 5))
    assert src.num_classes == 2 and tgt.classes == ["c2", "c3", "c4"]
    for bad in ([], [1, 1], [7]):
        with pytest.raises(ValueError, match="classes"):
            d.select_classes(bad)
    with pytest.raises(TypeError, match="classes"):
        d.select_classes("ab")


def test_data_to_summary_and_validation():
    d = toy_data()
    e = d.to("cpu")
    assert e.device == torch.device("cpu") and torch.equal(e.x_train, d.x_train)
    text = d.summary()
    assert "\n" not in text and "toy" in text and "train 24" in text and "4 classes" in text
    assert d.input_shape == (3, 4, 4) and "toy" in repr(d)
    with pytest.raises(TypeError, match="y_train"):
        Data(name="x", classes=["a"], x_train=torch.rand(2, 1, 2, 2), y_train=torch.zeros(2),
             x_val=torch.rand(0, 1, 2, 2), y_val=torch.zeros(0, dtype=torch.long),
             x_test=torch.rand(1, 1, 2, 2), y_test=torch.zeros(1, dtype=torch.long), mean=(0.5,), std=(0.2,))


# ------------------------------------------------------------------------------------------
# Batches
# ------------------------------------------------------------------------------------------
def epoch_list(b):
    return [tuple(t.clone() for t in batch) for batch in b]


def test_batches_cover_epoch_and_reproducible():
    x, y = torch.rand(50, 3, 8, 8), torch.arange(50) % 5
    b = Batches(x, y, 16, seed=3, return_index=True)
    assert len(b) == 4 and len(Batches(x, y, 16, drop_last=True)) == 3
    e0, e1 = epoch_list(b), epoch_list(b)
    idx0 = torch.cat([t[2] for t in e0])
    assert sorted(idx0.tolist()) == list(range(50))
    assert all(torch.equal(xb, x[i]) and torch.equal(yb, y[i]) for xb, yb, i in e0)
    assert not torch.equal(idx0, torch.cat([t[2] for t in e1]))  # a new order each epoch
    fresh = Batches(x, y, 16, seed=3, return_index=True)
    assert all(torch.equal(a[2], c[2]) for a, c in zip(epoch_list(fresh), e0))
    fresh.set_epoch(1)
    assert all(torch.equal(a[2], c[2]) for a, c in zip(epoch_list(fresh), e1))  # resume
    other = Batches(x, y, 16, seed=4, return_index=True)
    assert not torch.equal(torch.cat([t[2] for t in epoch_list(other)]), idx0)
    plain = Batches(x, y, 16, shuffle=False)
    assert torch.equal(torch.cat([xb for xb, _ in plain]), x)
    assert len(list(Batches(x, y, 16, drop_last=True))) == 3


def test_batches_augment_crop_and_flip():
    x = torch.rand(64, 3, 8, 8)
    y = torch.zeros(64, dtype=torch.long)
    flips = list(Batches(x, y, 32, augment=True, pad=0, flip=True, seed=0, return_index=True))
    n_flipped = 0
    for xb, _, idx in flips:
        assert xb.shape == (32, 3, 8, 8)
        for out, src in zip(xb, x[idx]):
            same, flipped = torch.equal(out, src), torch.equal(out, src.flip(-1))
            assert same or flipped
            n_flipped += flipped
    assert 10 < n_flipped < 54
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    shifts = set()
    for xb, _, idx in Batches(x, y, 32, augment=True, pad=2, flip=False, seed=1, return_index=True):
        for out, i in zip(xb, idx):
            match = [(dy, dx) for dy in range(5) for dx in range(5)
                     if torch.equal(out, padded[i, :, dy:dy + 8, dx:dx + 8])]
            assert match  # a crop of the zero-padded image
            shifts.add(match[0])
    assert len(shifts) > 5
    a = epoch_list(Batches(x, y, 32, augment=True, seed=5))
    b = epoch_list(Batches(x, y, 32, augment=True, seed=5))
    assert all(torch.equal(u[0], v[0]) for u, v in zip(a, b))


def test_batches_argument_errors():
    x, y = torch.rand(10, 3, 4, 4), torch.zeros(10, dtype=torch.long)
    with pytest.raises(ValueError, match="batch_size"):
        Batches(x, y, 0)
    with pytest.raises(ValueError, match="y"):
        Batches(x, y[:5], 4)
    with pytest.raises(TypeError, match="y"):
        Batches(x, y.float(), 4)
    with pytest.raises(ValueError, match="pad"):
        Batches(x, y, 4, augment=True, pad=-1)
    with pytest.raises(ValueError, match="augment"):
        Batches(torch.rand(10, 5), y, 4, augment=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_batches_same_on_cpu_and_gpu():
    x, y = torch.rand(40, 3, 8, 8), torch.arange(40) % 4
    cpu = epoch_list(Batches(x, y, 16, augment=True, seed=2))
    gpu = epoch_list(Batches(x.cuda(), y.cuda(), 16, augment=True, seed=2))
    assert all(torch.equal(a[0], b[0].cpu()) and torch.equal(a[1], b[1].cpu()) for a, b in zip(cpu, gpu))


# ------------------------------------------------------------------------------------------
# add_noise
# ------------------------------------------------------------------------------------------
def test_add_noise_statistics_and_seeding():
    x = torch.full((200, 3, 16, 16), 0.5)
    assert add_noise(x, 0.0) is x
    z = add_noise(x, 0.1, seed=0) - x
    assert abs(float(z.mean())) < 3e-3 and abs(float(z.std()) - 0.1) < 3e-3
    assert torch.equal(add_noise(x, 0.1, seed=0), add_noise(x, 0.1, seed=0))
    assert not torch.equal(add_noise(x, 0.1, seed=0), add_noise(x, 0.1, seed=1))
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(add_noise(x, 0.2, generator=g1), add_noise(x, 0.2, generator=g2))
    c = add_noise(x, 1.0, seed=0, clamp=True)
    assert float(c.min()) == 0.0 and float(c.max()) == 1.0
    assert float(add_noise(x, 1.0, seed=0).max()) > 1.0


def test_add_noise_argument_errors():
    x = torch.rand(4, 3, 2, 2)
    with pytest.raises(ValueError, match="sigma"):
        add_noise(x, -0.1)
    with pytest.raises(TypeError, match="sigma"):
        add_noise(x, "0.1")
    with pytest.raises(TypeError, match="x"):
        add_noise(torch.zeros(4, dtype=torch.long), 0.1)
    with pytest.raises(ValueError, match="seed or generator"):
        add_noise(x, 0.1, seed=1, generator=torch.Generator())


# ------------------------------------------------------------------------------------------
# the real JPEG CIFAR-10 (slow; skipped where the zip is absent)
# ------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.skipif(not REAL_ZIP.is_file(), reason=f"{REAL_ZIP} not present")
def test_real_cifar10_jpeg_zip(data_env, monkeypatch):
    t0 = time.perf_counter()
    d = load("cifar10-jpeg", path=REAL_ZIP, val_per_class=0)
    first = time.perf_counter() - t0
    print(f"\nfirst decode of {REAL_ZIP.name}: {first:.1f} s")
    assert len(d.y_train) == 50000 and len(d.y_test) == 10000 and d.classes == CIFAR10_CLASSES
    assert torch.bincount(d.y_train).tolist() == [5000] * 10 and torch.bincount(d.y_test).tolist() == [1000] * 10
    assert np.allclose(d.mean, (0.4913, 0.4821, 0.4465), atol=0.01)
    del d

    def boom(*args, **kwargs):
        raise AssertionError("second load must come from the cache")

    monkeypatch.setattr(C, "_decode_zip_members", boom)
    t0 = time.perf_counter()
    again = load("cifar10-jpeg", path=REAL_ZIP, val_per_class=0)
    print(f"second load (cache): {time.perf_counter() - t0:.2f} s")
    assert len(again.y_train) == 50000
