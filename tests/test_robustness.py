"""Robustness experiment: the Jacobian-norm penalty, the grid and its selection, the mechanism
measurements, Proposition 1's objectives term by term, the report section and the command."""
import dataclasses

import pytest
import torch
from torch import nn

from jkt_lab import cli, cost, nbtools, widgets
from jkt_lab import robustness as rb
from jkt_lab.config import Config
from jkt_lab.experiments import PROBE, get_teacher, load_data, run, trained_student
from jkt_lab.methods import make_method
from jkt_lab.models import build_model
from jkt_lab.report import Document, add_robustness_section, write_report
from jkt_lab.results import ResultStore, config_hash
from jkt_lab.saliency import jacobian_norm
from jkt_lab.train import fit
from jkt_lab.viz import mechanism_figure
from shipped_teachers import remake_commands
from tiny_runs import TINY

pytestmark = pytest.mark.usefixtures("isolated")  # tests/conftest.py; also `data` there


# --------------------------------------------------------------------------- the Jacobian-norm penalty


def test_jacobian_norm_penalty_is_the_mean_squared_norm_of_each_examples_own_jacobian(data):
    teacher = build_model("tiny", 10, mean=data.mean, std=data.std, width=8, seed=0).eval()
    student = build_model("tiny", 10, mean=data.mean, std=data.std, width=4, seed=1).eval()
    x, y = data.x_train[:6], data.y_train[:6]
    method = make_method("kd+jacobian_norm", student, teacher, Config(jacobian_weight=0.5))
    _, terms = method.loss(x, y, step=0)
    assert set(terms) == {"ce", "kd", "jacobian"}
    top1 = teacher(x).argmax(1)          # the teacher chooses the output, as kd+jacobian does
    expected = 0.0
    for i in range(6):                   # one example at a time: no batch effects at all
        xi = x[i:i + 1].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(student(xi)[0, top1[i]], xi)
        expected += float(g.pow(2).sum()) / 6
    assert float(terms["jacobian"].detach()) == pytest.approx(0.5 * expected, rel=1e-4)


def test_jacobian_norm_penalty_trains_the_student_in_train_mode(data):
    teacher = build_model("tiny", 10, mean=data.mean, std=data.std, width=8, seed=0).eval()
    student = build_model("tiny", 10, mean=data.mean, std=data.std, width=4, seed=1).train()
    method = make_method("kd+jacobian_norm", student, teacher, Config(jacobian_output="random"))
    _, terms = method.loss(data.x_train[:16], data.y_train[:16], step=3)
    terms["jacobian"].backward()        # the penalty alone reaches the student's weights
    grads = [p.grad for p in student.parameters() if p.grad is not None]
    assert grads and sum(float(g.abs().sum()) for g in grads) > 0
    assert all(p.grad is None for p in teacher.parameters())


def test_jacobian_norm_penalty_lowers_the_norm_against_kd_alone(data):
    teacher = build_model("tiny", 10, mean=data.mean, std=data.std, width=8, seed=0).eval()
    norms = {}
    for method in ("kd", "kd+jacobian_norm"):
        student = build_model("tiny", 10, mean=data.mean, std=data.std, width=4, seed=1)
        config = Config(method=method, steps=15, batch_size=32, jacobian_weight=10.0, seed=0)
        fit(student, method, data, teacher=teacher, config=config, device="cpu", progress=False)
        norms[method] = jacobian_norm(student, data.x_test)
    assert norms["kd+jacobian_norm"] < 0.7 * norms["kd"]


# --------------------------------------------------------------------------- mechanism metrics in run()


def test_run_records_jacobian_norms_and_validation_accuracy_under_noise(tmp_path):
    config = Config(**TINY, method="kd")
    record = run(config, store=tmp_path / "r.jsonl", device="cpu", progress=False, val_noise_sigmas=(0.1,))
    m = record["metrics"]
    assert set(m["val_noise_acc"]) == {"0.1"} and 0 <= m["val_noise_acc"]["0.1"] <= 1
    student, _ = trained_student(config, store=tmp_path / "r.jsonl", device="cpu", progress=False)
    teacher, _ = get_teacher(config, device="cpu", progress=False)
    probe = load_data(config).x_test[:PROBE]
    assert m["jacobian_norm"] == pytest.approx(jacobian_norm(student, probe), rel=1e-5)
    assert m["teacher_jacobian_norm"] == pytest.approx(jacobian_norm(teacher, probe), rel=1e-5)
    assert m["jacobian_norm"] > 0 and "val_noise_acc" not in run(config.replace(seed=1), device="cpu",
                                                                  progress=False)["metrics"]


# --------------------------------------------------------------------------- Proposition 1, term by term


class _Linear(nn.Module):
    def __init__(self, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5))

    def forward(self, x):
        return self.net(x)


@pytest.mark.parametrize("sigma", [0.3, 1.0])
def test_equivalence_configs_make_the_two_objectives_agree_term_by_term(sigma):
    """On linear networks Proposition 1 is exact: E_z ||T(x+sz) - S(x+sz)||^2 = ||T - S||^2 +
    s^2 ||J_T - J_S||_F^2. The configs of equivalence_configs must give the two methods that."""
    noise_c, jac_c = rb.equivalence_configs("shapes", [sigma], activation_weight=0.7, seeds=[0], jacobian_output="all")
    assert (noise_c.method, jac_c.method) == ("noise", "activations+jacobian")
    assert jac_c.jacobian_weight == pytest.approx(0.7 * sigma ** 2) and jac_c.activation_weight == 0.7
    teacher, student = _Linear(0).eval(), _Linear(1)
    x = torch.rand(4, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    y = torch.zeros(4, dtype=torch.long)
    noisy = make_method("noise", student, teacher, noise_c.replace(n_samples=40000, ce_weight=0.0))
    _, t_noise = noisy.loss(x, y, step=0)
    matched = make_method("activations+jacobian", student, teacher, jac_c.replace(ce_weight=0.0))
    _, t_jac = matched.loss(x, y, step=0)
    assert set(t_jac) == {"activations", "jacobian"}
    # the constant: a linear map's Jacobian is its weight, so the term is a sigma^2 ||W_T - W_S||_F^2
    w_gap = float((teacher.net[1].weight - student.net[1].weight).detach().pow(2).sum())
    assert float(t_jac["jacobian"]) == pytest.approx(0.7 * sigma ** 2 * w_gap, rel=1e-5)
    assert float(t_jac["jacobian"]) > 0.1 * float(t_jac["activations"])  # large enough to be seen below
    assert float(t_noise["noise"]) == pytest.approx(float(t_jac["activations"] + t_jac["jacobian"]), rel=0.02)
    # the default, one random projection a step, estimates the same term without bias
    _, random_c = rb.equivalence_configs("shapes", [sigma], activation_weight=0.7, seeds=[0])
    assert random_c.jacobian_output == "random"
    projected = make_method("activations+jacobian", student, teacher, random_c.replace(ce_weight=0.0))
    mean = sum(float(projected.loss(x, y, step=k)[1]["jacobian"].detach()) for k in range(400)) / 400
    assert mean == pytest.approx(float(t_jac["jacobian"]), rel=0.1)


def test_logit_energy_matches_its_second_order_prediction_on_a_linear_teacher():
    teacher = _Linear(0)
    x = torch.rand(2000, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    energy = rb.logit_energy(teacher, x, [0.0, 0.5, 2.0])
    w = float(teacher.net[1].weight.detach().pow(2).sum())
    clean = float(teacher(x).detach().pow(2).sum(1).mean())
    for sigma in (0.0, 0.5, 2.0):
        assert energy["predicted"][f"{sigma:g}"] == pytest.approx(clean + sigma ** 2 * w, rel=1e-5)
        assert energy["measured"][f"{sigma:g}"] == pytest.approx(energy["predicted"][f"{sigma:g}"], rel=0.03)
    assert energy["predicted"]["2"] > 2 * clean   # the sigma^2 term is large enough to be tested


def test_scale_invariance_table_only_the_normalised_loss_ignores_the_scale():
    rows = rb.scale_invariance_table([0.5, 1.0, 3.0], teacher_norm=8.0, sigma=0.1)
    for r in rows:
        c = r["scale c"]
        assert r["normalised loss"] == pytest.approx(0.0, abs=1e-12)
        assert r["squared loss"] == pytest.approx((c - 1) ** 2 * 64)
        assert r["norm penalty"] == pytest.approx(c ** 2 * 64)
        assert r["output std at sigma=0.1"] == pytest.approx(0.1 * c * 8)


def _pairs_record(sigma, cross, floor_noise, floor_jac):
    pairs = [{"kind": "cross", "same_seed": False, **q} for q in cross]
    pairs += [{"kind": rb.EQUIVALENCE[0], "same_seed": False, **q} for q in floor_noise]
    pairs += [{"kind": rb.EQUIVALENCE[1], "same_seed": False, **q} for q in floor_jac]
    pairs += [{"kind": "cross", "same_seed": True, **{k: 0.0 for k in rb.QUANTITIES}}]  # never counted
    return {"key": f"pairs{sigma}", "config": {"extra": {"experiment": "robustness", "part": "equivalence-pairs"},
                                               "dataset": "shapes", "sigma": sigma, "runs": []},
            "metrics": {"pairs": pairs}}


def test_equivalence_table_compares_cross_method_pairs_with_the_seed_floor():
    q = lambda v: {k: v for k in rb.QUANTITIES}  # noqa: E731
    close = _pairs_record(0.05, [q(0.10), q(0.12)], [q(0.11)], [q(0.09), q(0.13)])   # 0.11 <= max(0.11, 0.11)
    far = _pairs_record(0.2, [q(0.30)], [q(0.10)], [{**q(0.10), "logit_distance": 0.5}])
    rows = rb.equivalence_table([far, close])
    assert [r["sigma"] for r in rows] == [0.05, 0.2]
    assert rows[0]["agree within the floor"] == "logits, Jacobians, test acc, acc at sigma=0.1"
    assert rows[1]["agree within the floor"] == "logits"
    assert rows[1]["Jacobians: cross / floor"] == "0.3 / 0.1"
    assert rows[1]["test acc: cross / floor"] == "30 / 10"


# --------------------------------------------------------------------------- the grid and its selection


def test_grid_covers_teachers_students_per_class_and_seeds():
    configs = rb.grid_configs("shapes")
    assert len(configs) == len(rb.TEACHERS) * len(rb.VARIANTS) * 2 * len(rb.SEEDS)
    assert {c.extra["variant"] for c in configs} == set(rb.VARIANTS)
    assert {c.per_class for c in configs} == set(rb.SETUPS["shapes"].per_class)
    teachers = {c.extra["teacher"]: c.teacher_config() for c in configs}
    assert teachers["noise-trained"].train_sigma == rb.SETUPS["shapes"].teacher_sigma
    assert teachers["standard"].train_sigma == 0
    for name in rb.TEACHERS:  # one teacher per name, whatever the student
        assert len({config_hash(c.teacher_config().to_dict()) for c in configs if c.extra["teacher"] == name}) == 1
    squared = [c for c in configs if c.extra["variant"] == "kd+jacobian (squared)"]
    assert {(c.method, c.jacobian_kind) for c in squared} == {("kd+jacobian", "squared")}
    cifar = rb.grid_configs("cifar10")
    assert {c.student for c in cifar} == {"vgg4"} and {c.teacher_width for c in cifar} == {32}


def test_cifar10_grid_asks_for_exactly_the_shipped_teachers():
    """The CIFAR-10 grid never trains a teacher: its two teachers are the configs that
    jkt_lab/teachers/remake.sh ships as cifar10 and cifar10-noise (parsed, not copied)."""
    made = remake_commands()
    wanted = {"standard": made["cifar10"].teacher_config(), "noise-trained": made["cifar10-noise"].teacher_config()}
    assert {n: c.teacher_config() for n, c in rb.teacher_configs("cifar10").items()} == wanted
    configs = rb.grid_configs("cifar10") + rb.selection_configs("cifar10")
    for c in configs:
        assert c.teacher_config() == wanted[c.extra["teacher"]]
    rows = rb.teacher_rows("cifar10")
    for name, row in rows.items():  # a teacher's own row is its training config, scored on the students' images
        assert row.replace(n_test=wanted[name].n_test, extra={}) == wanted[name]


def _fake_selection(configs, val):
    return [{"key": config_hash(c.to_dict()), "config": c.to_dict(),
             "metrics": {"val_acc": val(c)[0], "val_noise_acc": {"0.1": val(c)[1]}}} for c in configs]


def test_selection_uses_accuracy_under_noise_then_clean_accuracy_and_reuses_the_seed0_run():
    sel = rb.selection_configs("shapes")
    assert {c.per_class for c in sel} == {100} and {c.seed for c in sel} == {0}

    def val(c):  # robust accuracy favours the largest jacobian_weight / sigma; a tie for the normalised loss
        if c.extra["variant"] == "kd+jacobian (normalised)":
            return (0.9 if c.jacobian_weight == 0.1 else 0.5, 0.3)
        value = c.sigma if c.method == "noise" else c.jacobian_weight
        return (1.0 - value / 100, value / 100)

    records = _fake_selection(sel, val)
    chosen = rb.select(records, "shapes")
    assert chosen[("standard", "kd+jacobian (normalised)")]["jacobian_weight"] == 0.1   # tie: clean accuracy
    assert chosen[("noise-trained", "kd+jacobian_norm")]["jacobian_weight"] == 1.0
    assert chosen[("standard", "noise")]["sigma"] == 0.2
    grid = rb.chosen_configs(records, "shapes")
    keys = {config_hash(c.to_dict()) for c in grid}
    reused = [r for r in records if r["key"] in keys]
    assert len(reused) == len(rb.TEACHERS) * len(rb.SETUPS["shapes"].selection)  # the chosen seed-0 runs
    table = rb.selection_table(records, "shapes")
    assert sum(r["chosen"] == "yes" for r in table) == len(reused)


def test_cifar10_refuses_to_train_a_teacher_that_is_not_shipped(tmp_path):
    s = dataclasses.replace(rb.SETUPS["cifar10"], base={**rb.SETUPS["cifar10"].base, "teacher_epochs": 3})
    with pytest.raises(ValueError, match="not shipped.*remake.sh"):
        rb.robustness_experiment(tmp_path / "r.jsonl", s, log=lambda *a: None)
    with pytest.raises(ValueError, match="unknown part 'nope'"):
        rb.robustness_experiment(tmp_path / "r.jsonl", "shapes", parts=["nope"])
    with pytest.raises(ValueError, match="dataset must be one of"):
        rb.setup("mnist")


# --------------------------------------------------------------------------- tables, figure, report


def _fake(teacher, variant, per_class, seed, norm, acc01, clean=0.8):
    part = "teacher" if variant == "teacher" else "grid"
    return {"key": f"{teacher}{variant}{per_class}{seed}",
            "config": {"dataset": "shapes", "per_class": per_class, "seed": seed,
                       "extra": {"experiment": "robustness", "part": part, "teacher": teacher, "variant": variant}},
            "metrics": {"test_acc": clean, "noise_acc": {"0": clean, "0.1": acc01}, "jacobian_norm": norm,
                        "teacher_jacobian_norm": 2.0, "saliency_cosine": 0.5}}


def _fake_grid():
    recs = [_fake("standard", "teacher", None, 0, 2.0, 0.2, 0.9), _fake("noise-trained", "teacher", None, 0, 0.5, 0.7)]
    for seed in (0, 1):
        recs += [_fake("standard", "kd", 20, seed, 1.0, 0.3), _fake("standard", "kd+jacobian_norm", 20, seed, 0.2, 0.6),
                 _fake("noise-trained", "kd", 20, seed, 0.6, 0.5 + 0.1 * seed)]
    return recs


def test_spearman():
    assert rb.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert rb.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert rb.spearman([1, 1, 2], [5, 6, 7]) == pytest.approx(0.8660254)   # ties share their mean rank
    assert rb.spearman([1, 2], [1, 2]) is None
    with pytest.raises(ValueError, match="same length"):
        rb.spearman([1, 2, 3], [1, 2])


def test_tables_and_mechanism_figure_one_point_per_model():
    recs = _fake_grid()
    mech = rb.mechanism_table(recs)
    assert [(r["teacher"], r["student"]) for r in mech][:2] == [("standard", "teacher"), ("noise-trained", "teacher")]
    kd = next(r for r in mech if r["student"] == "kd" and r["teacher"] == "standard")
    assert kd["norm / teacher's"] == pytest.approx(0.5) and kd["acc at sigma=0.1"] == "30.0 ± 0.0" and kd["n"] == 2
    nt = next(r for r in rb.robustness_table(recs) if r["student"] == "kd" and r["teacher"] == "noise-trained")
    assert nt["sigma=0.1"] == "55.0 ± 7.1"
    fig = mechanism_figure(recs).to_dict()
    assert fig["layout"]["xaxis"]["type"] == "log"
    points = sum(len(t["x"]) for t in fig["data"])
    assert points == 6 + 2   # six students, and both teachers in the one per_class panel
    symbols = {t["name"]: t["marker"]["symbol"] for t in fig["data"]}
    assert symbols["kd, noise-trained teacher"] == "diamond" and symbols["kd, standard teacher"] == "circle"


def test_report_section_is_added_beside_other_results(tmp_path):
    other = {"config": {"method": "kd", "per_class": 5, "seed": 0}, "metrics": {"test_acc": 0.5, "noise_acc": {}}}
    paths = write_report(_fake_grid() + [other], tmp_path, plotlyjs="cdn")
    text = paths["markdown"].read_text()
    assert "## Robustness to noisy inputs on shapes" in text and "## Runs: test accuracy" in text
    assert "rank correlation between a student's Jacobian norm and its accuracy at sigma 0.1: -0.90 over 6 students" in text
    assert "Most robust at sigma 0.1 with the standard teacher, per_class 20: kd+jacobian_norm, 60.0% (kd: 30.0%)" in text
    assert "kd+jacobian_norm against kd (same teacher and per_class, 1 setting, paired by seed): Jacobian norm x 0.20; " \
           "accuracy at sigma 0.1: supported (+30.0 points on average); drop from clean accuracy" in text
    assert "The noise-trained teacher: 80.0% clean, 70.0% at sigma 0.1; Jacobian norm 0.5." in text
    assert paths["html"].read_text().count("plotly-graph-div") >= 2
    assert add_robustness_section(Document("x"), [other]) is False


def test_panel_shows_the_committed_results_and_says_when_there_are_none(tmp_path, monkeypatch):
    folder = tmp_path / "results" / "robustness-shapes"
    store = ResultStore(folder / "results.jsonl")
    for r in _fake_grid():
        store.append(r)
    monkeypatch.setattr(nbtools, "_REPO_ROOT", tmp_path)
    panel = widgets.robustness_experiment_panel()
    panel.run_button.click()
    assert panel.error is None and len(panel.records) == len(_fake_grid())
    assert "6 students and 2 teachers" in panel.status.value
    assert sum(len(t["x"]) for t in panel.figure.to_dict()["data"]) == 8
    panel.controls["sigma"].value = 0.2     # no accuracy at 0.2 in these records: an empty figure, no error
    panel.run_button.click()
    assert panel.error is None and sum(len(t["x"]) for t in panel.figure.to_dict()["data"]) == 0
    panel.controls["dataset"].value = "cifar10"
    panel.run_button.click()
    assert isinstance(panel.error, ValueError) and "run the grid here" in str(panel.error)


# --------------------------------------------------------------------------- end to end, quick


def test_estimate_cost_measures_steps_and_skips_done_runs(tmp_path):
    configs = [Config(**TINY, method=m) for m in ("kd", "kd+jacobian_norm")]
    est = cost.estimate_cost(configs, device="cpu", steps=(1, 2), log=lambda *a: None)
    assert est["runs"] == 2 and est["wall_s"] > 0 and est["cpu_s"] > 0 and len(est["by_step"]) == 2
    assert len(est["row"]) == len(est["overhead"]) == 1   # one model pair
    store = ResultStore(tmp_path / "r.jsonl")
    store.append({"config": configs[0].to_dict(), "metrics": {}})
    assert cost.estimate_cost(configs[:1], store=store, device="cpu", log=lambda *a: None)["runs"] == 0
    # one entry per run, summing to the totals
    assert [c for c, _, _ in est["per_run"]] == configs
    assert sum(w for _, w, _ in est["per_run"]) == pytest.approx(est["wall_s"])
    # history rows as fit makes them: about 20 a run, or every eval_every epochs and the last
    assert cost._history_rows(Config(steps=300, batch_size=64), 1000) == 19
    assert cost._history_rows(Config(steps=300, batch_size=64, eval_every=50), 100) == 3


@pytest.mark.slow  # about 40 toy runs: 400 s on a loaded 2-core machine
def test_cli_robustness_quick_runs_every_part_and_resumes(tmp_path, capsys, monkeypatch):
    # the shapes setup, smaller still: two seeds, two values per selection, one equivalence sigma
    full = rb.SETUPS["shapes"]
    small = dataclasses.replace(full, seeds=(0, 1), equivalence_sigmas=(0.1,),
                                selection={k: {f: v[1:] for f, v in g.items()} for k, g in full.selection.items()})
    monkeypatch.setitem(rb.SETUPS, "shapes", small)
    store = tmp_path / "rob" / "results.jsonl"
    args = ["robustness", "--quick", "--dataset", "shapes", "--store", str(store), "--device", "cpu", "--no-progress"]
    assert cli.main(args) == 0
    records = ResultStore(store).records()
    parts = {r["config"]["extra"]["part"] for r in records}
    assert parts == {"teacher", "grid", "equivalence", "equivalence-pairs"}
    grid = [r for r in records if r["config"]["extra"]["part"] == "grid"]
    assert {r["config"]["extra"]["variant"] for r in grid} == set(rb.VARIANTS)
    assert all("jacobian_norm" in r["metrics"] and "0.1" in r["metrics"]["val_noise_acc"] for r in grid)
    report = (tmp_path / "rob" / "REPORT.md").read_text()
    for heading in ("Test accuracy (%) under input noise", "Hyper-parameters chosen on the validation split",
                    "Mechanism: input-Jacobian norm", "Proposition 1 in training"):
        assert heading in report
    assert "The two trainings agree within the seed-to-seed floor" in report
    n = len(records)
    capsys.readouterr()
    assert cli.main(args) == 0       # resumable: nothing runs twice
    assert len(ResultStore(store)) == n
    assert "already done" in capsys.readouterr().out
    monkeypatch.setenv("JKT_LAB_QUICK", "1")   # the notebook's panel in quick mode, on this store: all done
    panel = widgets.robustness_experiment_panel(store, source="run")
    panel.run_button.click()
    assert panel.error is None and len(panel.records) == n
    assert panel.figure.to_dict()["layout"]["xaxis"]["type"] == "log"


def test_prediction_and_the_comparison_with_kd_on_the_committed_cifar10_grid():
    """Notebook 04's predict-then-run and the numbers its prose quotes, on the committed records."""
    records = nbtools.committed_robustness("cifar10")
    vs = rb.versus_kd(records, "cifar10")
    assert set(vs) == set(rb.VARIANTS) - {"kd"} and all(v["settings"] == 4 for v in vs.values())
    lines = rb.findings(records, "cifar10")                 # the report's sentences carry the same numbers
    assert any(f"Jacobian norm x {vs['kd+jacobian (squared)']['norm_ratio']:.2f}" in line for line in lines)
    acc = rb.mean_accuracy(records, "cifar10")
    few = sorted((v for (t, v, pc) in acc if t == "standard" and pc == 10), key=lambda v: -acc[("standard", v, 10)])
    assert len(few) == len(rb.VARIANTS)
    assert rb.compare_prediction(few[0], records, "cifar10").startswith(f"You predicted {few[0]}: it is the most robust")
    assert f"rank {len(few)} of {len(few)}" in rb.compare_prediction(few[-1], records, "cifar10")
    assert rb.compare_prediction(None, records, "cifar10").startswith("No prediction recorded")
    with pytest.raises(ValueError, match="prediction must be one of"):
        rb.compare_prediction("ce", records, "cifar10")
    with pytest.raises(ValueError, match="teacher must be one of"):
        rb.compare_prediction("kd", records, "cifar10", teacher="robust")
