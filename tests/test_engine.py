"""Methods, training, experiments and the command line, end to end on tiny shapes data."""
import json
import math

import pytest
import torch

from jkt_lab import cli, losses
from jkt_lab.config import Config
from jkt_lab.data import load
from jkt_lab.experiments import expand_grid, load_spec, run, sweep, trained_student
from jkt_lab.methods import METHODS, make_method
from jkt_lab.models import MultiHead, build_model
from jkt_lab.results import ResultStore
from jkt_lab.saliency import saliency_cosine
from jkt_lab.train import JACOBIAN_PROBE, CheckpointError, NonFiniteLossError, evaluate, fit

from held_reference import held_copy
from tiny_runs import TINY

pytestmark = pytest.mark.usefixtures("isolated")  # tests/conftest.py; also `data` there


def models(data, seed=0):
    teacher = build_model("tiny", 10, mean=data.mean, std=data.std, width=8, seed=seed).eval()
    student = build_model("tiny", 10, mean=data.mean, std=data.std, width=4, seed=seed + 1)
    return teacher, student


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_gives_finite_terms_that_train_the_student(data, name):
    teacher, student = models(data)
    config = Config(method=name, jacobian_output="random" if name == "kd+jacobian" else "top1")
    if name == "lwf":
        student = MultiHead(build_model("tiny", 5, mean=data.mean, std=data.std, width=8, seed=3), 10, seed=4)
        teacher = build_model("tiny", 5, mean=data.mean, std=data.std, width=8, seed=3).eval()
    method = make_method(name, student, None if name == "ce" else teacher, config)
    x, y = data.x_train[:16], data.y_train[:16]
    logits, terms = method.loss(x, y, step=0)
    assert logits.shape == (16, 10)
    assert terms and all(torch.isfinite(v) and v.dim() == 0 for v in terms.values())
    sum(terms.values()).backward()
    grads = [p.grad for p in student.parameters() if p.grad is not None]
    assert grads and sum(float(g.abs().sum()) for g in grads) > 0
    assert all(p.grad is None for p in teacher.parameters())
    if "jacobian" in name:
        assert "jacobian" in terms
        # the Jacobian term alone must reach the student (the classic silent bug)
        student.zero_grad()
        _, terms = method.loss(x, y, step=0)
        terms["jacobian"].backward()
        assert sum(float(p.grad.abs().sum()) for p in student.parameters() if p.grad is not None) > 0


def test_ce_honours_ce_weight(data):
    _, student = models(data)
    x, y = data.x_train[:16], data.y_train[:16]
    _, full = make_method("ce", student, None, Config(method="ce")).loss(x, y)
    _, half = make_method("ce", student, None, Config(method="ce", ce_weight=0.5)).loss(x, y)
    assert float(half["ce"].detach()) == pytest.approx(0.5 * float(full["ce"].detach()), rel=1e-6)
    with pytest.raises(ValueError, match="ce_weight"):
        make_method("ce", student, None, Config(method="ce", ce_weight=0.0))


def test_lwf_uses_the_config_temperature(data):
    teacher = build_model("tiny", 5, mean=data.mean, std=data.std, width=8, seed=3).eval()
    student = MultiHead(build_model("tiny", 5, mean=data.mean, std=data.std, width=8, seed=3), 10, seed=4)
    x, y = data.x_train[:16], data.y_train[:16]
    for t in (2.0, 4.0):
        _, terms = make_method("lwf", student, teacher, Config(method="lwf", temperature=t)).loss(x, y)
        _, old_logits, _ = student.forward_heads(x)
        expected = losses.kd_loss(old_logits, teacher(x), t)
        assert float(terms["lwf"].detach()) == pytest.approx(float(expected.detach()), rel=1e-6)


def test_attention_jacobian_term_is_per_example_in_train_mode(data):
    """at+jacobian against an independent reference: an eval-mode copy of the student that
    normalises with the batch's statistics, one example at a time, at the teacher's peaks."""
    teacher = build_model("tiny", 10, mean=data.mean, std=data.std, width=8, seed=0).double().eval()
    student = build_model("tiny", 10, mean=data.mean, std=data.std, width=4, seed=1).double().train()
    x, y = data.x_train[:6].double(), data.y_train[:6]
    config = Config(method="at+jacobian", jacobian_weight=0.7)
    _, terms = make_method("at+jacobian", student, teacher, config).loss(x, y)
    ref = held_copy(student, x)
    taps = teacher.feature_taps
    peaks = [losses.attention_map(teacher.forward_features(x)[1][t], normalize=False).argmax(1) for t in taps]

    def attention_rows(model):
        rows = []
        for tap, peak in zip(taps, peaks):
            def value(xb, i):
                return losses.attention_map(model.forward_features(xb)[1][tap], normalize=False)[0, i]
            rows.append(torch.stack([torch.func.jacrev(value)(x[i:i + 1], peak[i])[0] for i in range(6)]))
        return torch.stack(rows, dim=1).detach()

    expected = 0.7 * losses.jacobian_loss(attention_rows(ref), attention_rows(teacher), "normalized")
    assert float(terms["jacobian"].detach()) == pytest.approx(float(expected), rel=1e-8)


def test_history_records_the_teacher_student_jacobian_cosine(data):
    teacher, student = models(data)
    config = Config(method="kd", steps=6, batch_size=32, eval_every=1)
    result = fit(student, "kd", data, teacher=teacher, config=config, device="cpu", progress=False)
    assert result.history
    for row in result.history:
        assert -1 <= row["jacobian_cosine/train"] <= 1 and -1 <= row["jacobian_cosine/val"] <= 1
    probe = data.x_val[:JACOBIAN_PROBE]
    assert result.history[-1]["jacobian_cosine/val"] == pytest.approx(saliency_cosine(student, teacher, probe))
    _, alone = models(data)
    plain = fit(alone, "ce", data, config=config.replace(method="ce"), device="cpu", progress=False)
    assert not any(k.startswith("jacobian_cosine") for row in plain.history for k in row)


def test_unknown_method_lists_valid_ones(data):
    teacher, student = models(data)
    with pytest.raises(ValueError, match="valid methods: ce, kd"):
        make_method("distill", student, teacher, Config())


def test_teacher_with_wrong_outputs_is_refused_before_training(data):
    _, student = models(data)
    teacher = build_model("tiny", 7, width=8)
    with pytest.raises(ValueError, match="teacher has 7 outputs"):
        make_method("kd+jacobian", student, teacher, Config())
    with pytest.raises(ValueError, match="teacher has 5 outputs"):
        run(Config(**TINY, method="kd", teacher_classes=(0, 1, 2, 3, 4)), progress=False)


def test_missing_teacher_and_bad_config_are_clear():
    with pytest.raises(ValueError, match="needs a teacher"):
        make_method("kd", build_model("tiny", 10, width=4), None, Config())
    with pytest.raises(ValueError, match="jacobian_kind"):
        Config(jacobian_kind="l1")
    with pytest.raises(ValueError, match="sigma"):
        Config(sigma=-0.1)
    with pytest.raises(ValueError, match="per_class"):
        Config(per_class=0)
    with pytest.raises(ValueError, match="unknown Config field"):
        Config().replace(jacobian_wieght=1.0)


def test_per_class_larger_than_a_class_is_an_error():
    with pytest.raises(ValueError, match="per_class"):
        run(Config(**{**TINY, "per_class": 500}), progress=False)


def test_same_config_same_numbers(data):
    def once():
        teacher, student = models(data)
        return fit(student, "kd+jacobian", data, teacher=teacher, config=Config(steps=8, batch_size=32),
                   device="cpu", progress=False)
    a, b = once(), once()
    assert a.history == b.history
    assert a.metrics == b.metrics


def test_resume_after_interruption_gives_the_uninterrupted_result(data, tmp_path):
    config = Config(method="kd+jacobian", epochs=4, batch_size=64, eval_every=1)
    teacher, student = models(data)
    full = fit(student, "kd+jacobian", data, teacher=teacher, config=config, device="cpu", progress=False)

    class Stop(Exception):
        pass

    def stop_after_two(row):
        if row["epoch"] == 2:
            raise Stop

    ckpt = tmp_path / "run.ckpt"
    teacher, student = models(data)
    with pytest.raises(Stop):
        fit(student, "kd+jacobian", data, teacher=teacher, config=config, device="cpu", progress=False,
            checkpoint=ckpt, callback=stop_after_two)
    assert ckpt.exists()
    teacher, student = models(data, seed=0)
    torch.nn.init.zeros_(student.head.weight)  # resumed weights must come from the checkpoint
    resumed = fit(student, "kd+jacobian", data, teacher=teacher, config=config, device="cpu", progress=False,
                  checkpoint=ckpt)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4]
    assert resumed.history == full.history
    assert resumed.metrics == full.metrics


def test_corrupt_checkpoint_is_a_clear_error_and_the_previous_one_is_kept(data, tmp_path):
    config = Config(method="ce", epochs=2, batch_size=64, eval_every=1)
    ckpt = tmp_path / "c.ckpt"
    _, student = models(data)
    fit(student, "ce", data, config=config, device="cpu", progress=False, checkpoint=ckpt)
    prev = tmp_path / "c.ckpt.prev"
    assert prev.exists()
    prev_bytes = prev.read_bytes()
    ckpt.write_bytes(b"this is not a checkpoint")
    _, student = models(data)
    with pytest.raises(CheckpointError, match="corrupt.*c.ckpt.prev"):
        fit(student, "ce", data, config=config, device="cpu", progress=False, checkpoint=ckpt)
    assert prev.read_bytes() == prev_bytes
    with pytest.raises(CheckpointError, match="different config"):
        fit(student, "ce", data, config=config.replace(lr=0.01), device="cpu", progress=False, checkpoint=prev)


def test_nan_loss_stops_the_run_naming_the_term(data, monkeypatch):
    monkeypatch.setattr(losses, "kd_loss", lambda *a, **k: torch.tensor(float("nan")))
    teacher, student = models(data)
    with pytest.raises(NonFiniteLossError, match="'kd'"):
        fit(student, "kd", data, teacher=teacher, config=Config(steps=3), device="cpu", progress=False)


def test_evaluate_under_noise(data):
    teacher, _ = models(data)
    clean = evaluate(teacher, data.x_test, data.y_test)
    noisy = evaluate(teacher, data.x_test, data.y_test, sigma=0.5, seed=1)
    again = evaluate(teacher, data.x_test, data.y_test, sigma=0.5, seed=1)
    assert noisy == again and clean["sigma"] == 0 and 0 <= noisy["acc"] <= 1
    with pytest.raises(ValueError, match="sigma"):
        evaluate(teacher, data.x_test, data.y_test, sigma=-1)


def test_run_records_and_sweep_skips_done(tmp_path):
    store = tmp_path / "r.jsonl"
    configs = expand_grid(Config(**TINY), {"method": ["ce", "kd+jacobian"], "seed": [0, 1]})
    assert len(configs) == 4
    records = sweep(configs, store, device="cpu", progress=False)
    assert len(ResultStore(store)) == 4
    m = records[2]["metrics"]
    assert set(m) >= {"test_acc", "val_acc", "noise_acc", "saliency_cosine", "teacher_test_acc"}
    assert set(m["noise_acc"]) == {"0", "0.02", "0.05", "0.1", "0.2"}
    assert records[2]["versions"]["torch"] and records[2]["wall_time_s"] > 0
    again = sweep(configs, store, device="cpu", progress=False)
    assert len(ResultStore(store)) == 4
    assert [r["key"] for r in again] == [r["key"] for r in records]
    model, record = trained_student(configs[2], store=store, device="cpu", progress=False)
    assert record["key"] == records[2]["key"]
    data = load("shapes", n_train=300, n_test=100)
    assert evaluate(model, data.x_test, data.y_test)["acc"] == pytest.approx(m["test_acc"])


def test_transfer_methods_run(tmp_path):
    base = Config(**{**TINY, "teacher_classes": (0, 1, 2, 3, 4), "classes": (5, 6, 7, 8, 9)})
    for method, init in [("lwf", "finetune"), ("at+jacobian", "scratch"), ("ce", "finetune")]:
        r = run(base.replace(method=method, init=init), progress=False)
        assert 0 <= r["metrics"]["test_acc"] <= 1
        assert all(math.isfinite(v) for h in r["history"] for k, v in h.items() if k.startswith("loss/"))


def test_spec_files(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text("base: {dataset: shapes, per_class: 5}\ngrid: {method: [ce, kd], seed: [0, 1, 2]}\n")
    assert len(load_spec(spec)) == 6
    toml = tmp_path / "s.toml"
    toml.write_text('[[sweeps]]\nbase = {method = "kd"}\ngrid = {per_class = [1, 5]}\n'
                    '[[sweeps]]\nbase = {method = "ce"}\ngrid = {seed = [0]}\n')
    assert [(c.method, c.per_class) for c in load_spec(toml)] == [("kd", 1), ("kd", 5), ("ce", 5)]
    bad = tmp_path / "b.yaml"
    bad.write_text("base: {jacobian_wieght: 1}\n")
    with pytest.raises(ValueError, match="unknown Config field"):
        load_spec(bad)


def test_cli_check_prints_the_slopes(capsys):
    assert cli.main(["check"]) == 0
    out = capsys.readouterr().out
    assert "fitted slope of |MC - noise_free|" in out and "OK" in out


def test_cli_errors_name_valid_choices(capsys):
    assert cli.main(["distill", "--method", "nope", "--device", "cpu"]) == 2
    assert "valid methods" in capsys.readouterr().err
    assert cli.main(["distill", "--dataset", "mnist", "--method", "ce", "--device", "cpu"]) == 2
    assert "shapes" in capsys.readouterr().err


def test_cli_sweep_and_report(tmp_path, capsys):
    # the demo (jkt-lab demo --quick) and its report: tests/test_report.py
    spec = tmp_path / "s.yaml"
    spec.write_text(json.dumps({"base": {**TINY, "method": "ce"}, "grid": {"seed": [0, 1]}}))
    store = tmp_path / "s.jsonl"
    assert cli.main(["sweep", str(spec), "--store", str(store), "--device", "cpu", "--no-progress"]) == 0
    assert cli.main(["sweep", str(spec), "--store", str(store), "--device", "cpu", "--no-progress"]) == 0
    assert "done, skipped" in capsys.readouterr().out
    assert len(ResultStore(store)) == 2
    assert cli.main(["report", str(store), "--out", str(tmp_path / "rep")]) == 0
    assert "| method |" in (tmp_path / "rep" / "REPORT.md").read_text()
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "<table>" in html and "<th>method</th>" in html and "|---" not in html


def test_committed_specs_parse():
    from pathlib import Path
    specs = sorted((Path(__file__).resolve().parents[1] / "results" / "specs").glob("*.yaml"))
    assert specs
    for spec in specs:
        assert load_spec(spec), spec


def test_pretrained_teacher_config_is_the_papers_transfer_source():
    config = Config(dataset="indoor67", teacher="resnet34", teacher_pretrained=True, teacher_epochs=0)
    assert config.teacher_config().teacher_pretrained


def test_teacher_identity_depends_on_the_teachers_settings_only():
    from jkt_lab.results import config_hash
    base = Config(**TINY)
    key = config_hash(base.teacher_config().to_dict())
    student_changes = dict(batch_size=7, lr=0.3, schedule="step", augment=False, weight_decay=0.0, epochs=3,
                           steps=None, seed=4, method="kd", per_class=1, student_width=6, label_smoothing=0.1,
                           train_sigma=0.2, temperature=2.0, jacobian_weight=10.0, n_test=50)
    for name, value in student_changes.items():
        assert config_hash(base.replace(**{name: value}).teacher_config().to_dict()) == key, name
    teacher_changes = dict(teacher_batch_size=64, teacher_lr=0.1, teacher_schedule="step", teacher_augment=False,
                           teacher_weight_decay=0.0, teacher_label_smoothing=0.1, teacher_train_sigma=0.1,
                           teacher_epochs=2, teacher_seed=1, teacher_width=16, n_train=400)
    for name, value in teacher_changes.items():
        assert config_hash(base.replace(**{name: value}).teacher_config().to_dict()) != key, name
    t = base.replace(teacher_batch_size=64, teacher_lr=0.1, teacher_train_sigma=0.1).teacher_config()
    assert (t.batch_size, t.lr, t.train_sigma, t.method, t.per_class) == (64, 0.1, 0.1, "ce", None)
    assert t.teacher_config() == t


def test_train_sigma_trains_on_noisy_inputs(data):
    clean = Config(**TINY, method="ce")
    a = fit(build_model("tiny", 10, mean=data.mean, std=data.std, width=4, seed=0), "ce", data, config=clean,
            device="cpu", progress=False)
    b = fit(build_model("tiny", 10, mean=data.mean, std=data.std, width=4, seed=0), "ce", data,
            config=clean.replace(train_sigma=0.1), device="cpu", progress=False)
    c = fit(build_model("tiny", 10, mean=data.mean, std=data.std, width=4, seed=0), "ce", data,
            config=clean.replace(train_sigma=0.1), device="cpu", progress=False)
    assert a.history[-1]["loss/ce"] != b.history[-1]["loss/ce"]
    assert b.history == c.history  # the noise is seeded: same config, same numbers
    with pytest.raises(ValueError, match="label_smoothing"):
        Config(label_smoothing=1.0)
