"""The notebooks: valid, committed without outputs, built from library calls only, and run
end to end by nbval in quick mode (a subprocess, so nbval stays out of the library tests).

Also ``jkt_lab.nbtools``, the helpers the notebooks share.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from jkt_lab import nbtools
from jkt_lab.config import Config

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
EXPECTED = ["01_noise_jacobian_equivalence", "02_saliency_jacobians", "03_distillation", "04_robustness",
            "05_transfer_learning"]


def code_cells(path):
    return [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]


def test_the_five_notebooks_exist():
    assert [p.stem for p in NOTEBOOKS] == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_valid_nbformat4(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.nbformat == 4 and nb.metadata.kernelspec.name == "python3"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebooks_have_no_outputs(path):
    """Committed notebooks carry no outputs: strip them with `python -m jkt_lab.nbtools notebooks/*.ipynb`."""
    for cell in code_cells(path):
        assert cell.outputs == [] and cell.execution_count is None, \
            f"{path.name} has outputs: run python -m jkt_lab.nbtools {path.relative_to(ROOT)}"
    assert "widgets" not in nbformat.read(path, as_version=4).metadata


def fill_in(cell) -> bool:
    """A fill-in exercise cell: the one place a notebook defines a function (the learner's)."""
    return "exercise" in cell.metadata


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_structure(path):
    nb = nbformat.read(path, as_version=4)
    assert nb.cells[0].cell_type == "markdown" and "Learning goals" in nb.cells[0].source
    assert "**Time.** Full mode:" in nb.cells[0].source                 # expected time, stated at the top
    code = "\n".join(c.source for c in code_cells(path))
    assert "quick_mode()" in code                              # the same cells, sized by JKT_LAB_QUICK
    assert code.count('check("') >= 2                          # exercises with the library's checker
    assert "widgets." in code and "_panel(" in code            # one ipywidgets panel
    assert "assert " in code                                   # facts that must hold, checked by nbval
    assert "print(to_markdown(" not in code                     # tables render as HTML (widgets.table)
    for cell in code_cells(path):                              # no logic that lives only in the notebook
        for line in cell.source.splitlines():
            if not fill_in(cell):
                assert not line.lstrip().startswith(("def ", "class ")), f"{path.name}: {line}"
            assert not line.lstrip().startswith("import os"), f"{path.name}: {line}"
            assert "lambda" not in line, f"{path.name}: {line}"
        assert len(cell.source.splitlines()) <= 15, f"{path.name}: keep code cells short"
    markdown = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert "$" in markdown                                      # LaTeX reasoning
    assert "## Going further" in markdown                       # open-ended exercises at the end
    assert "**Time.** Full mode: about" in markdown             # the expected time, stated at the top ...
    assert not re.search(r"\bN (minutes|seconds)\b", markdown)  # ... as a measured number, not a placeholder


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_fill_in_cells_are_blank_and_checked_next(path):
    """A fill-in cell defines one function whose body is only 'raise NotImplementedError("write me")'
    (after its docstring), and the next code cell checks it."""
    import ast
    cells = code_cells(path)
    for i, cell in enumerate(cells):
        if not fill_in(cell):
            continue
        tree = ast.parse(cell.source)
        assert len(tree.body) == 1 and isinstance(tree.body[0], ast.FunctionDef), path.name
        body = tree.body[0].body
        assert isinstance(body[-1], ast.Raise) and len(body) <= 2, f"{path.name}: a fill-in cell starts blank"
        assert 'raise NotImplementedError("write me")' in cell.source
        assert f'check("{cell.metadata["exercise"]}", {tree.body[0].name})' in cells[i + 1].source


# An exercise, and the first thing in its notebook that shows its answer: the question (and the
# learner's prediction) must come before it.
ANSWERS_SHOWN_BY = {
    "01.sigma4": "theory.sigma_sweep(teacher, student, x, SIGMAS",
    "01.relu_curvature": "sweep_relu = theory.sigma_sweep",
    "01.normalized_max": "normalized_loss(j, j_t)",
    "01.scale": "normalized_loss(j, j_t)",
    "02.top1_vs_label": "by_output = ",
    "02.chance": "saliency.mask_overlap(",
    "02.weak_test": "saliency.overlap_baselines(",
    "03.terms": "underbrace{\\mathrm{CE}",
    "04.first_order": "variance $\\sigma^2",
    "04.norm_unmoved": "rb.mechanism_table(records",
    "04.scale_invariance": "rb.scale_invariance_table(",
    "05.lwf_data": "on the *new* images",
    "05.jacobian_rows": "viz.attention_figure(",
}


@pytest.mark.parametrize("exercise_id", sorted(ANSWERS_SHOWN_BY))
def test_predict_then_run(exercise_id):
    path = next(p for p in NOTEBOOKS if p.name.startswith(exercise_id[:2]))
    cells = [c.source for c in nbformat.read(path, as_version=4).cells]
    asked = next(i for i, c in enumerate(cells) if f'check("{exercise_id}"' in c)
    shown = next(i for i, c in enumerate(cells) if ANSWERS_SHOWN_BY[exercise_id] in c)
    assert asked < shown, f"{exercise_id}: asked in cell {asked}, answered in cell {shown}"


def test_every_exercise_is_asked_in_its_notebook():
    from jkt_lab.exercises import EXERCISES
    for eid in EXERCISES:
        path = next(p for p in NOTEBOOKS if p.name.startswith(eid[:2]))
        assert any(f'check("{eid}"' in c.source for c in code_cells(path)), eid


def test_no_torch_jit_warning_from_the_library():
    """The torch.func call of theory warns about torch.jit.script on first use; the library hides it."""
    code = ("from jkt_lab import nbtools, theory; t, s, x = nbtools.toy_pair('tanh', n_examples=2); "
            "theory.sigma_sweep(t, s, x, [0.01, 0.1], n_samples=32)")
    run = subprocess.run([sys.executable, "-W", "error::FutureWarning", "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]


def test_strip_outputs_and_check(tmp_path, capsys):
    path = tmp_path / "n.ipynb"
    shutil.copy(NOTEBOOKS[0], path)
    nb = nbformat.read(path, as_version=4)
    first = next(c for c in nb.cells if c.cell_type == "code")
    first.outputs = [nbformat.v4.new_output("stream", name="stdout", text="hello")]
    first.execution_count = 3
    nb.metadata["widgets"] = {"state": {}}
    nbformat.write(nb, path)
    assert nbtools.notebook_outputs(path) == [[c.cell_type for c in nb.cells].index("code")]
    assert nbtools.main(["--check", str(path)]) == 1
    assert nbtools.main([str(path)]) == 0
    assert "stripped" in capsys.readouterr().out
    assert nbtools.notebook_outputs(path) == [] and nbtools.main(["--check", str(path)]) == 0
    assert "widgets" not in json.loads(path.read_text())["metadata"]
    assert nbtools.strip_outputs(path) is False                # idempotent: nothing left to change
    assert path.read_text() == NOTEBOOKS[0].read_text()       # exactly the committed form


def test_strip_outputs_command_line(tmp_path):
    path = tmp_path / "n.ipynb"
    shutil.copy(NOTEBOOKS[0], path)
    run = subprocess.run([sys.executable, "-m", "jkt_lab.nbtools", "--check", str(path)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_course_configs(monkeypatch):
    monkeypatch.delenv("JKT_LAB_QUICK", raising=False)
    monkeypatch.setenv("JKT_LAB_COURSE_DATASET", "shapes")
    full = nbtools.course_config()
    assert isinstance(full, Config) and full.dataset == "shapes" and full.steps == 300 and full.per_class == 10
    quick = nbtools.course_config(quick=True)
    assert quick.steps < full.steps and quick.n_train < full.n_train and quick.method == full.method
    monkeypatch.setenv("JKT_LAB_QUICK", "1")
    assert nbtools.course_config() == quick
    assert nbtools.course_config(method="ce").method == "ce"
    t = nbtools.transfer_config()
    assert t.teacher_classes == (0, 1, 2, 3, 4) and t.classes == (5, 6, 7, 8, 9)
    assert nbtools.course_store().name == "course_results_quick.jsonl"


def test_course_dataset_is_cifar10_where_it_is_found(monkeypatch):
    import jkt_lab.data as data_mod
    monkeypatch.delenv("JKT_LAB_QUICK", raising=False)
    monkeypatch.delenv("JKT_LAB_COURSE_DATASET", raising=False)
    monkeypatch.setattr(data_mod, "cifar10_available", lambda root=None: Path("/somewhere/cifar10-jpeg.zip"))
    assert nbtools.course_dataset() == "cifar10" and nbtools.course_dataset(quick=True) == "shapes"
    assert "CIFAR-10 is on this machine" in nbtools.course_summary(nbtools.course_config())
    monkeypatch.setattr(data_mod, "cifar10_available", lambda root=None: None)
    assert nbtools.course_dataset() == "shapes"
    assert "CIFAR-10 is not on this machine" in nbtools.course_summary(nbtools.course_config())
    monkeypatch.setenv("JKT_LAB_COURSE_DATASET", "cifar10")                 # asked for: whatever is found
    assert nbtools.course_dataset() == "cifar10" == nbtools.course_dataset(quick=True)
    assert "set by JKT_LAB_COURSE_DATASET" in nbtools.course_summary(nbtools.course_config())
    monkeypatch.setenv("JKT_LAB_COURSE_DATASET", "mnist")
    with pytest.raises(ValueError, match="JKT_LAB_COURSE_DATASET must be one of shapes, cifar10, got 'mnist'"):
        nbtools.course_config()
    with pytest.raises(ValueError, match="dataset must be one of shapes, cifar10, got 'digits'"):
        nbtools.course_config(dataset="digits")


def test_cifar10_course_uses_the_shipped_teachers(monkeypatch):
    """On CIFAR-10 the course trains students only: its teachers are the shipped ones, and its
    settings are those of `jkt-lab reproduce --scale cpu` (the committed results)."""
    from jkt_lab.pretrained import shipped_for
    from jkt_lab.reproduce import base_config
    monkeypatch.delenv("JKT_LAB_QUICK", raising=False)
    config, tconfig = nbtools.course_config(dataset="cifar10"), nbtools.transfer_config(dataset="cifar10")
    assert shipped_for(config.teacher_config()) == "cifar10"
    assert shipped_for(tconfig.teacher_config()) == "cifar10-source"
    assert config.replace(per_class=5, eval_every=100, jacobian_weight=1.0) == base_config("cifar10", "cpu")
    assert config.jacobian_weight == nbtools.CIFAR10_COURSE["jacobian_weight"]
    assert (tconfig.teacher_classes, tconfig.classes) == ((0, 1, 2, 3, 4), (5, 6, 7, 8, 9))
    assert tconfig.steps == nbtools.CIFAR10_TRANSFER["steps"] < config.steps
    assert "the shipped teacher 'cifar10-source'" in nbtools.course_summary(tconfig)
    assert nbtools.course_config(quick=True, dataset="cifar10").steps < config.steps    # quick: toy size


def test_course_weights_are_the_ones_chosen_on_validation():
    """The course's CIFAR-10 weights are the validation choices of the committed reproduce run: the
    kd+jacobian weight at the course's 300 steps, and the attention weights of the transfer part."""
    from jkt_lab.results import ResultStore
    records = ResultStore(nbtools._REPO_ROOT / "results" / "cifar10-cpu" / "results.jsonl").records()
    select = [r for r in records if r["config"]["extra"]["part"] == "select"]

    def best(variant, **where):
        runs = [r for r in select if r["config"]["extra"]["variant"] == variant
                and all(r["config"][k] == v for k, v in where.items())]
        assert runs, variant
        return max(runs, key=lambda r: r["metrics"]["val_acc"])["config"]
    assert best("kd+jacobian", steps=300)["jacobian_weight"] == nbtools.CIFAR10_COURSE["jacobian_weight"]
    assert best("at")["attention_weight"] == nbtools.CIFAR10_TRANSFER["attention_weight"]
    assert best("at+jacobian")["jacobian_weight"] == nbtools.CIFAR10_TRANSFER["jacobian_weight"]


def test_committed_distillation():
    shapes = nbtools.committed_distillation("shapes")
    assert shapes and all(r["config"]["dataset"] == "shapes" for r in shapes)
    cifar10 = nbtools.committed_distillation("cifar10")                  # the reproduce grid's distillation part
    assert cifar10 and all(r["config"]["dataset"] == "cifar10" and r["config"]["extra"]["part"] == "distillation"
                           for r in cifar10)
    with pytest.raises(ValueError, match="dataset must be one of cifar10, shapes, got 'mnist'"):
        nbtools.committed_distillation("mnist")


def test_transfer_labels():
    for label, changes in nbtools.TRANSFER_RUNS.items():
        config = nbtools.transfer_config(quick=True, **changes)
        assert nbtools.transfer_label({"config": config.to_dict()}) == label
    assert nbtools.transfer_label({"method": "kd", "init": "scratch"}) == "kd (scratch)"


def test_committed_results(tmp_path):
    assert nbtools.committed_results(tmp_path / "absent") == []
    assert nbtools.committed_results(tmp_path) == []
    (tmp_path / "a.jsonl").write_text(json.dumps({"config": {"method": "kd"}, "metrics": {"test_acc": 0.5}}) + "\n")
    assert [r["config"]["method"] for r in nbtools.committed_results(tmp_path)] == ["kd"]


def test_online_transfer_explains_what_is_missing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("JKT_LAB_DATA", str(tmp_path))
    monkeypatch.setenv("JKT_LAB_CACHE", str(tmp_path / "cache"))
    assert nbtools.run_online_transfer(tmp_path / "store.jsonl") is None
    out = capsys.readouterr().out
    assert "not run here" in out and "indoor67" in out.lower()
    assert not (tmp_path / "store.jsonl").exists()


@pytest.fixture(scope="module")
def quick_dirs(tmp_path_factory):
    """One runs/cache folder for the five notebooks, so later notebooks reuse earlier runs (as a user's do)."""
    return tmp_path_factory.mktemp("nbval")


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_under_nbval_in_quick_mode(path, quick_dirs):
    """Every cell of the notebook in quick mode: `pytest --nbval-lax` in a subprocess.

    Budget on 2 CPU cores: each notebook under 2 minutes, the five under 8 minutes."""
    env = {**os.environ, "JKT_LAB_QUICK": "1", "JKT_LAB_RUNS": str(quick_dirs / "runs"),
           "JKT_LAB_CACHE": str(quick_dirs / "cache"), "PYTHONWARNINGS": "ignore"}
    env.pop("JKT_LAB_DATA", None)
    cmd = [sys.executable, "-m", "pytest", "--nbval-lax", "--nbval-current-env", "--nbval-cell-timeout=600",
           "--nbval-sanitize-with", str(ROOT / "notebooks" / "nbval_sanitize.cfg"), "-p", "no:cacheprovider",
           "-q", str(path)]
    t0 = time.perf_counter()
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    elapsed = time.perf_counter() - t0
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    print(f"{path.name}: {elapsed:.0f} s in quick mode")


# --------------------------------------------------------------------------- prepare-course: a plan, one bar


class _FakeBar:
    made: list = []

    def __init__(self, **kw):
        self.kw, self.n, self.postfix, self.closed = kw, kw.get("initial", 0), [], False
        _FakeBar.made.append(self)

    def update(self, k=1):
        self.n += k

    def set_postfix_str(self, text, refresh=True):
        self.postfix.append(text)

    def set_description_str(self, text, refresh=True):
        pass

    def close(self):
        self.closed = True


@pytest.fixture
def fake_training(tmp_path, monkeypatch):
    """prepare() with instant runs: each run 'takes' ``seconds[0]`` of the clock; no teacher trains."""
    import jkt_lab.course as course_mod
    import jkt_lab.experiments as experiments
    from jkt_lab.results import config_hash
    monkeypatch.setenv("JKT_LAB_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("JKT_LAB_COURSE_DATASET", "cifar10")
    monkeypatch.delenv("JKT_LAB_QUICK", raising=False)
    clock, seconds = [0.0], [1.0]
    monkeypatch.setattr(course_mod.time, "perf_counter", lambda: clock[0])

    def run(config, store, **kw):
        clock[0] += seconds[0]
        record = {"key": config_hash(config.to_dict()), "config": config.to_dict(), "metrics": {"test_acc": 0.5}}
        store.append(record)
        return record
    monkeypatch.setattr(experiments, "run", run)
    monkeypatch.setattr(experiments, "get_teacher", lambda *a, **k: (None, {}))
    monkeypatch.setattr(experiments, "load_data", lambda *a, **k: None)
    _FakeBar.made = []
    monkeypatch.setattr(course_mod, "_bar", lambda **kw: _FakeBar(**kw))
    return seconds


def test_prepare_prints_the_plan_and_an_estimate_then_one_bar(fake_training, capsys):
    from jkt_lab import course
    rows = course.prepare()
    out = capsys.readouterr().out
    n = sum(r["runs"] for r in rows)
    first = out.splitlines()[0]
    assert first.startswith(f"prepare-course: {n} runs") and f"{n} to train" in first, out
    estimate = next(line for line in out.splitlines() if line.startswith("estimated time"))
    assert "min" in estimate and "2 idle" in estimate
    assert len(_FakeBar.made) == 1, "one bar over everything, not one per part"
    bar = _FakeBar.made[0]
    assert bar.kw["total"] == n and bar.n == n and bar.closed
    assert any("left" in p for p in bar.postfix)
    assert "slower than the committed runs" not in out                 # 1 s a run: faster than the committed runs


def test_prepare_says_when_runs_are_far_slower_than_the_committed_ones(fake_training, capsys):
    from jkt_lab import course
    fake_training[0] = 600.0                                           # ten minutes a run: a loaded machine
    course.prepare()
    out = capsys.readouterr().out
    assert "slower than the committed runs" in out and "OMP_NUM_THREADS" in out and "one job per machine" in out
    assert out.count("OMP_NUM_THREADS") == 1                           # said once, not after every run
    assert any("slower" in p for p in _FakeBar.made[0].postfix)       # and on the time-left line


def test_slow_advice_and_reference_time():
    from jkt_lab import progress
    assert progress.slow_advice(2.0, 1.0) == ""
    text = progress.slow_advice(10.0, 1.0)
    assert text.startswith("10x slower") and "OMP_NUM_THREADS=1" in text and "one job per machine" in text
    assert progress.duration(30) == "about 30 s" and progress.duration(600) == "about 10.0 min"
    ref = nbtools.reference_time(nbtools.course_config(quick=False, dataset="cifar10", method="kd"))
    assert ref["n"] >= 3 and 0 < ref["step_s"] < ref["run_s"]             # the committed CIFAR-10 grid's kd runs
    assert nbtools.reference_time(nbtools.course_config(quick=False, dataset="shapes", student_width=3)) is None


def test_course_summary_says_where_cifar10_comes_from_once(monkeypatch, tmp_path):
    """The JPEG copy: said once in plain words in the course summary, and the library's warning
    about it (a raw UserWarning with paths, in every cell that loads the data) silenced."""
    import warnings

    import jkt_lab.data as data_mod
    from jkt_lab.data.cifar import JpegFallbackWarning
    zp = tmp_path / "cifar10-jpeg.zip"
    zp.write_bytes(b"")
    monkeypatch.setattr(data_mod, "cifar10_available", lambda root=None: zp)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = nbtools.course_summary(nbtools.course_config(quick=False, dataset="cifar10"))
        warnings.warn("cifar10: torchvision files not found; using the JPEG copy", JpegFallbackWarning)
        warnings.warn("another warning", UserWarning)                       # only that one is silenced
    assert [str(w.message) for w in caught] == ["another warning"]
    line = next(x for x in summary.splitlines() if x.startswith("data:"))
    assert "cifar10-jpeg.zip, a JPEG copy" in line and str(tmp_path) not in line   # no machine paths
    assert issubclass(JpegFallbackWarning, UserWarning)                    # the library still warns elsewhere
    monkeypatch.setattr(data_mod, "cifar10_available", lambda root=None: tmp_path)
    assert "torchvision's files" in nbtools.course_summary(nbtools.course_config(quick=False, dataset="cifar10"))
    assert nbtools.data_source("shapes") is None


# --------------------------------------------------------------------------- executed notebooks: clean outputs

#: Text that must never reach a learner's output: warnings, tracebacks, errors.
DIRTY = re.compile(r"Traceback \(most recent call last\)|\b\w*Warning\b:|^\s*warnings\.warn\(|\bError\b:", re.M)


def dirty_outputs(nb) -> list[str]:
    """Every output of an executed notebook that is stderr, an error, or text with a warning or a
    traceback in it, as ``"cell N: ..."`` lines."""
    problems = []
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
            if out.output_type == "error":
                problems.append(f"cell {i}: error {out.ename}: {out.evalue}")
            elif out.output_type == "stream" and out.name == "stderr" and out.text.strip():
                problems.append(f"cell {i}: stderr: {out.text.strip()[:300]}")
            else:
                text = out.get("text", "") if out.output_type == "stream" else \
                    "".join(out.get("data", {}).get("text/plain", ""))
                if DIRTY.search(text):
                    problems.append(f"cell {i}: {text.strip()[:300]}")
    return problems


def test_dirty_outputs_are_found():
    ok = nbformat.v4.new_code_cell("1")
    ok.outputs = [nbformat.v4.new_output("stream", name="stdout", text="full mode\ndataset cifar10\n")]
    bad = [nbformat.v4.new_output("stream", name="stderr", text="/x.py:12: UserWarning: using the JPEG copy\n"),
           nbformat.v4.new_output("stream", name="stdout", text="/x/cifar.py:190: UserWarning: cifar10: ...\n"),
           nbformat.v4.new_output("error", ename="ValueError", evalue="no", traceback=[])]
    nb = nbformat.v4.new_notebook(cells=[ok] + [nbformat.v4.new_code_cell("2", outputs=[o]) for o in bad])
    assert [p.split(":")[0] for p in dirty_outputs(nb)] == ["cell 1", "cell 2", "cell 3"]


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_executed_notebook_outputs_are_clean(path, quick_dirs, monkeypatch):
    """Executed as a learner runs it (quick mode, warnings not filtered), no output of the
    notebook is stderr, a warning, a traceback or an error."""
    from nbclient import NotebookClient
    for key, value in {"JKT_LAB_QUICK": "1", "JKT_LAB_RUNS": str(quick_dirs / "runs"),
                       "JKT_LAB_CACHE": str(quick_dirs / "cache"), "OMP_NUM_THREADS": "1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("PYTHONWARNINGS", raising=False)
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}},
                   allow_errors=True).execute()
    assert not dirty_outputs(nb), "\n".join(dirty_outputs(nb))


def test_notebook_02_saliency_grid_takes_one_image_per_class():
    """The test set is sorted by class: its first six images are six airplanes."""
    path = next(p for p in NOTEBOOKS if p.name.startswith("02"))
    cell = next(c.source for c in code_cells(path) if "viz.saliency_grid(" in c.source)
    assert "nbtools.one_per_class(data.y_test" in cell and "data.x_test[:" not in cell


def test_course_cifar10_numbers_in_the_notebooks_are_the_committed_course_runs(monkeypatch):
    """Notebooks 03 and 04 quote the course's own CIFAR-10 students (results/course-cifar10/): the
    runs are the course's setting, and every quoted mean, spread and paired interval is theirs."""
    from jkt_lab import course
    from jkt_lab.report import noise_table
    from jkt_lab.results import ResultStore
    monkeypatch.delenv("JKT_LAB_QUICK", raising=False)
    records = ResultStore(nbtools._REPO_ROOT / "results" / "course-cifar10" / "results.jsonl").records()
    expected = {r["config"]["method"] for r in records}
    assert expected == set(nbtools.DISTILLATION_METHODS) and len(records) == 3 * len(expected)
    for r in records:
        assert r["config"] == nbtools.course_config(dataset="cifar10", method=r["config"]["method"],
                                                    seed=r["config"]["seed"]).to_dict()
    nb03 = "".join("".join(c["source"]) for c in json.loads((ROOT / "notebooks" / "03_distillation.ipynb").read_text())["cells"])
    kdj, kd = course.compare(records, "kd+jacobian", "kd"), course.compare(records, "kd", "ce")
    for c, words in ((kdj, "`kd+jacobian` {b:.1f} ± {sb:.1f}% against `kd`, {d:+.1f} points, interval [{lo:+.1f}, {hi:+.1f}]"),
                     (kd, "`kd` {b:.1f} ± {sb:.1f}% against `ce` {w:.1f} ± {sw:.1f}%: paired difference {d:+.1f} points, "
                          "95% interval [{lo:+.1f}, {hi:+.1f}]")):
        quoted = words.format(b=c["mean"][c["better"]], sb=c["std"][c["better"]], w=c["mean"][c["worse"]],
                              sw=c["std"][c["worse"]], d=c["difference"], lo=c["interval"][0], hi=c["interval"][1])
        assert quoted in nb03, quoted
    cos = course.compare(records, "kd+jacobian", "kd", metric="metrics.saliency_cosine", percent=False)
    nb02 = (ROOT / "notebooks" / "02_saliency_jacobians.ipynb").read_text()
    quoted = (f"{cos['mean']['kd+jacobian']:.3f} ± {cos['std']['kd+jacobian']:.3f} against {cos['mean']['kd']:.3f} ± "
              f"{cos['std']['kd']:.3f}: paired difference {cos['difference']:+.3f}, 95% interval "
              f"[{cos['interval'][0]:+.3f}, {cos['interval'][1]:+.3f}]")
    assert quoted in nb02, quoted
    noise = {row["method"]: row for row in noise_table(records)}
    nb04 = "".join("".join(c["source"]) for c in json.loads((ROOT / "notebooks" / "04_robustness.ipynb").read_text())["cells"])
    quoted = (f"it falls from {noise['kd+jacobian']['sigma=0']}% to {noise['kd+jacobian']['sigma=0.1']}%, `kd` from "
              f"{noise['kd']['sigma=0']}% to {noise['kd']['sigma=0.1']}%")
    assert quoted in nb04, quoted
