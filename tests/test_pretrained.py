"""Shipped teachers: cards, hashes, loading, and their use by the experiments layer."""
import json

import pytest
import torch

from jkt_lab import cli, pretrained
from jkt_lab.config import Config
from jkt_lab.data import load
from jkt_lab.data.cifar import _find_cifar10_zip
from jkt_lab.experiments import get_teacher
from jkt_lab.pretrained import ShippedTeacherError, card, pretrained_teacher, shipped_for, shipped_teachers
from jkt_lab.train import evaluate

TINY = Config(dataset="shapes", n_train=300, n_test=100, teacher="tiny", teacher_width=8, teacher_epochs=1,
              teacher_batch_size=32)


@pytest.fixture
def teachers(tmp_path, monkeypatch):
    """An empty shipped-teachers folder of our own, and a fresh runs directory."""
    monkeypatch.setenv("JKT_LAB_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("JKT_LAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(pretrained, "TEACHERS_DIR", tmp_path / "teachers")
    torch.set_num_threads(2)
    return tmp_path / "teachers"


def _ship(teachers, capsys, name="toy"):
    argv = ["train-teacher", "--no-progress", "--device", "cpu", "--ship", name, "--dataset", "shapes",
            "--n-train", "300", "--teacher", "tiny", "--teacher-width", "8",
            "--teacher-epochs", "1", "--teacher-batch-size", "32"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert f"shipped as {name!r}" in out
    return argv


def test_ship_then_load_checks_hash_and_card(teachers, capsys):
    argv = _ship(teachers, capsys)
    assert shipped_teachers() == ["toy"]
    info = card("toy")
    assert info["command"] == "jkt-lab " + " ".join(argv)
    assert info["config"] == TINY.teacher_config().to_dict()
    assert (teachers / "toy.pt").stat().st_size == info["bytes"]
    state = torch.load(teachers / "toy.pt", weights_only=True)
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    model, _ = pretrained_teacher("toy")
    data = load("shapes", n_train=300)  # a teacher is evaluated on all test images (n_test is not its own)
    assert info["n_test"] == data.x_test.shape[0] and info["data"] == data.name == "shapes"
    assert abs(evaluate(model, data.x_test, data.y_test)["acc"] - info["test_acc"]) < 1e-9
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_experiments_use_the_shipped_teacher_instead_of_training(teachers, capsys, tmp_path, monkeypatch):
    _ship(teachers, capsys)
    assert shipped_for(TINY.teacher_config()) == "toy"
    assert shipped_for(TINY.replace(teacher_epochs=2).teacher_config()) is None
    monkeypatch.setenv("JKT_LAB_RUNS", str(tmp_path / "other_runs"))  # nothing cached there
    student_side = TINY.replace(batch_size=7, lr=0.3, method="kd", per_class=2)
    teacher, info = get_teacher(student_side, device="cpu", progress=False)
    assert info["shipped"] == "toy"
    assert not (tmp_path / "other_runs" / "teachers").exists()  # not trained again


def test_damaged_shipped_teacher_is_a_clear_error(teachers, capsys):
    _ship(teachers, capsys)
    weights = teachers / "toy.pt"
    data = weights.read_bytes()
    weights.write_bytes(data[:-10] + b"0123456789")
    with pytest.raises(ShippedTeacherError, match="toy.pt does not match its card"):
        pretrained_teacher("toy")
    with pytest.raises(ShippedTeacherError, match="does not match"):  # never a silent retrain
        get_teacher(TINY, device="cpu", progress=False)
    weights.unlink()
    with pytest.raises(ShippedTeacherError, match="toy.pt .* is missing"):
        pretrained_teacher("toy")
    with pytest.raises(ValueError, match="no shipped teacher named 'nope'; shipped teachers: toy"):
        pretrained_teacher("nope")
    (teachers / "toy.json").write_text("{not json")
    with pytest.raises(ShippedTeacherError, match="toy.json is unreadable"):
        pretrained_teacher("toy")


def test_shipped_teacher_refuses_other_data(teachers, capsys):
    _ship(teachers, capsys)
    digits = load("digits")
    with pytest.raises(ShippedTeacherError, match="was trained on shapes"):
        pretrained_teacher("toy", data=digits)


def test_card_match_survives_fields_added_later(teachers, capsys):
    _ship(teachers, capsys)
    path = teachers / "toy.json"
    info = json.loads(path.read_text())
    del info["config"]["teacher_train_sigma"]  # a card written before this field existed
    path.write_text(json.dumps(info))
    assert shipped_for(TINY.teacher_config()) == "toy"


# ------------------------------------------------------------------ the teachers in the package

PACKAGE_TEACHERS = shipped_teachers(pretrained.TEACHERS_DIR)


def test_package_teachers_fit_the_size_budget():
    total = sum((pretrained.TEACHERS_DIR / f"{n}.pt").stat().st_size for n in PACKAGE_TEACHERS)
    assert total < 4e6, f"shipped teachers take {total / 1e6:.2f} MB (budget 4 MB)"


@pytest.mark.parametrize("name", PACKAGE_TEACHERS)
def test_package_teacher_card_and_accuracy(name):
    model, info = pretrained_teacher(name)  # checks the sha256
    assert info["config"]["method"] == "ce" and "--ship " + name in info["command"]
    c, h, w = info["model"]["input_shape"]
    assert model(torch.zeros(2, c, h, w)).shape == (2, info["model"]["num_classes"])
    cfg = Config.from_dict(info["config"])
    if cfg.dataset.startswith("cifar10") and _find_cifar10_zip()[0] is None:
        pytest.skip("the CIFAR-10 zip is not on this machine: card checked, accuracy not")
    from jkt_lab.experiments import load_data
    data = load_data(cfg, classes=cfg.classes)
    acc = evaluate(model, data.x_test[::5], data.y_test[::5])["acc"]
    assert abs(acc - info["check_acc"]) <= 0.01, (acc, info["check_acc"])
