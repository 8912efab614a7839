"""jkt_lab.course: the course's runs and seeds, the tables that say what they average, the
comparison against the spread over seeds, prepare() (resumable) and ``jkt-lab prepare-course``."""
import pytest

from jkt_lab import cli, course, nbtools
from jkt_lab.config import Config
from jkt_lab.results import ResultStore


def record(method="kd", seed=0, acc=0.5, **config):
    return {"config": {"method": method, "seed": seed, "per_class": 10, "jacobian_weight": 1.0, **config},
            "metrics": {"test_acc": acc}}


def test_seeds_and_configs(monkeypatch):
    monkeypatch.delenv("JKT_LAB_QUICK", raising=False)
    assert course.seeds() == (0, 1, 2) and course.seeds(quick=True) == (0,)
    full = course.distillation_configs()
    assert [(c.method, c.seed) for c in full] == [(m, s) for m in nbtools.DISTILLATION_METHODS for s in (0, 1, 2)]
    assert all(c.replace(method="kd+jacobian", seed=0) == nbtools.course_config() for c in full)
    transfer = course.transfer_configs(quick=True)
    assert len(transfer) == len(nbtools.TRANSFER_RUNS)
    assert {nbtools.transfer_label(c.to_dict()) for c in transfer} == set(nbtools.TRANSFER_RUNS)
    assert course.panel_example_config().per_class == 5
    masks = course.object_mask_configs()                      # notebook 02's object masks: shapes, whatever the course
    assert [(c.dataset, c.method, c.seed) for c in masks] == [("shapes", m, 0) for m in nbtools.DISTILLATION_METHODS]
    monkeypatch.setenv("JKT_LAB_COURSE_DATASET", "shapes")
    assert masks == [c for c in course.distillation_configs() if c.seed == 0]   # on shapes: the same runs


def test_beside_committed_puts_your_runs_next_to_the_committed_ones():
    mine = [record("kd", s, a, dataset="cifar10", steps=300, extra={}) for s, a in ((0, 0.4), (1, 0.5))]
    mine.append(record("ce", 0, 0.2, dataset="cifar10", steps=300))
    extra = {"variant": "kd", "part": "distillation"}
    committed = [record("kd", s, a, dataset="cifar10", steps=300, eval_every=100, extra=extra)
                 for s, a in ((0, 0.3), (1, 0.4), (2, 0.5))]
    committed += [record("kd", 0, 0.9, dataset="cifar10", steps=300, per_class=50, extra=extra),      # other size
                  record("kd", 0, 0.9, dataset="shapes", steps=300, extra=extra),                      # other data
                  record("kd", 0, 0.9, dataset="cifar10", steps=300, extra={**extra, "part": "select"}),
                  record("kd", 0, 0.9, dataset="cifar10", steps=300,
                         extra={"variant": "kd+jacobian (squared)", "part": "distillation"})]
    rows = course.beside_committed(mine, committed)
    assert [r["method"] for r in rows] == ["ce", "kd"]                    # the course's order; no kd+jacobian run
    assert rows[0]["committed runs differ in"] == "no committed runs" and rows[0]["n (committed)"] == 0
    assert rows[1] == {"method": "kd", "yours: test %": "45.0 ± 7.1", "n (yours)": 2,
                       "committed: test %": "40.0 ± 10.0", "n (committed)": 3, "committed runs differ in": "eval_every"}


def test_attention_distances_pair_the_taps_as_training_does():
    import torch

    from jkt_lab.models import build_model
    teacher = build_model("vgg9", 5, width=4, seed=0).eval()            # four taps
    student = build_model("vgg4", 5, width=4, seed=1).eval()            # three
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    rows = course.attention_distances({"vgg4": student, "itself": teacher}, teacher, x)
    assert [(r["student"], r["layer pairs"]) for r in rows] == [("vgg4", 3), ("itself", 4)]
    assert 0 < rows[0]["attention transfer loss"] and 0 < rows[0]["attention-Jacobian loss"] <= 4 * 3   # 2 - 2 cos per pair
    assert rows[1]["attention transfer loss"] == pytest.approx(0, abs=1e-9)         # the teacher against itself
    assert rows[1]["attention-Jacobian loss"] == pytest.approx(0, abs=1e-5)


def test_runs_table_groups_by_every_setting_that_differs():
    records = [record(seed=s, acc=a) for s, a in ((0, 0.2), (1, 0.3), (2, 0.4))]
    records += [record(seed=0, acc=0.1, jacobian_weight=10.0), record(method="ce", seed=0, acc=0.1)]
    rows = course.runs_table(records)
    assert [(r["method"], r["jacobian_weight"], r["n"]) for r in rows] == [("kd", 1.0, 3), ("kd", 10.0, 1),
                                                                          ("ce", 1.0, 1)]
    assert rows[0]["test accuracy %"] == "30.0 ± 10.0" and rows[1]["test accuracy %"] == "10.0"
    assert rows[0]["seeds"] == "0, 1, 2"
    assert "per_class" not in rows[0]                                  # the same everywhere: no column
    same = course.runs_table([record(seed=0, acc=0.2), record(seed=1, acc=0.4)])
    assert same == [{"method": "kd", "test accuracy %": "30.0 ± 14.1", "n": 2, "seeds": "0, 1"}]
    assert course.runs_table([record(acc=0.25)], percent=False)[0]["test accuracy %"] == "0.250"
    assert course.runs_table([]) == []


def test_compare_pairs_by_seed():
    recs = [record("kd+jacobian", s, a) for s, a in enumerate((0.50, 0.52, 0.54))]
    recs += [record("kd", s, a) for s, a in enumerate((0.40, 0.41, 0.42))]
    c = course.compare(recs, "kd+jacobian", "kd")
    assert c["verdict"] == "ahead" and c["difference"] == pytest.approx(11.0)
    assert c["n"] == {"kd+jacobian": 3, "kd": 3} and "+11.0 points" in c["sentence"]
    assert course.compare(recs, "kd", "kd+jacobian")["verdict"] == "behind"
    noisy = [record("a", s, v) for s, v in enumerate((0.2, 0.6, 0.4))] + [record("b", s, 0.39 + s / 100) for s in range(3)]
    assert course.compare(noisy, "a", "b")["verdict"] == "not shown"
    # a small lead that every seed repeats is shown by the pairing, though it is within each spread
    spread = [record("a", s, 0.3 + s / 10 + 0.02) for s in range(3)] + [record("b", s, 0.3 + s / 10) for s in range(3)]
    c = course.compare(spread, "a", "b")
    assert c["verdict"] == "ahead" and c["interval"][0] > 0 and c["std"]["a"] > c["difference"]
    one = course.compare([record("a", 0, 0.5), record("b", 0, 0.4)], "a", "b")
    assert one["verdict"] == "one seed, no interval" and one["std"]["a"] is None and one["interval"] is None
    with pytest.raises(ValueError, match="'zz'"):
        course.compare(recs, "zz", "kd")


def test_fit_summary_reads_chance_gap_and_the_jacobian_term():
    hist = [{"step": 1, "loss/jacobian": 1.9}, {"step": 2, "loss/jacobian": 1.6}]
    recs = [{"config": Config(method="kd+jacobian", seed=s, n_test=1000).to_dict(), "history": hist,
             "metrics": {"test_acc": 0.3, "train_acc": 0.9, "val_acc": 0.35}} for s in (0, 1)]
    recs.append({"config": Config(method="ce", n_test=1000).to_dict(), "history": [{"step": 1}],
                 "metrics": {"test_acc": 0.1, "train_acc": 0.5, "val_acc": 0.1}})
    rows = {r["method"]: r for r in course.fit_summary(recs)}
    jac = rows["kd+jacobian"]
    assert jac["n"] == 2 and jac["train - validation"] == pytest.approx(55.0) and jac["chance %"] == pytest.approx(10.0)
    assert jac["test above chance (s.e.)"] == pytest.approx(0.2 / (0.09 / 1000) ** 0.5)
    assert jac["cosine in the loss, first row"] == pytest.approx(0.05)       # 1 - loss / (2 * weight)
    assert jac["cosine in the loss, last row"] == pytest.approx(0.20)
    assert rows["ce"]["test above chance (s.e.)"] == pytest.approx(0.0)
    assert "cosine in the loss, first row" not in rows["ce"]
    hist_cos = [{"step": 1, "jacobian_cosine/train": 0.3, "jacobian_cosine/val": 0.2}]
    row = course.fit_summary([{**recs[0], "history": hist_cos}])[0]
    assert row["cosine measured on train images, last row"] == 0.3 and row["cosine measured on validation images, last row"] == 0.2


def test_chance_level():
    assert course.chance_level(Config(dataset="shapes")) == pytest.approx(0.1)
    assert course.chance_level({"dataset": "shapes", "classes": [5, 6, 7, 8, 9]}) == pytest.approx(0.2)


SMALL = dict(n_train=300, n_test=100, teacher_width=8, student_width=4, steps=5)


@pytest.fixture(scope="module")
def tiny_course(tmp_path_factory):
    """The course's parts at the smallest size (prepare and the command line use these), prepared
    once for the module: ``(folder, rows of the first prepare())``."""
    tmp_path = tmp_path_factory.mktemp("course")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JKT_LAB_QUICK", "1")
        mp.setenv("JKT_LAB_RUNS", str(tmp_path / "runs"))
        mp.setenv("JKT_LAB_CACHE", str(tmp_path / "cache"))
        base = nbtools.course_config(quick=True, **SMALL)
        mp.setattr(course, "distillation_configs", lambda quick=None: [base.replace(method=m) for m in ("ce", "kd")])
        mp.setattr(course, "panel_example_config", lambda quick=None: base.replace(method="ce", per_class=5))
        mp.setattr(course, "transfer_configs",
                   lambda quick=None: [nbtools.transfer_config(quick=True, **SMALL).replace(method="ce", init="finetune")])
        yield tmp_path, course.prepare(progress=False)


def test_prepare_builds_every_run_and_resumes(tiny_course):
    folder, rows = tiny_course
    assert [r["part"].split(":")[0] for r in rows] == ["data", "notebooks 02-04", "notebook 03", "notebook 05"]
    assert [r["new"] for r in rows] == [0, 2, 1, 1]
    assert len(ResultStore(nbtools.course_store())) == 4
    assert len(list((folder / "runs" / "teachers").glob("*.pt"))) == 2       # course and transfer teachers
    again = course.prepare(progress=False)                                 # resumable: nothing new
    assert [r["new"] for r in again] == [0, 0, 0, 0] and len(ResultStore(nbtools.course_store())) == 4
    records = course.run_all(course.distillation_configs(), progress=False)
    assert [r["config"]["method"] for r in records] == ["ce", "kd"]


def test_run_all_checks_its_configs(tiny_course):
    with pytest.raises(TypeError, match=r"configs\[0\]"):
        course.run_all([{"method": "ce"}], progress=False)


def test_prepare_course_command(tiny_course, capsys):
    assert cli.main(["prepare-course", "--quick", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "notebooks 02-04" in out and "course caches ready" in out


def test_try_jacobian_step_with_the_library_step(tiny_course):
    from jkt_lab.exercises import _CODE
    rows = course.try_jacobian_step(_CODE["03.jacobian_step"][1], nbtools.course_config(quick=True, **SMALL), steps=3)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(-1.0 <= r["cosine"] <= 1.0 and r["loss"] == pytest.approx(2 * (1 - r["cosine"])) for r in rows)
