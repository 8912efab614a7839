"""The notebooks' panels, headless: build, set values, press Run, check the figure and the store.

Also the figure functions the notebooks added to ``jkt_lab.viz``. Quick mode, temporary runs
and cache folders: the first test trains a tiny teacher (seconds), the others reuse it.
"""
import ipywidgets
import plotly.graph_objects as go
import pytest
import torch

from jkt_lab import nbtools, viz, widgets
from jkt_lab.results import ResultStore


@pytest.fixture(scope="module", autouse=True)
def quick_env(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JKT_LAB_QUICK", "1")
        mp.setenv("JKT_LAB_RUNS", str(tmp_path_factory.mktemp("runs")))
        mp.setenv("JKT_LAB_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tmp_path_factory.mktemp("store") / "results.jsonl"


SMALL = dict(n_train=300, n_test=100, teacher_width=8, student_width=4)   # quick mode, and smaller still


@pytest.fixture(scope="module")
def base():
    return nbtools.course_config(**SMALL)


@pytest.fixture(scope="module")
def trained(store, base):
    models, records = nbtools.trained_models(base, methods=("ce", "kd+jacobian"), store=store)
    from jkt_lab.experiments import load_data
    return models, records, load_data(base)


def names(fig):
    return [t.get("name") for t in fig.to_dict()["data"]]


def test_equivalence_panel_tanh_and_relu():
    panel = widgets.equivalence_panel(n_samples=64)
    assert isinstance(panel, ipywidgets.VBox)
    assert set(panel.controls) == {"sigma", "activation", "n_samples", "loss"}
    panel.run_button.click()
    assert panel.error is None
    assert isinstance(panel.figure, go.Figure)
    traces = names(panel.figure)
    assert any(n.startswith("|MC - noise-free|") for n in traces) and any("Proposition 1" in n for n in traces)
    assert abs(panel.sweep["slope_noise_free"] - 2) < 0.3 and abs(panel.sweep["slope_prediction"] - 4) < 0.6
    assert "slope" in panel.status.value
    panel.controls["activation"].value = "relu"
    panel.controls["sigma"].value = (0.0001, 0.0005)
    panel.controls["loss"].value = "squared"
    panel.run_button.click()
    assert panel.error is None
    assert panel.sweep["rows"][0]["curvature_term"] == pytest.approx(0.0, abs=1e-12)
    assert "linear region" in panel.status.value
    assert [r["sigma"] for r in panel.sweep["rows"]][0] == pytest.approx(0.0001)


def test_equivalence_panel_reports_errors():
    panel = widgets.equivalence_panel()
    panel.controls["sigma"].value = (0.01, 0.01)
    panel.run_button.click()
    assert isinstance(panel.error, ValueError)
    assert "sigma range" in panel.status.value
    assert not panel.run_button.disabled


def test_distillation_panel_defaults(store):
    panel = widgets.distillation_panel(store=store)
    assert panel.config() == nbtools.panel_config(nbtools.course_config())   # the notebooks' setting, quick-sized
    assert panel.controls["steps"].value == nbtools.course_config().steps


def test_distillation_panel_runs_and_stores(store, base):
    panel = widgets.distillation_panel(store=store, base=base)
    assert {"dataset", "method", "jacobian_weight", "sigma", "per_class", "steps", "device"} <= set(panel.controls)
    panel.controls["method"].value = "kd+jacobian"
    panel.controls["per_class"].value = 5
    panel.controls["steps"].value = 10
    panel.controls["device"].value = "cpu"
    panel.run_button.click()
    assert panel.error is None, panel.error
    records = ResultStore(store).records()
    mine = [r for r in records if r["config"]["method"] == "kd+jacobian" and r["config"]["per_class"] == 5]
    assert len(mine) == 1 and mine[0]["config"]["steps"] == 10
    assert {"ce", "kd", "jacobian", "train_acc"} <= set(names(panel.figure))
    assert panel.history and panel.history[-1]["step"] == 10          # the live callback saw the rows
    assert panel.progress.value == panel.progress.max == 10
    assert "kd+jacobian" in panel.table.value and "<table>" in panel.table.value
    assert "test accuracy" in panel.status.value
    panel.run_button.click()                                           # the same config again: taken from the store
    assert panel.error is None and len(ResultStore(store).records()) == len(records)


def test_distillation_panel_other_dataset_drops_shape_sizes(store, base):
    panel = widgets.distillation_panel(store=store, base=base)
    panel.controls["dataset"].value = "digits"
    config = panel.config()
    assert config.dataset == "digits" and config.n_train is None and config.n_test is None


def test_distillation_panel_switches_to_the_course_setting_of_a_course_dataset(store, base):
    panel = widgets.distillation_panel(store=store, base=base)          # shapes, quick-sized
    panel.controls["dataset"].value = "cifar10"
    panel.controls["per_class"].value = 5
    shown = {k: getattr(base, k) for k in ("method", "jacobian_weight", "sigma", "steps", "seed")}  # the controls
    assert panel.config() == nbtools.panel_config(nbtools.course_config(dataset="cifar10", per_class=5, **shown))
    panel.controls["dataset"].value = "shapes"
    assert panel.config() == nbtools.panel_config(base.replace(per_class=5))   # back to the panel's own base


def test_distillation_panel_without_committed_results(store, base, monkeypatch, tmp_path):
    monkeypatch.setattr(nbtools, "_REPO_ROOT", tmp_path)
    panel = widgets.distillation_panel(store=store, base=base)
    assert "no committed results" in panel.committed.value


def test_saliency_panel(trained):
    models, _, data = trained
    panel = widgets.saliency_panel(models, data)
    assert panel.error is None
    assert names(panel.figure)[0] == "input" and len(names(panel.figure)) == 1 + len(models)
    panel.controls["model"].value = "teacher"
    assert panel.error is None and len(names(panel.figure)) == 2
    panel.controls["output"].value = "class"
    panel.controls["class"].value = 2
    assert panel.error is None and data.classes[2] in panel.figure.layout.title.text
    for output in ("label", "random", "all"):
        panel.controls["output"].value = output
        assert panel.error is None
    panel.controls["image"].value = 5
    assert "image 5" in panel.figure.layout.title.text
    assert "on the object" in panel.status.value


def test_robustness_panel(trained):
    models, _, data = trained
    panel = widgets.robustness_panel(models, data, n_sigmas=3, sigma_max=0.2)
    panel.controls["models"].value = ("teacher", "kd+jacobian")
    panel.run_button.click()
    assert panel.error is None
    assert names(panel.figure) == ["teacher", "kd+jacobian"]
    assert panel.figure.to_dict()["data"][0]["x"] == pytest.approx((0.0, 0.1, 0.2))
    assert all(0 <= a <= 100 for a in panel.figure.to_dict()["data"][1]["y"])
    panel.controls["models"].value = ()
    panel.run_button.click()
    assert isinstance(panel.error, ValueError)


def test_transfer_panel(store):
    panel = widgets.transfer_panel(store=store, base=nbtools.transfer_config(**SMALL))
    assert set(panel.controls["method"].options) == set(nbtools.TRANSFER_RUNS)
    panel.controls["method"].value = "at"
    panel.controls["steps"].value = 10
    panel.controls["device"].value = "cpu"
    panel.run_button.click()
    assert panel.error is None, panel.error
    rec = [r for r in ResultStore(store).records() if r["config"]["method"] == "at"]
    assert len(rec) == 1 and rec[0]["config"]["classes"] == [5, 6, 7, 8, 9]
    bars = panel.figure.to_dict()["data"][0]
    assert bars["type"] == "bar" and "at" in list(bars["x"])
    assert "at" in names(panel.curve)


# --------------------------------------------------------------------------- viz additions


def test_maps_figure_and_attention_figure():
    img = torch.rand(3, 8, 8)
    fig = viz.maps_figure(img, {"a": {"x": torch.rand(8, 8), "y": torch.rand(4, 4)}, "b": {"z": torch.zeros(8, 8)}})
    assert names(fig) == ["input", "a: x", "a: y", "b: z"]
    assert float(fig.data[1].z.max()) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        viz.maps_figure(img, {})
    from jkt_lab.models import build_model
    fig = viz.attention_figure(build_model("tiny", 5, width=4, seed=0).eval(), torch.rand(3, 16, 16))
    assert len(names(fig)) == 1 + 2 * 3


def test_robustness_and_bars_and_terms_figures():
    fig = viz.robustness_figure({"kd": [{"sigma": 0.1, "acc": 0.5}, {"sigma": 0.0, "acc": 0.75}]})
    assert fig.to_dict()["data"][0]["x"] == pytest.approx((0.0, 0.1))
    assert fig.to_dict()["data"][0]["y"] == pytest.approx((75.0, 50.0))
    recs = [{"config": {"method": "at", "init": "scratch"}, "metrics": {"test_acc": a}} for a in (0.2, 0.4)]
    recs.append({"config": {"method": "ce", "init": "finetune"}, "metrics": {"test_acc": 0.5}})
    bars = viz.accuracy_bars(recs, nbtools.transfer_label).to_dict()["data"][0]
    assert list(bars["x"]) == ["at", "ce (fine-tune)"]
    assert bars["y"] == pytest.approx((30.0, 50.0))
    from jkt_lab.theory import sigma_sweep
    sweep = sigma_sweep(*nbtools.toy_pair("tanh", n_examples=4), [0.01, 0.1], n_samples=32)
    fig = viz.equivalence_terms_figure(sweep)
    assert len(names(fig)) == 3 and fig.layout.xaxis.type == "log"


def test_html_table():
    assert "no results" in widgets.html_table([])
    out = widgets.html_table([{"a": 1.23456, "b": "<x>"}])
    assert "1.235" in out and "&lt;x&gt;" in out


def test_distillation_panel_three_seeds_in_one_click(store, base):
    panel = widgets.distillation_panel(store=store, base=base)
    panel.controls["method"].value = "ce"
    panel.controls["per_class"].value = 2
    panel.controls["steps"].value = 5
    panel.controls["device"].value = "cpu"
    panel.controls["seeds"].value = 3
    assert [c.seed for c in panel.configs()] == [0, 1, 2]
    panel.run_button.click()
    assert panel.error is None, panel.error
    assert [r["config"]["seed"] for r in panel.records] == [0, 1, 2]
    assert "±" in panel.status.value and "chance 10.0%" in panel.status.value
    panel.controls["seeds"].value = 1
    panel.controls["jacobian_weight"].value = 10.0                     # one more run, another setting
    panel.run_button.click()
    assert panel.error is None, panel.error
    table = panel.table.value
    assert "jacobian_weight" in table and "<th style='padding:2px 8px;text-align:left'>n</th>" in table
    assert ">3<" in table                                            # the three seeds: one row, n = 3
    ref = [s for s in panel.figure.layout.shapes]                     # chance line on the accuracy panel
    assert any(abs(s.y0 - 10.0) < 1e-9 for s in ref)


def test_transfer_panel_three_seeds(store):
    panel = widgets.transfer_panel(store=store, base=nbtools.transfer_config(**SMALL))
    panel.controls["method"].value = "ce (scratch)"
    panel.controls["steps"].value = 5
    panel.controls["device"].value = "cpu"
    panel.controls["seeds"].value = 3
    panel.run_button.click()
    assert panel.error is None, panel.error
    bars = panel.figure.to_dict()["data"][0]
    i = list(bars["x"]).index("ce (scratch)")
    assert "n=3" in panel.figure.layout.xaxis.ticktext[i] and bars["error_y"]["array"][i] >= 0
    assert "chance 20%" in panel.status.value


def test_history_figure_cosine_and_reference_lines():
    hist = [{"step": s, "loss/ce": 1.0 / s, "loss/jacobian": 1.9, "train_acc": 0.1 * s, "val_acc": 0.05 * s,
             "jacobian_cosine/train": 0.1 * s, "jacobian_cosine/val": 0.05 * s} for s in (1, 2, 3)]
    fig = viz.history_figure(hist, chance=0.1, teacher=0.8)
    assert {"cosine (train)", "cosine (val)"} <= set(names(fig))
    assert len(fig.layout.annotations) >= 3 + 2                      # three panel titles, two line labels
    assert sorted(round(s.y0, 6) for s in fig.layout.shapes) == [10.0, 80.0]
    plain = viz.history_figure([{k: v for k, v in h.items() if not k.startswith("jacobian_cosine")} for h in hist])
    assert not any(n.startswith("cosine") for n in names(plain)) and not plain.layout.shapes


def test_equivalence_figure_exact_zeros_are_not_plotted():
    from jkt_lab.theory import sigma_sweep
    sweep = sigma_sweep(*nbtools.toy_pair("relu"), [1e-4, 2e-4, 5e-4], n_samples=64)
    assert all(viz.at_rounding(sweep["rows"], "prediction"))
    assert viz.slope_text(sweep, "prediction") == "exact to float precision"
    assert viz.slope_text(sweep, "noise_free") == f"{sweep['slope_noise_free']:.2f}"
    fig = viz.equivalence_figure(sweep)
    ys = [y for trace in fig.data for y in trace.y]
    assert ys and min(ys) > 1e-30                                     # no 1e-300 floor on the log axis
    assert any("exact to float precision" in n for n in names(fig))
    assert "nan" not in " ".join(names(fig))
    panel = widgets.equivalence_panel(activation="relu", sigmas=(0.0001, 0.0005), n_samples=64)
    panel.run_button.click()
    assert panel.error is None and "nan" not in panel.status.value
    assert "exact to float precision" in panel.status.value


def test_maps_figure_wraps_and_keeps_pixels_square():
    maps = {str(c): torch.rand(8, 8) for c in range(10)}
    fig = viz.maps_figure(torch.rand(3, 8, 8), {"teacher": maps})
    assert fig.layout.width <= 1000                                  # no 1,650 px figure: 10 maps on 2 lines
    assert len(names(fig)) == 11
    rows = {t.yaxis for t in fig.data if t.type == "heatmap"}
    assert len(rows) == 10
    heat = next(t for t in fig.data if t.type == "heatmap")
    assert fig.layout[f"yaxis{heat.yaxis[1:]}"].scaleanchor == heat.xaxis
    grid = viz.saliency_grid(torch.rand(2, 3, 8, 8), {"m": torch.rand(2, 8, 8)})
    heat = next(t for t in grid.data if t.type == "heatmap")
    assert grid.layout[f"yaxis{heat.yaxis[1:]}"].scaleanchor == heat.xaxis
    with pytest.raises(ValueError, match="max_cols"):
        viz.maps_figure(torch.rand(3, 8, 8), {"t": maps}, max_cols=0)


def test_tables_render_as_html():
    t = widgets.table([{"method": "kd", "acc": 0.5}], floatfmt=".2f", caption="results")
    html = t._repr_html_()
    assert "<table>" in html and "<b>results</b>" in html and "0.50" in html
    assert "| method | acc |" in repr(t) and len(t) == 1


def test_examples_figure():
    x, y = torch.rand(20, 3, 8, 8), torch.arange(20) % 4
    fig = viz.examples_figure(x, y, ["a", "b", "c", "d"], per_class=3)
    assert len(fig.data) == 1 and fig.data[0].type == "image"
    assert list(fig.layout.yaxis.ticktext) == ["a", "b", "c", "d"]
    assert fig.data[0].z.shape[:2] == (4 * 12, 3 * 12)


def test_accuracy_bars_std_over_seeds_and_lines():
    recs = [{"config": {"method": "kd"}, "metrics": {"test_acc": a}} for a in (0.2, 0.4)]
    fig = viz.accuracy_bars(recs, lambda r: r["config"]["method"], chance=0.1, teacher=0.9)
    bar = fig.to_dict()["data"][0]
    assert bar["error_y"]["array"][0] == pytest.approx(14.142, abs=1e-3)   # sample std, as the tables
    assert fig.layout.xaxis.ticktext[0] == "kd<br>n=2" and len(fig.layout.shapes) == 2


# --------------------------------------------------------------------------- one colour per variant


def _rec(label, per_class=10, seed=0, acc=0.5, noise=None, method=None):
    method = method or label.split(" ")[0]
    return {"config": {"method": method, "per_class": per_class, "seed": seed, "extra": {"variant": label}},
            "metrics": {"test_acc": acc, "noise_acc": noise or {"0": acc, "0.1": acc - 0.1}},
            "history": [{"step": s, "val_acc": acc, "loss/ce": 1.0 / s} for s in (1, 2)]}


def _trace_colors(fig) -> dict:
    """name -> colour of every named trace (line or marker colour), from ``fig.to_dict()``."""
    out = {}
    for t in fig.to_dict()["data"]:
        color = (t.get("line") or {}).get("color") or (t.get("marker") or {}).get("color")
        if t.get("name") and isinstance(color, str):
            out.setdefault(t["name"], set()).add(color)
    return out


VARIANTS = ["ce", "kd", "kd+jacobian", "kd+jacobian (squared)", "noise", "at (scratch)", "at (fine-tune)",
            "at+jacobian (scratch)", "at+jacobian (fine-tune)", "fine-tune (ce)", "lwf", "activations",
            "activations+jacobian", "noise (squared)", "kd+jacobian_norm"]


def test_every_figure_colours_by_variant_the_same_way():
    from jkt_lab.report import variant
    recs = [_rec(v, per_class=pc, seed=s, acc=0.3 + 0.01 * i) for i, v in enumerate(VARIANTS)
            for pc in (1, 10, 100) for s in (0, 1)]
    labelled = [{**r, "variant": variant(r)} for r in recs]
    figures = [viz.accuracy_figure(labelled, color="variant"), viz.accuracy_groups_figure(labelled, color="variant"),
               viz.noise_figure(labelled, color="variant"), viz.training_curves_figure(labelled, color="variant")]
    seen: dict[str, set] = {}
    for fig in figures:
        for name, colors in _trace_colors(fig).items():
            seen.setdefault(name, set()).update(colors)
    assert set(VARIANTS) <= set(seen)
    assert all(len(c) == 1 for c in seen.values()), seen                 # one colour per variant, in every figure
    colors = {name: next(iter(c)) for name, c in seen.items() if name in VARIANTS}
    assert len(set(colors.values())) == len(VARIANTS), colors             # and no two variants share one
    assert colors["kd+jacobian"] != colors["kd+jacobian (squared)"]
    assert colors["at (scratch)"] != colors["at (fine-tune)"]
    bars = viz.accuracy_bars(recs, variant).to_dict()["data"][0]          # bars: the same colours
    assert dict(zip(bars["x"], bars["marker"]["color"])) == {v: colors[v] for v in VARIANTS}


def test_variant_color_aliases_and_unknown_labels():
    assert viz.variant_color("kd+jacobian (normalised)") == viz.variant_color("kd+jacobian")   # the same loss
    assert viz.variant_color("ce (fine-tune)") == viz.variant_color("fine-tune (ce)")         # reproduce's label
    assert viz.variant_color("at") == viz.variant_color("at (scratch)")                        # notebook 05's "at"
    assert viz.variant_color("scratch (ce)") == viz.variant_color("ce (scratch)") == viz.variant_color("ce")
    assert viz.variant_color("something new") == viz.variant_color("something new")            # stable
    assert viz.variant_color("something new") not in viz.VARIANT_COLORS.values()
    names = ["teacher", "kd", "kd+jacobian", "kd+jacobian (squared)"]
    fig = viz.robustness_figure({n: [{"sigma": 0.0, "acc": 0.5}] for n in names})
    assert [t["line"]["color"] for t in fig.to_dict()["data"]] == [viz.variant_color(n) for n in names]
    mech = [{"config": {"per_class": 10, "seed": 0, "extra": {"variant": v, "teacher": "standard", "part": "grid"}},
             "metrics": {"jacobian_norm": 1.0, "noise_acc": {"0.1": 0.5}, "test_acc": 0.6}}
            for v in ("kd+jacobian (normalised)", "kd+jacobian (squared)")]
    fig = viz.mechanism_figure(mech).to_dict()
    assert {t["name"]: t["marker"]["color"] for t in fig["data"]} == {
        "kd+jacobian (normalised), standard teacher": viz.variant_color("kd+jacobian"),
        "kd+jacobian (squared), standard teacher": viz.variant_color("kd+jacobian (squared)")}


# --------------------------------------------------------------------------- the noise figure: one panel per size


def test_noise_figure_one_panel_per_per_class_and_seed_spread_only():
    recs = [_rec("kd", per_class=pc, seed=s, noise={"0": base + d, "0.1": base - 0.1 + d})
            for pc, base in ((1, 0.2), (500, 0.8)) for s, d in ((0, -0.05), (1, 0.05))]
    fig = viz.noise_figure(recs)
    d = fig.to_dict()
    titles = [a["text"] for a in d["layout"]["annotations"]]
    assert any("1 image per class" in t for t in titles) and any("500 images per class" in t for t in titles)
    kd = [t for t in d["data"] if t["name"] == "kd"]
    assert len(kd) == 2                                                   # one line per per_class, not one pooled
    assert sorted(t["y"][0] for t in kd) == pytest.approx([20.0, 80.0])
    for t in kd:                                                          # the spread of two seeds, not of sizes
        assert list(t["error_y"]["array"]) == pytest.approx([100 * 0.1 / 2 ** 0.5] * 2)
    assert sum(t["showlegend"] is not False for t in kd) == 1             # one legend entry per variant
    assert "std over seeds" in d["layout"]["title"]["text"]
    one = viz.noise_figure([r for r in recs if r["config"]["per_class"] == 1]).to_dict()
    assert len([t for t in one["data"] if t["name"] == "kd"]) == 1


def test_demo_verdict_noise_line_gives_the_spread_over_seeds():
    from jkt_lab.report import verdict
    recs = [_rec(m, seed=s, acc=a, noise={"0.1": a - 0.1 + 0.02 * s}) for m, a in (("kd", 0.5), ("kd+jacobian", 0.6))
            for s in (0, 1, 2)]
    line = next(x for x in verdict(recs) if x.startswith("Under Gaussian input noise"))
    assert "mean ± std over seeds" in line and "kd+jacobian 52.0 ± 2.0%" in line and "kd 42.0 ± 2.0%" in line
    one = next(x for x in verdict([r for r in recs if r["config"]["seed"] == 0]) if x.startswith("Under"))
    assert "±" not in one and "kd 40.0%" in one                        # one seed: no spread to give


# --------------------------------------------------------------------------- notebook 04: the shapes view


def _robust(teacher, variant, part, per_class=20, seed=0, norm=1.0):
    return {"key": f"{teacher}{variant}{part}{per_class}{seed}",
            "config": {"dataset": "shapes", "per_class": per_class, "seed": seed, "method": "kd",
                       "extra": {"experiment": "robustness", "part": part, "teacher": teacher, "variant": variant}},
            "metrics": {"test_acc": 0.8, "noise_acc": {"0": 0.8, "0.1": 0.5}, "jacobian_norm": norm,
                        "teacher_jacobian_norm": 2.0, "saliency_cosine": 0.5}}


def _shapes_view():
    recs = [_robust("standard", "teacher", "teacher", None), _robust("noise-trained", "teacher", "teacher", None)]
    recs += [_robust(t, v, "grid", seed=s) for t in ("standard", "noise-trained") for v in ("kd", "noise")
             for s in (0, 1)]
    # the equivalence runs: students of another experiment, not teachers and not the grid
    recs += [_robust("standard", v, "equivalence", seed=s) for v in ("noise (squared)", "activations+jacobian (squared)")
             for s in (0, 1, 2)]
    return recs


def test_mechanism_figure_draws_the_grid_and_the_teachers_only():
    fig = viz.mechanism_figure(_shapes_view()).to_dict()
    drawn = {t["name"]: len(t["x"]) for t in fig["data"]}
    assert not any("squared" in n for n in drawn), drawn                   # no unexplained equivalence points
    assert sum(drawn.values()) == 8 + 2
    teachers = [t for t in fig["data"] if t["name"].endswith("teacher") and "," not in t["name"]]
    students = [t for t in fig["data"] if "," in t["name"]]
    assert len(teachers) == 2
    assert max(t["legendrank"] for t in teachers) < min(t["legendrank"] for t in students)   # teachers first
    legend = fig["layout"]["legend"]
    assert legend["orientation"] == "h" and legend["y"] < 0                # below the plot: nothing scrolls away


def test_robustness_panel_counts_grid_students_and_teachers(tmp_path, monkeypatch):
    from jkt_lab.results import ResultStore as Store
    store = Store(tmp_path / "results" / "robustness-shapes" / "results.jsonl")
    for r in _shapes_view():
        store.append(r)
    monkeypatch.setattr(nbtools, "_REPO_ROOT", tmp_path)
    panel = widgets.robustness_experiment_panel()
    panel.run_button.click()
    assert panel.error is None, panel.error
    assert "8 students and 2 teachers" in panel.status.value, panel.status.value


def test_panel_time_left_says_when_steps_are_far_slower_than_the_committed_runs(store, monkeypatch):
    import time as time_mod

    import jkt_lab.experiments as experiments
    base = nbtools.course_config(quick=False, dataset="cifar10", method="ce")    # committed: about 0.02 s a step
    clock = [0.0]
    monkeypatch.setattr(time_mod, "perf_counter", lambda: clock[0])
    seen = []

    def fake_run(config, store=None, device=None, progress=False, callback=None):
        for step in (50, 100, 150):
            clock[0] += 50 * step_s[0]                                        # 50 steps at step_s each
            callback({"step": step, "epoch": 1})
            seen.append(panel.status.value)
        return {"config": config.to_dict(), "metrics": {"test_acc": 0.3}, "history": []}
    monkeypatch.setattr(experiments, "run", fake_run)
    panel = widgets.distillation_panel(store=store, base=base.replace(steps=150))
    panel.controls["device"].value = "cpu"
    step_s = [0.02]
    panel.train(panel.configs(), store, panel.progress, "cpu")
    assert "left" in seen[-1] and "slower" not in seen[-1]
    step_s[0] = 1.0                                                           # 50 times the committed step time
    seen.clear()
    panel.train(panel.configs(), store, panel.progress, "cpu")
    assert "slower than the committed runs" in seen[-1] and "OMP_NUM_THREADS" in seen[-1], seen[-1]
    assert "slower" not in seen[0]                                            # not from the first row alone


# --------------------------------------------------------------------------- reports: plotly.js beside them, headings, decimals


def _doc_with_figure(title="T"):
    from jkt_lab.report import Document
    return Document(title).heading("h").figure(viz.robustness_figure({"kd": [{"sigma": 0.0, "acc": 0.5}]}))


def test_report_links_one_shared_plotlyjs_copy(tmp_path):
    from plotly.offline import get_plotlyjs

    from jkt_lab.report import check_plotlyjs
    out = tmp_path / "results" / "one"
    paths = _doc_with_figure().write(out, plotlyjs="../plotly.min.js")
    page = paths["html"].read_text()
    assert '<script src="../plotly.min.js"' in page and "cdn.plot.ly" not in page
    assert len(page) < 100_000                                            # not embedded: a small page
    shared = tmp_path / "results" / "plotly.min.js"
    assert shared.read_text() == get_plotlyjs()                           # the installed plotly's own copy
    shared.write_text("// kept")                                          # one copy: never rewritten
    _doc_with_figure().write(tmp_path / "results" / "two", plotlyjs="cdn")   # cdn, with the shared copy beside
    two = (tmp_path / "results" / "two" / "report.html").read_text()
    assert '<script src="../plotly.min.js"' in two and "cdn.plot.ly" not in two and shared.read_text() == "// kept"
    lone = _doc_with_figure().write(tmp_path / "elsewhere", plotlyjs="cdn")["html"].read_text()
    assert "cdn.plot.ly" in lone                                          # nothing beside it: the CDN, as before
    for bad in ("http://x/plotly.js", "/abs/plotly.js", "online", "x.css"):
        with pytest.raises(ValueError, match="plotlyjs"):
            check_plotlyjs(bad)


def test_committed_reports_link_the_shared_copy():
    from pathlib import Path
    results = Path(__file__).resolve().parents[1] / "results"
    shared = results / "plotly.min.js"
    assert shared.is_file() and 3_000_000 < shared.stat().st_size < 6_000_000   # one copy, within the repo budget
    pages = sorted(results.glob("*/report.html"))
    assert len(pages) >= 3
    for page in pages:
        text = page.read_text()
        assert '<script src="../plotly.min.js"' in text, page
        assert "cdn.plot.ly" not in text and len(text) < 1_000_000, page     # neither the CDN nor an embedded copy


def test_robustness_report_does_not_repeat_its_title():
    from jkt_lab import nbtools
    from jkt_lab.report import Document, add_robustness_section
    recs = nbtools.committed_robustness("cifar10")
    doc = Document("Robustness to noisy inputs on cifar10")
    assert add_robustness_section(doc, recs)
    md = doc.markdown()
    assert md.count("Robustness to noisy inputs on cifar10\n") == 1          # the page title, once
    assert "## Test accuracy (%) under input noise" in md
    other = Document("All results")
    add_robustness_section(other, recs)
    assert "## Robustness to noisy inputs on cifar10" in other.markdown()   # a section of a larger report: headed


def test_report_tables_have_uniform_decimals():
    import re

    from jkt_lab.report import Document
    doc = Document("T").table([{"a": 0.0123, "b": 12.345}, {"a": 1234.5, "b": 0.5}], floatfmt=".3g")
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", doc.html())
    assert cells == ["0.0123", "12.345", "1234.5000", "0.500"]            # per column: the same decimals
    assert "| 0.0123 | 12.345 |" in doc.markdown() and "|---:|---:|" in doc.markdown()
    assert 'class="num"' in doc.html()                                    # numbers still right-aligned
    fig = viz.noise_figure([_rec("kd", per_class=pc) for pc in (1, 5)])
    md = Document("T").figure(fig).markdown()
    assert "<br>" not in md and "<sup>" not in md and "(mean over seeds" in md


def test_bar_charts_put_the_reference_labels_where_no_bar_covers_them():
    recs = [_rec(v, acc=0.3) for v in ("ce", "kd")]
    for fig in (viz.accuracy_bars(recs, lambda r: r["config"]["method"], chance=0.1, teacher=0.85),
                viz.accuracy_groups_figure(recs, reference={"chance": 0.1, "teacher": 0.85})):
        labels = [a for a in fig.to_dict()["layout"]["annotations"] if a["text"].startswith(("chance", "teacher"))]
        assert len(labels) == 2
        assert all(a["x"] == 1 and a["xanchor"] == "left" and a["xref"].endswith("domain") for a in labels)
        assert fig.layout.margin.r >= 90                                   # room for them right of the plot


def test_fit_summary_names_its_cosine_columns_apart():
    from jkt_lab.config import Config
    from jkt_lab import course
    hist = [{"step": 1, "loss/jacobian": 1.8, "jacobian_cosine/train": 0.3, "jacobian_cosine/val": 0.2},
            {"step": 2, "loss/jacobian": 1.6, "jacobian_cosine/train": 0.4, "jacobian_cosine/val": 0.25}]
    rec = {"config": Config(method="kd+jacobian", n_test=1000).to_dict(), "history": hist,
           "metrics": {"test_acc": 0.3, "train_acc": 0.9, "val_acc": 0.35}}
    row = course.fit_summary([rec])[0]
    cos = [k for k in row if "cosine" in k]
    assert len(cos) == 4
    assert sorted(cos) == sorted(["cosine in the loss, first row", "cosine in the loss, last row",
                                  "cosine measured on train images, last row",
                                  "cosine measured on validation images, last row"])


# --------------------------------------------------------------------------- notebook 03's panel: its dataset's committed results


def test_distillation_panel_shows_the_committed_results_of_its_dataset(store, base):
    panel = widgets.distillation_panel(store=store, base=base)           # shapes
    assert "shapes" in panel.committed_title.value and "results/" in panel.committed_title.value
    shapes_table = panel.committed.value
    assert "<table>" in shapes_table and "kd+jacobian" in shapes_table
    panel.controls["dataset"].value = "cifar10"                            # refreshes on its own
    assert "cifar10" in panel.committed_title.value and "cifar10-cpu" in panel.committed_title.value
    assert panel.committed.value != shapes_table and "kd+jacobian (squared)" in panel.committed.value
    assert "at+jacobian" not in panel.committed.value                     # the distillation part only
    panel.controls["dataset"].value = "digits"
    assert "no committed results on digits" in panel.committed.value


def test_panel_runs_record_enough_history_rows_for_a_curve(store):
    from jkt_lab import course
    from jkt_lab.cost import _history_rows
    for dataset in ("cifar10", "shapes"):
        config = widgets.distillation_panel(store=store, base=nbtools.course_config(quick=False,
                                                                                    dataset=dataset)).config()
        n_train = config.per_class * 10
        assert 10 <= _history_rows(config, n_train) <= 25, (dataset, config.eval_every)
    example = course.panel_example_config(quick=False)                    # prepared: the panel's own setting
    panel = widgets.distillation_panel(store=store, base=nbtools.course_config(quick=False))
    panel.controls["method"].value, panel.controls["per_class"].value = "ce", 5
    assert panel.config() == example


def test_one_image_per_class():
    y = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 3])                          # the test set, sorted by class
    assert nbtools.one_per_class(y, 3).tolist() == [0, 3, 5]
    assert nbtools.one_per_class(y, 10).tolist() == [0, 3, 5, 8]           # as many classes as there are


def test_notebook_tables_have_uniform_decimals_per_column():
    import re
    t = widgets.table([{"norm": 23.178, "cos": 0.0209}, {"norm": 2.18, "cos": 0.194}], floatfmt=".3g")
    assert re.findall(r">([0-9.]+)</td>", t._repr_html_()) == ["23.18", "0.0209", "2.18", "0.1940"]
