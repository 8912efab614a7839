"""Your own data, everywhere: an ImageFolder tree and an .npz file written here, run end to end
from the command line (train-teacher, distill, sweep from a spec file, report), keyed by a
content fingerprint (one changed image: new fingerprint, new run key, a new teacher).

Small on purpose: 3 classes, 8 training and 3 test images per class, a 20x20 greyscale npz and
a 24x24 colour PNG tree, tiny nets trained for a few steps. Runs, caches and data in tmp_path.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import jkt_lab.data.fingerprints as fingerprints_mod
from jkt_lab import cli, data, widgets
from jkt_lab.config import Config
from jkt_lab.experiments import get_teacher, load_data, resolve_data, trained_student
from jkt_lab.results import ResultStore, config_hash

CLASSES = ("ant", "bee", "cow")
FAST = dict(teacher="tiny", teacher_width=4, teacher_epochs=1, teacher_batch_size=8, student="tiny",
            student_width=4, steps=3, batch_size=8, per_class=3, method="kd+jacobian")
FAST_ARGS = [a for k, v in FAST.items() for a in (f"--{k.replace('_', '-')}", str(v))]
# train-teacher takes the data and teacher options only
TEACHER_ARGS = [a for k, v in FAST.items() if k.startswith("teacher") for a in (f"--{k.replace('_', '-')}", str(v))]
RUN_ARGS = ["--device", "cpu", "--no-progress"]


@pytest.fixture(autouse=True)
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("JKT_LAB_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("JKT_LAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("JKT_LAB_DATA", str(tmp_path / "data-root"))
    return tmp_path


def write_npz(path: Path, seed: int = 0) -> Path:
    """20x20 greyscale uint8 images (N, H, W), 3 named classes: the brightness of a square gives the class."""
    rng = np.random.default_rng(seed)

    def split(n):
        y = np.arange(n) % 3
        x = rng.integers(0, 60, (n, 20, 20), dtype=np.uint8)
        for i, c in enumerate(y):
            x[i, 5:15, 5:15] += np.uint8(60 * (c + 1))
        return x, y

    (x, y), (xt, yt) = split(24), split(9)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x_train=x, y_train=y, x_test=xt, y_test=yt, classes=np.array(CLASSES))
    return path


def write_tree(root: Path, seed: int = 0) -> Path:
    """24x24 colour PNGs in ImageFolder layout: train/<class>/ (8 each) and test/<class>/ (3 each)."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", 8), ("test", 3)):
        for c, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = rng.integers(0, 80, (24, 24, 3), dtype=np.uint8)
                img[6:18, 6:18, c] = 230
                Image.fromarray(img).save(root / split / name / f"{i:02d}.png")
    return root


SOURCES = {"npz": (write_npz, "mine/images.npz", (1, 20, 20)),
           "imagefolder": (write_tree, "mine/tree", (3, 24, 24))}


@pytest.mark.parametrize("dataset", list(SOURCES))
def test_cli_train_teacher_distill_sweep_report(env, dataset, monkeypatch, capsys):
    write, rel, shape = SOURCES[dataset]
    where = write(env / rel)
    fp = data.fingerprint(where)
    monkeypatch.chdir(env)                                  # relative --path: from the working directory

    assert cli.main(["train-teacher", "--dataset", dataset, "--data-path", rel, *TEACHER_ARGS, *RUN_ARGS]) == 0
    teachers = sorted((env / "runs" / "teachers").glob("*.json"))
    assert len(teachers) == 1
    tconf = json.loads(teachers[0].read_text())["config"]
    assert tconf["data_path"] == str(where.resolve()) and tconf["data_fingerprint"] == fp

    store = env / "results.jsonl"
    assert cli.main(["distill", "--dataset", dataset, "--path", rel, "--store", str(store), *FAST_ARGS, *RUN_ARGS]) == 0
    [record] = ResultStore(store).records()
    assert record["config"]["data_path"] == str(where.resolve()) and record["config"]["data_fingerprint"] == fp
    assert record["extra"]["teacher_key"] == teachers[0].stem      # the cached teacher, not a new one
    assert sorted((env / "runs" / "teachers").glob("*.json")) == teachers

    # a spec file beside the data, its data_path relative to the spec, run from another folder
    spec = env / "mine" / "spec.yaml"
    base = {**FAST, "dataset": dataset, "data_path": Path(rel).name}
    spec.write_text(json.dumps({"base": base, "grid": {"method": ["kd+jacobian", "ce"]}}))  # JSON is YAML
    (env / "elsewhere").mkdir()
    monkeypatch.chdir(env / "elsewhere")
    capsys.readouterr()
    assert cli.main(["sweep", str(spec), "--store", str(store), *RUN_ARGS]) == 0
    out = capsys.readouterr().out
    assert "kd+jacobian per_class=3 seed=0: done, skipped" in out     # same data, same key as distill's run
    assert "ce per_class=3 seed=0: running" in out
    records = ResultStore(store).records()
    assert [r["config"]["method"] for r in records] == ["kd+jacobian", "ce"]
    assert {r["config"]["data_fingerprint"] for r in records} == {fp}

    assert cli.main(["report", str(store), "--out", str(env / "report")]) == 0
    report = (env / "report" / "REPORT.md").read_text()
    assert "kd+jacobian" in report and "ce" in report and (env / "report" / "report.html").is_file()

    # a stored record's config gives back its data and its trained student
    config = Config.from_dict(records[0]["config"])
    d = load_data(config)
    assert d.input_shape == shape and d.classes == list(CLASSES) and len(d.y_test) == 9
    student, again = trained_student(config, store=store, device="cpu", progress=False)
    assert again["key"] == records[0]["key"]
    assert student(d.x_test).shape == (9, 3)


def test_photos_of_many_sizes_need_image_size(env, capsys):
    tree = env / "photos"                                   # one tree of class folders (20% becomes test)
    for c, name in enumerate(CLASSES):
        (tree / name).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(np.full((30 + 7 * i, 40 - 3 * i, 3), 40 * c, np.uint8)).save(tree / name / f"{i}.jpg")
    config = Config(dataset="imagefolder", data_path=str(tree))
    with pytest.raises(ValueError, match="image_size"):
        load_data(config)
    d = load_data(config.replace(image_size=16))
    assert d.input_shape == (3, 16, 16) and len(d.y_train) + len(d.y_val) + len(d.y_test) == 18
    assert config.replace(image_size=16).teacher_config().image_size == 16 and "image_size" not in Config().to_dict()
    assert cli.main(["train-teacher", "--dataset", "imagefolder", "--path", str(tree), "--image-size", "16",
                     *TEACHER_ARGS, *RUN_ARGS]) == 0
    [teacher] = (env / "runs" / "teachers").glob("*.json")
    assert json.loads(teacher.read_text())["config"]["image_size"] == 16


def test_one_changed_image_changes_fingerprint_key_and_teacher(env):
    tree = write_tree(env / "tree")
    config = Config(dataset="imagefolder", data_path=str(tree), **FAST)
    before = resolve_data(config)
    _, info = get_teacher(config, device="cpu", progress=False)
    old = load_data(config)

    image = tree / "train" / "bee" / "03.png"
    pixels = np.asarray(Image.open(image)).copy()
    pixels[0, 0] = 255 - pixels[0, 0]                       # one pixel of one image
    Image.fromarray(pixels).save(image)

    after = resolve_data(config)
    assert after.data_fingerprint != before.data_fingerprint
    assert config_hash(after.to_dict()) != config_hash(before.to_dict())
    assert config_hash(after.teacher_config().to_dict()) != config_hash(before.teacher_config().to_dict())
    _, new_info = get_teacher(config, device="cpu", progress=False)
    assert new_info["key"] != info["key"]                  # trained again, on the new data
    assert len(list((env / "runs" / "teachers").glob("*.pt"))) == 2
    assert new_info["config"]["data_fingerprint"] == after.data_fingerprint

    new = load_data(config)                                 # the decoded-image cache saw the change too
    x_old, x_new = (torch.cat([d.x_train, d.x_val, d.x_test]) for d in (old, new))
    assert int((x_old != x_new).flatten(1).any(1).sum()) == 1

    # a config made for the old data refuses the new data, naming both fingerprints
    with pytest.raises(ValueError, match=f"{after.data_fingerprint}.*{before.data_fingerprint}"):
        load_data(before)
    with pytest.raises(ValueError, match="changed"):
        get_teacher(before, device="cpu", progress=False)


def test_fingerprint_is_content_and_reads_only_changed_files(env, monkeypatch):
    tree = write_tree(env / "tree")
    files = sorted(p for p in tree.rglob("*.png"))
    old = time.time() - 100
    for p in files:                                         # settled files (not modified just now)
        os.utime(p, (old, old))
    reads = []
    real = fingerprints_mod._sha256
    monkeypatch.setattr(fingerprints_mod, "_sha256", lambda p: reads.append(p) or real(p))

    fp = data.fingerprint(tree)
    assert len(reads) == len(files) == 33
    reads.clear()
    assert data.fingerprint(tree) == fp and reads == []     # rerun: no file read
    (tree / "train" / ".DS_Store").write_bytes(b"junk")     # hidden files do not count
    assert data.fingerprint(tree) == fp

    changed = tree / "test" / "cow" / "01.png"
    changed.write_bytes(changed.read_bytes()[::-1])         # same size, other bytes
    os.utime(changed, (old + 1, old + 1))
    assert data.fingerprint(tree) != fp and reads == [changed]

    copy = env / "copy"
    write_tree(copy)
    assert data.fingerprint(copy) == fp                     # the same images elsewhere: the same data
    (copy / "train" / "ant" / "00.png").rename(copy / "train" / "ant" / "99.png")
    assert data.fingerprint(copy) != fp                     # names count (class folders are labels)
    npz = write_npz(env / "a.npz")
    assert data.fingerprint(npz) == data.fingerprint(write_npz(env / "b.npz")) != data.fingerprint(
        write_npz(env / "c.npz", seed=1))
    with pytest.raises(data.DataNotFoundError, match=str(env / "nothing")):
        data.fingerprint(env / "nothing")


def test_config_data_fields():
    plain = Config()
    assert "data_path" not in plain.to_dict() and "data_fingerprint" not in plain.to_dict()
    assert Config.from_dict(plain.to_dict()) == plain
    mine = Config(dataset="npz", data_path="/d/x.npz", data_fingerprint="0123456789abcdef", teacher_epochs=3)
    assert Config.from_dict(mine.to_dict()) == mine and mine.to_dict()["data_path"] == "/d/x.npz"
    t = mine.teacher_config()
    assert (t.dataset, t.data_path, t.data_fingerprint) == ("npz", "/d/x.npz", "0123456789abcdef")
    assert mine.replace(seed=1).data_fingerprint == "0123456789abcdef"
    assert mine.replace(data_path="/d/y.npz").data_fingerprint is None      # another file: its own fingerprint
    assert Config(dataset="imagefolder", data_path=Path("/d/tree")).data_path == "/d/tree"
    with pytest.raises(ValueError, match="data_path"):
        Config(dataset="npz")
    with pytest.raises(ValueError, match="takes no data_path"):
        Config(dataset="shapes", data_path="/d/x.npz")
    with pytest.raises(ValueError, match="needs a data_path"):
        Config(data_fingerprint="0123456789abcdef")
    with pytest.raises(TypeError, match="data_path"):
        Config(dataset="npz", data_path=3)


def test_cli_errors_name_the_data(env, capsys):
    assert cli.main(["distill", "--dataset", "npz", *RUN_ARGS]) == 2
    assert "set data_path (--data-path)" in capsys.readouterr().err
    missing = env / "nowhere" / "x.npz"
    assert cli.main(["distill", "--dataset", "npz", "--path", str(missing), *RUN_ARGS]) == 2
    assert f"data_path {missing} does not exist" in capsys.readouterr().err
    assert cli.main(["train-teacher", "--dataset", "shapes", "--data-path", str(missing), *RUN_ARGS]) == 2
    assert "takes no data_path" in capsys.readouterr().err
    npz = write_npz(env / "x.npz")
    assert cli.main(["train-teacher", "--dataset", "npz", "--path", str(npz), "--data-fingerprint",
                     "0000000000000000", *RUN_ARGS]) == 2
    err = capsys.readouterr().err
    assert "changed" in err and data.fingerprint(npz) in err
    assert not (env / "runs" / "teachers").exists()         # nothing trained


def test_distillation_panel_takes_a_data_path(env):
    npz = write_npz(env / "x.npz")
    panel = widgets.distillation_panel(store=env / "panel.jsonl", base=Config(**FAST))
    panel.controls["dataset"].value = "npz"
    panel.controls["data_path"].value = str(npz)
    panel.controls["steps"].value = 5
    panel.controls["per_class"].value = 2
    panel.controls["device"].value = "cpu"
    assert panel.config().data_path == str(npz) and panel.config().dataset == "npz"
    panel.run_button.click()
    assert panel.error is None, panel.error
    [record] = ResultStore(env / "panel.jsonl").records()
    assert record["config"]["data_fingerprint"] == data.fingerprint(npz)
    panel.controls["dataset"].value = "shapes"              # a built-in dataset ignores the box
    assert panel.config().data_path is None
