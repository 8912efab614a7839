"""Faults, tried as a new user would (issue #20): a store that cannot be written, a full disk, two
processes on one store or one teacher, damaged cache entries, planted pickles, corrupt images and
npz files, misspelt names. Each fault ends in work kept and no run trained twice, or in one line on
stderr (exit code 2) that names the file or option and says what to do."""
from __future__ import annotations

import errno
import json
import os
import shutil
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import jkt_lab.experiments as experiments
import jkt_lab.results as results
from jkt_lab import cli, pretrained
from jkt_lab.config import Config
from jkt_lab.data import load
from jkt_lab.experiments import get_teacher, quick_config, run, sweep, teacher_files, trained_student
from jkt_lab.results import ResultStore, ResultStoreWarning, config_hash

from tiny_runs import TINY

TINY_ARGS = [a for k, v in TINY.items() for a in (f"--{k.replace('_', '-')}", str(v))]
TEACHER_ARGS = [a for k, v in TINY.items() if k.startswith("teacher") or k in ("dataset", "n_train")
                for a in (f"--{k.replace('_', '-')}", str(v))]
RUN = ["--device", "cpu", "--no-progress"]
ADVICE = "weights_only"   # torch's advice to load with weights_only=False: never shown


def cli_run(argv, capsys) -> tuple[int, str, str]:
    """``jkt-lab ARGV`` in this process: exit code (argparse's SystemExit included), stdout, stderr."""
    capsys.readouterr()
    try:
        rc = cli.main(argv)
    except SystemExit as exc:
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err


def one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err and ADVICE not in err
    return lines[0]


@pytest.fixture
def no_training(monkeypatch):
    """Fail the test if anything starts training."""
    def fit(*args, **kwargs):
        raise AssertionError("trained although the command should have stopped first")
    monkeypatch.setattr(experiments, "fit", fit)


@pytest.fixture
def blocked(tmp_path):
    """A path no one can create anything under (its parent is a file): works as root too, where
    a chmod'ed folder does not stop writes."""
    wall = tmp_path / "a-file"
    wall.write_text("not a folder")
    return wall / "results.jsonl"


def counting_fit(monkeypatch, pause: float = 0.3) -> dict:
    """Wrap experiments.fit: count the trainings per config key, each held open ``pause`` s so that
    concurrent callers overlap."""
    calls: dict[str, int] = {}
    real = experiments.fit
    lock = threading.Lock()

    def fit(model, method, data, *, config, **kwargs):
        with lock:
            key = config_hash(config.to_dict())
            calls[key] = calls.get(key, 0) + 1
        time.sleep(pause)
        return real(model, method, data, config=config, **kwargs)
    monkeypatch.setattr(experiments, "fit", fit)
    return calls


def in_threads(*targets):
    errors = []

    def wrap(fn):
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)
    threads = [threading.Thread(target=wrap, args=(t,)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors


# --------------------------------------------------------------------------- work lost or counted twice


@pytest.mark.parametrize("command", ["distill", "sweep", "reproduce", "robustness", "prepare-course"])
def test_a_store_that_cannot_be_written_stops_before_any_run(isolated, tmp_path, blocked, capsys, monkeypatch,
                                                             no_training, command):
    started = AssertionError("the command started its runs")
    for module, name in (("reproduce", "reproduce"), ("robustness", "robustness_experiment"), ("course", "prepare")):
        monkeypatch.setattr(f"jkt_lab.{module}.{name}", lambda *a, **k: (_ for _ in ()).throw(started))
    spec = tmp_path / "spec.yaml"
    spec.write_text(json.dumps({"base": TINY, "grid": {"seed": [0, 1]}}))
    if command == "prepare-course":   # its store and its students live in the runs folder
        monkeypatch.setenv("JKT_LAB_RUNS", str(blocked.parent / "runs"))
        argv, named = ["prepare-course", "--quick"], "JKT_LAB_RUNS"
    else:
        argv = {"distill": ["distill", *TINY_ARGS, "--store", str(blocked)],
                "sweep": ["sweep", str(spec), "--store", str(blocked)],
                "reproduce": ["reproduce", "--quick", "--dataset", "shapes", "--store", str(blocked)],
                "robustness": ["robustness", "--quick", "--store", str(blocked)]}[command]
        named = "--store"
    rc, _, err = cli_run(argv + RUN, capsys)
    line = one_line(err)
    assert rc == 2 and named in line and str(blocked.parent) in line, line


def test_an_unwritable_runs_folder_stops_a_run_before_training(isolated, blocked, monkeypatch, capsys, no_training):
    monkeypatch.setenv("JKT_LAB_RUNS", str(blocked.parent / "runs"))
    rc, _, err = cli_run(["distill", *TINY_ARGS, *RUN], capsys)
    assert rc == 2 and "JKT_LAB_RUNS" in one_line(err)
    with pytest.raises(OSError):
        run(Config(**TINY), device="cpu", progress=False)


class _ReadOnly:
    """The ``os`` module as results.py sees it, with ``folder`` on a read-only mount (EROFS): the
    store there can be read, not written (root ignores a chmod'ed folder; this works for root too)."""

    def __init__(self, folder: Path):
        self.folder = folder

    def __getattr__(self, name):
        return getattr(os, name)

    def open(self, path, flags, *args):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and Path(path).resolve().is_relative_to(self.folder):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return os.open(path, flags, *args)


def test_a_read_only_store_is_refused_before_training(isolated, tmp_path, monkeypatch, capsys, no_training):
    folder = tmp_path / "mounted"
    folder.mkdir()
    monkeypatch.setattr(results, "os", _ReadOnly(folder.resolve()))
    store = folder / "results.jsonl"
    with pytest.raises(OSError) as info:
        run(Config(**TINY), store=store, device="cpu", progress=False)
    assert info.value.errno == errno.EROFS and str(folder) in str(info.value)
    with pytest.raises(OSError):
        sweep([Config(**TINY)], store, device="cpu", progress=False, verbose=False)
    rc, _, err = cli_run(["distill", *TINY_ARGS, "--store", str(store), *RUN], capsys)
    line = one_line(err)
    assert rc == 2 and "--store" in line and "read-only" in line.lower() and str(folder) in line


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder anyway")
def test_a_read_only_folder_is_refused_before_training(isolated, tmp_path, capsys, no_training):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        rc, _, err = cli_run(["distill", *TINY_ARGS, "--store", str(folder / "r.jsonl"), *RUN], capsys)
    finally:
        folder.chmod(0o755)
    assert rc == 2 and "--store" in one_line(err)


class _FullDisk:
    """The ``os`` module as results.py sees it, with a disk that is full once ``full`` is set."""

    def __init__(self):
        self.full = False

    def __getattr__(self, name):
        return getattr(os, name)

    def write(self, fd, data):
        if self.full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return os.write(fd, data)


def test_a_full_disk_is_one_line_and_the_trained_student_is_kept(isolated, tmp_path, monkeypatch, capsys):
    disk = _FullDisk()
    monkeypatch.setattr(results, "os", disk)
    real_fit = experiments.fit

    def fit(*args, **kwargs):  # the disk fills up while the student trains
        out = real_fit(*args, **kwargs)
        disk.full = True
        return out
    monkeypatch.setattr(experiments, "fit", fit)
    store = tmp_path / "results.jsonl"
    rc, _, err = cli_run(["distill", *TINY_ARGS, "--method", "ce", "--store", str(store), *RUN], capsys)
    line = one_line(err)
    assert rc == 2 and "no space left" in line.lower() and str(store) in line
    config = experiments.resolve_data(Config(**{**TINY, "method": "ce"}))
    key = config_hash(config.to_dict())
    assert (tmp_path / "runs" / "students" / f"{key}.pt").is_file()     # saved before its record
    # space freed: the same command records the run without training it again
    disk.full = False
    monkeypatch.setattr(experiments, "fit", lambda *a, **k: (_ for _ in ()).throw(AssertionError("trained again")))
    rc, out, err = cli_run(["distill", *TINY_ARGS, "--method", "ce", "--store", str(store), *RUN], capsys)
    assert rc == 0, err
    [record] = ResultStore(store).records()
    assert record["key"] == key


def test_two_sweeps_on_one_store_train_each_run_once(isolated, tmp_path, monkeypatch):
    calls = counting_fit(monkeypatch)
    store = tmp_path / "results.jsonl"
    configs = [Config(**{**TINY, "method": "ce", "seed": s}) for s in (0, 1, 2)]
    go = lambda: sweep(configs, store, device="cpu", progress=False, verbose=False)  # noqa: E731
    in_threads(go, go)
    assert sorted(calls.values()) == [1, 1, 1], calls
    keys = [json.loads(line)["key"] for line in store.read_text().splitlines()]
    assert sorted(keys) == sorted(set(keys)) and len(keys) == 3


def test_reading_keeps_one_record_per_key_and_says_how_many_were_left_out(tmp_path):
    store = ResultStore(tmp_path / "r.jsonl")
    for acc in (0.5, 0.6, 0.9):          # three processes' worth of one run, then another run
        store.append({"config": {"method": "ce", "seed": 0}, "metrics": {"test_acc": acc}})
    store.append({"config": {"method": "ce", "seed": 1}, "metrics": {"test_acc": 0.7}})
    with pytest.warns(ResultStoreWarning, match="left out 2 earlier record") as caught:
        records = store.records()
    assert len(caught) == 1                                     # warned once, with the count
    assert [r["metrics"]["test_acc"] for r in records] == [0.9, 0.7]   # the latest of each key, as get() sees
    assert store.get({"method": "ce", "seed": 0}) == records[0]
    from jkt_lab import report    # what a report counts: one run per key
    with pytest.warns(ResultStoreWarning, match="left out 2 earlier record"):
        loaded = report._load(store.path)
    [row] = results.table(loaded, [], group_by=["config.method"], metric="metrics.test_acc")
    assert row["n"] == 2


def test_two_processes_training_one_teacher_train_it_once(isolated, monkeypatch):
    calls = counting_fit(monkeypatch)
    config = Config(**TINY)
    got = []
    in_threads(*[lambda: got.append(get_teacher(config, device="cpu", progress=False)[1]) for _ in range(2)])
    assert list(calls.values()) == [1], calls
    assert got[0]["metrics"] == got[1]["metrics"]
    _, weights, meta = teacher_files(config)
    assert weights.is_file() and meta.is_file()
    assert not list(weights.parent.glob("*.tmp")) and not list(weights.parent.glob("*.lock"))


def test_a_cache_json_cut_by_a_kill_mid_write_is_never_left_in_place(isolated, monkeypatch):
    real = Path.write_text

    def killed(self, text, *a, **k):   # the process dies half-way through writing a cache JSON
        real(self, text[: len(text) // 2], *a, **k)
        raise KeyboardInterrupt
    monkeypatch.setattr(Path, "write_text", killed)
    config = Config(**TINY)
    with pytest.raises(KeyboardInterrupt):
        get_teacher(config, device="cpu", progress=False)
    monkeypatch.setattr(Path, "write_text", real)
    _, weights, meta = teacher_files(config)
    assert not meta.exists()                     # no truncated JSON where the cache entry goes
    calls = counting_fit(monkeypatch, pause=0)
    get_teacher(config, device="cpu", progress=False)   # the next call trains it and caches it
    assert json.loads(meta.read_text())["key"] == weights.stem and list(calls.values()) == [1]


@pytest.mark.parametrize("damage", ["json", "weights", "pickle"])
def test_an_unreadable_teacher_cache_entry_is_named_and_retrained(isolated, monkeypatch, damage):
    config = Config(**TINY)
    get_teacher(config, device="cpu", progress=False)
    _, weights, meta = teacher_files(config)
    if damage == "json":
        meta.write_text(meta.read_text()[:20])               # truncated
    elif damage == "weights":
        weights.write_bytes(b"")                              # zero bytes
    else:
        import pickle                                         # a planted pickle, never unpickled
        weights.write_bytes(pickle.dumps({"payload": print}))
    calls = counting_fit(monkeypatch, pause=0)
    with pytest.warns(UserWarning) as caught:
        get_teacher(config, device="cpu", progress=False)
    said = " ".join(str(w.message) for w in caught)
    assert str(meta if damage == "json" else weights) in said and ADVICE not in said
    assert list(calls.values()) == [1]
    calls.clear()
    get_teacher(config, device="cpu", progress=False)      # repaired: loaded from the cache now
    assert calls == {}


def test_an_unreadable_student_cache_entry_is_named_and_retrained(isolated, tmp_path, monkeypatch):
    config = Config(**{**TINY, "method": "ce"})
    store = tmp_path / "r.jsonl"
    trained_student(config, store=store, device="cpu", progress=False)
    key = config_hash(config.to_dict())
    (tmp_path / "runs" / "students" / f"{key}.json").write_text('{"key": "')
    with pytest.warns(UserWarning, match=str(tmp_path / "runs" / "students" / f"{key}.json")):
        _, record = trained_student(config, store=store, device="cpu", progress=False)
    assert record["key"] == key


# --------------------------------------------------------------------------- wrong answers given silently


@pytest.mark.parametrize("command", ["distill", "train-teacher"])
def test_quick_makes_distill_and_train_teacher_toy_size(isolated, monkeypatch, capsys, command):
    seen = []

    def fake(config, **kwargs):
        seen.append(config)
        raise SystemExit(0)
    monkeypatch.setattr(experiments, "run" if command == "distill" else "get_teacher", fake)
    rc, _, err = cli_run([command, "--quick", *RUN], capsys)
    [config] = seen
    assert config == quick_config(Config()) and config.teacher_epochs == 1


def write_npz(path: Path, y_train, y_test, **extra) -> Path:
    rng = np.random.default_rng(0)
    np.savez(path, x_train=rng.integers(0, 255, (len(y_train), 8, 8), dtype=np.uint8), y_train=np.array(y_train),
             x_test=rng.integers(0, 255, (len(y_test), 8, 8), dtype=np.uint8), y_test=np.array(y_test), **extra)
    return path


def write_tree(root: Path, classes=("ant", "bee"), n=(4, 2)) -> Path:
    for split, k in zip(("train", "test"), n):
        for c, name in enumerate(classes):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(k):
                Image.fromarray(np.full((8, 8, 3), 40 * c + i, np.uint8)).save(root / split / name / f"{i}.png")
    return root


def test_a_one_class_dataset_is_refused(isolated, tmp_path, capsys):
    npz = write_npz(tmp_path / "one.npz", [0] * 6, [0] * 3)
    with pytest.raises(ValueError, match="2 classes"):
        load("npz", path=npz)
    tree = write_tree(tmp_path / "tree", classes=("ant",))
    with pytest.raises(ValueError, match="2 classes"):
        load("imagefolder", path=tree)
    rc, _, err = cli_run(["distill", "--dataset", "npz", "--data-path", str(npz), *RUN], capsys)
    line = one_line(err)
    assert rc == 2 and str(npz) in line and "2 classes" in line


def test_npz_labels_with_gaps_need_classes(isolated, tmp_path):
    gaps = write_npz(tmp_path / "gaps.npz", [0, 2, 5, 0, 2, 5], [0, 2, 5])
    with pytest.raises(ValueError, match="classes"):
        load("npz", path=gaps)
    named = write_npz(tmp_path / "named.npz", [0, 2, 5, 0, 2, 5], [0, 2, 5], classes=np.array(list("abcdef")))
    assert load("npz", path=named).num_classes == 6          # with names for every label: as given


def test_jacobian_output_all_is_accepted():
    args = cli.build_parser().parse_args(["distill", "--jacobian-output", "all", "--per-class", "all"])
    config = cli._config_from_args(args)
    assert config.jacobian_output == "all" and config.per_class is None


def test_a_line_with_a_key_but_no_config_is_not_a_run(tmp_path, capsys):
    path = tmp_path / "r.jsonl"
    ResultStore(path).append({"config": {"method": "ce", "seed": 0}, "metrics": {"test_acc": 0.5}})
    with path.open("a") as fh:
        fh.write(json.dumps({"key": "abc", "metrics": {"test_acc": 0.9}}) + "\n")
    with pytest.warns(ResultStoreWarning, match="config"):
        records = ResultStore(path).records()
    assert [r["metrics"]["test_acc"] for r in records] == [0.5]
    # a file whose every line is skipped has no readable line; it is not empty
    path.write_text('{"key": "abc"}\n{"broken\n')
    rc, _, err = cli_run(["report", str(path), "--out", str(tmp_path / "rep")], capsys)
    line = one_line(err)
    assert rc == 2 and "no readable line" in line and str(path) in line and "empty" not in line


def test_the_demo_verdict_needs_a_teacher_above_chance():
    records = [{"config": {"method": m, "seed": s}, "metrics": {"test_acc": acc + 0.01 * s}}
               for m, acc in (("ce", 0.2), ("kd", 0.6), ("kd+jacobian", 0.3)) for s in range(3)]
    good = cli.demo_verdict(records, teacher_acc=0.95, chance=0.2, quick=False)
    assert any("kd vs. ce: +40.0 points" in line and "a difference the seeds show" in line for line in good)
    assert not any("smoke test" in line.lower() for line in good)
    for teacher_acc, quick, why in ((0.21, False, "not above chance (20%)"), (0.95, True, "toy size")):
        lines = cli.demo_verdict(records, teacher_acc=teacher_acc, chance=0.2, quick=quick)
        assert lines[0].startswith("Smoke test, not a verdict") and why in lines[0], lines
        assert not any(" vs. " in line for line in lines)     # a smoke test judges no difference


# --------------------------------------------------------------------------- one line, not a traceback


def test_a_loss_that_blows_up_is_one_line(isolated, capsys):
    rc, _, err = cli_run(["distill", *TINY_ARGS, "--method", "ce", "--lr", "1e30", *RUN], capsys)
    line = one_line(err)
    assert rc == 2 and "'ce'" in line and "step" in line and "learning rate" in line and "1e+30" in line


def test_a_damaged_shipped_teacher_is_one_line(isolated, tmp_path, monkeypatch, capsys):
    copy = tmp_path / "teachers"
    shutil.copytree(pretrained.TEACHERS_DIR, copy)
    monkeypatch.setattr(pretrained, "TEACHERS_DIR", copy)
    (copy / "shapes.pt").write_bytes(b"damaged")
    shapes = Config.from_dict(pretrained.card("shapes")["config"])
    argv = ["train-teacher", "--dataset", "shapes", "--n-train", str(shapes.n_train), "--teacher", "tiny",
            "--teacher-width", str(shapes.teacher_width), "--teacher-epochs", str(shapes.teacher_epochs), *RUN]
    rc, _, err = cli_run(argv, capsys)
    line = one_line(err)
    assert rc == 2 and str(copy / "shapes.pt") in line and "reinstall" in line


def test_a_damaged_teacher_checkpoint_is_one_line(isolated, tmp_path, capsys):
    config = Config(**TINY)
    key, weights, _ = teacher_files(config)
    weights.parent.mkdir(parents=True)
    import pickle
    (weights.parent / f"{key}.ckpt").write_bytes(pickle.dumps({"format": print}))
    rc, _, err = cli_run(["train-teacher", *TEACHER_ARGS, *RUN], capsys)
    line = one_line(err)
    assert rc == 2 and f"{key}.ckpt" in line and "delete" in line.lower()


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "tpu"])
def test_a_bad_device_is_one_line(capsys, device):
    rc, _, err = cli_run(["distill", "--device", device], capsys)
    assert rc == 2 and "--device" in err.splitlines()[-1] and "Traceback" not in err


def write_bad_tree(tmp_path) -> tuple[Path, Path]:
    tree = write_tree(tmp_path / "tree")
    bad = tree / "train" / "bee" / "1.png"
    bad.write_bytes(bad.read_bytes()[:30])                  # truncated
    return tree, bad


def test_a_corrupt_image_is_named_and_can_be_skipped(isolated, tmp_path, capsys, monkeypatch):
    tree, bad = write_bad_tree(tmp_path)
    with pytest.raises(ValueError, match=str(bad)):
        load("imagefolder", path=tree)
    rc, _, err = cli_run(["distill", "--dataset", "imagefolder", "--data-path", str(tree), *RUN], capsys)
    line = one_line(err)
    assert rc == 2 and str(bad) in line and "--skip-bad-images" in line
    monkeypatch.setenv("JKT_LAB_SKIP_BAD_IMAGES", "1")
    with pytest.warns(UserWarning, match=str(bad)):
        d = load("imagefolder", path=tree)
    assert len(d.y_train) + len(d.y_val) == 7


def test_the_skip_bad_images_flag(isolated, tmp_path, capsys, monkeypatch):
    tree, bad = write_bad_tree(tmp_path)
    monkeypatch.delenv("JKT_LAB_SKIP_BAD_IMAGES", raising=False)
    argv = ["distill", "--dataset", "imagefolder", "--data-path", str(tree), "--skip-bad-images",
            "--teacher-epochs", "1", "--teacher-width", "4", "--student-width", "4", "--steps", "2", "--per-class", "2",
            "--batch-size", "4", "--teacher-batch-size", "4", *RUN]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc, out, err = cli_run(argv, capsys)
    assert rc == 0, err
    assert os.environ.get("JKT_LAB_SKIP_BAD_IMAGES") is None     # the flag is the command's only


@pytest.mark.parametrize("content", [b"", b"not a zip archive at all", "pickle"])
def test_a_zero_byte_or_foreign_npz_is_one_line(isolated, tmp_path, capsys, content):
    path = tmp_path / "data.npz"
    if content == "pickle":
        np.savez(path, x_train=np.array([{"a": 1}], dtype=object), y_train=[0], x_test=[0], y_test=[0])
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=str(path)):
        load("npz", path=path)
    rc, _, err = cli_run(["distill", "--dataset", "npz", "--data-path", str(path), *RUN], capsys)
    line = one_line(err)
    assert rc == 2 and str(path) in line


def test_an_empty_x_train_is_refused(isolated, tmp_path):
    path = tmp_path / "empty.npz"
    np.savez(path, x_train=np.zeros((0, 8, 8), np.uint8), y_train=np.zeros(0, np.int64),
             x_test=np.zeros((3, 8, 8), np.uint8), y_test=np.array([0, 1, 1]))
    with pytest.raises(ValueError, match="x_train"):
        load("npz", path=path)


@pytest.mark.parametrize("field,value", [("dataset", "shapez"), ("student", "resnet"), ("teacher", "vgg"),
                                         ("method", "kd+jacobain")])
def test_an_unknown_name_names_its_option(capsys, field, value):
    rc, _, err = cli_run(["distill", f"--{field}", value], capsys)
    last = err.splitlines()[-1]
    assert rc == 2 and f"--{field}" in last and "name" not in last.replace(f"--{field}", ""), last


def test_argparse_names_the_type_not_lambda(capsys):
    rc, _, err = cli_run(["distill", "--steps", "many"], capsys)
    assert rc == 2 and "<lambda>" not in err and "invalid int value" in err


def test_a_misspelt_name_in_a_sweep_grid_is_refused_before_the_first_run(isolated, tmp_path, capsys, no_training):
    spec = tmp_path / "spec.yaml"
    spec.write_text(json.dumps({"base": TINY, "grid": {"method": ["ce", "kd"], "student": ["tiny", "tinny"]}}))
    rc, _, err = cli_run(["sweep", str(spec), "--store", str(tmp_path / "r.jsonl"), *RUN], capsys)
    line = one_line(err)
    assert rc == 2 and "student" in line and "'tinny'" in line and str(spec) in line


# --------------------------------------------------------------------------- also


def test_one_unreadable_teacher_card_blocks_no_other(tmp_path):
    copy = tmp_path / "teachers"
    shutil.copytree(pretrained.TEACHERS_DIR, copy)
    (copy / "broken.json").write_text("{ not json")
    shapes = Config.from_dict(pretrained.card("shapes")["config"])
    with pytest.warns(UserWarning, match=str(copy / "broken.json")):
        assert pretrained.shipped_for(shapes.teacher_config(), root=copy) == "shapes"


def test_threads_option_on_every_training_command(monkeypatch, capsys):
    parser = cli.build_parser()
    action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name in ("demo", "train-teacher", "distill", "sweep", "reproduce", "robustness", "prepare-course"):
        assert "threads" in {a.dest for a in action.choices[name]._actions}, name
    seen = []
    monkeypatch.setattr(cli, "cmd_distill", lambda args: seen.append(torch.get_num_threads()) or 0)
    before = torch.get_num_threads()
    for threads in ("1", "2"):
        assert cli.main(["distill", "--threads", threads]) == 0
    assert seen == [1, 2] and torch.get_num_threads() == before    # set for the command, then restored


def test_readme_says_to_keep_the_ray_port_private():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Running on a cluster", 1)[1].split("\n## ", 1)[0]
    assert "--node-ip-address" in section and "never expose" in section.lower()
