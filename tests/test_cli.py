"""The command line's options (grouped, each subcommand only what it uses, every Config field
reachable) and its output: progress bars on a terminal, one line per run in a log or CI, and
``--no-progress`` silencing every bar, decoding bars included."""
from __future__ import annotations

import dataclasses
import io
import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import torch

from jkt_lab import cli, progress
from jkt_lab.config import Config

REPO = Path(__file__).resolve().parents[1]
TINY = ["--dataset", "shapes", "--n-train", "300", "--n-test", "100", "--teacher", "tiny", "--teacher-width", "8",
        "--teacher-epochs", "1", "--student", "tiny", "--student-width", "4", "--per-class", "5", "--steps", "6",
        "--batch-size", "32"]


def subparser(name: str):
    parser = cli.build_parser()
    action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return action.choices[name]


def options(name: str) -> set[str]:
    return {a.dest for a in subparser(name)._actions}


def groups(name: str) -> dict[str, set[str]]:
    return {g.title: {a.dest for a in g._group_actions} for g in subparser(name)._action_groups}


CONFIG_FIELDS = {f.name for f in dataclasses.fields(Config)} - {"extra"}


def test_every_config_field_is_an_option_of_distill():
    assert CONFIG_FIELDS <= options("distill"), CONFIG_FIELDS - options("distill")
    titles = list(groups("distill"))
    for g in ("data", "teacher", "student", "objective", "optimisation"):
        assert any(t.startswith(g) for t in titles), (g, titles)


def test_a_field_in_no_list_lands_in_other(monkeypatch):
    monkeypatch.setattr(cli, "OPTION_GROUPS", {k: v for k, v in cli.OPTION_GROUPS.items() if k != "objective"})
    got = cli.option_groups()
    assert "jacobian_weight" in got["other"] and "method" in got["other"]
    assert CONFIG_FIELDS <= options("distill")
    assert sum(len(v) for v in got.values()) == len(CONFIG_FIELDS)


def _changed(f: dataclasses.Field):
    """A valid Config whose field ``f`` differs from the default (None when none is found)."""
    default = Config()
    if f.name in ("data_path", "data_fingerprint"):  # your own data: valid only together with a dataset that reads a path
        default = Config(dataset="npz", data_path="a.npz")
        return default.replace(**{f.name: "b.npz" if f.name == "data_path" else "0" * 64})
    current, kind = getattr(default, f.name), cli._field_type(f)
    if typing.get_origin(kind) is tuple:
        tries = [(0, 1)]
    elif kind is bool:
        tries = [not current]
    elif kind in (int, float):
        tries = [kind((current or 0) + 1), (current or 0) + 0.25]
    else:
        tries = ["digits", "vgg4", "step", "finetune", "squared", "label", "kd", "shuffled", "x"]  # one valid per field
    for value in tries:
        try:
            return default.replace(**{f.name: value})
        except (ValueError, TypeError):
            continue
    return None


def test_train_teacher_shows_exactly_what_the_teacher_uses():
    """A field is an option of train-teacher if and only if changing it changes the teacher's config."""
    reads = set()
    for f in dataclasses.fields(Config):
        if f.name == "extra":
            continue
        changed = _changed(f)
        assert changed is not None, f"no valid test value for {f.name}"
        reference = Config(dataset="npz", data_path="a.npz") if f.name in ("data_path", "data_fingerprint") else Config()
        if changed.teacher_config() != reference.teacher_config():
            reads.add(f.name)
    shown = options("train-teacher") & CONFIG_FIELDS
    assert shown == reads, (sorted(shown - reads), sorted(reads - shown))
    assert {"per_class", "method", "jacobian_weight", "lr", "student"}.isdisjoint(shown)


def test_help_is_grouped_with_the_papers_words(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train-teacher", "--help"])
    text = capsys.readouterr().out
    assert "teacher (trained once" in text and "--teacher-train-sigma" in text and "--jacobian-weight" not in text
    with pytest.raises(SystemExit):
        cli.main(["distill", "--help"])
    text = capsys.readouterr().out
    assert text.index("data (") < text.index("teacher (") < text.index("student (") < text.index("objective (") \
        < text.index("optimisation")
    assert "weight of Jacobian matching (Section 3.2)" in text


def test_config_from_args_reads_the_grouped_options():
    args = cli.build_parser().parse_args(["distill", "--jacobian-weight", "3", "--teacher-classes", "0,1",
                                          "--per-class", "none", "--augment", "false", "--teacher-lr", "0.2"])
    config = cli._config_from_args(args)
    assert (config.jacobian_weight, config.teacher_classes, config.per_class, config.augment, config.teacher_lr) \
        == (3.0, (0, 1), None, False, 0.2)


# ------------------------------------------------------------------------------------ progress
class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def _fit_output(monkeypatch, *, ci: bool = False, enabled: bool = True) -> str:
    from jkt_lab.data import load
    from jkt_lab.models import build_model
    from jkt_lab.train import fit
    monkeypatch.setenv("CI", "true") if ci else monkeypatch.delenv("CI", raising=False)
    err = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", err)
    data = load("shapes", n_train=200, n_test=50)
    model = build_model("tiny", 10, mean=data.mean, std=data.std, width=4, seed=0)
    progress.set_enabled(enabled)
    try:
        fit(model, "ce", data, config=Config(method="ce", steps=4, batch_size=16), device="cpu")
    finally:
        progress.set_enabled(True)
    return err.getvalue()


def test_a_terminal_sees_a_bar_then_one_line(monkeypatch):
    out = _fit_output(monkeypatch)
    assert "\r" in out and "step" in out  # tqdm redraws the bar in place
    assert out.count("ce (seed 0) on shapes: 4 steps in") == 1


def test_ci_gets_one_line_and_no_bar(monkeypatch):
    out = _fit_output(monkeypatch, ci=True)
    assert "\r" not in out and out.count("\n") == 1 and "4 steps in" in out


def test_switched_off_prints_nothing(monkeypatch):
    assert _fit_output(monkeypatch, enabled=False) == ""


def test_no_progress_silences_decoding_bars(monkeypatch):
    from jkt_lab.data import files as data
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setattr(data, "_workers", lambda n: 1)
    for enabled in (True, False):
        err = FakeTerminal()
        monkeypatch.setattr(sys, "stderr", err)
        progress.set_enabled(enabled)
        try:
            assert data._parallel(abs, [(-1,), (-2,)], [1500, 1500], "decoding") == [1, 2]
        finally:
            progress.set_enabled(True)
        assert ("decoding" in err.getvalue()) == enabled


def _cli(args: list[str], tmp_path: Path) -> str:
    """``jkt-lab ARGS`` in a subprocess, stdout and stderr into one pipe (as in a log file)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "JKT_LAB_RUNS": str(tmp_path / "runs"),
           "JKT_LAB_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "2"}
    env.pop("CI", None)
    done = subprocess.run([sys.executable, "-m", "jkt_lab.cli", *args], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=600, check=True)
    return done.stdout.decode()


def test_a_log_gets_one_line_per_run_and_no_bar_refreshes(tmp_path):
    out = _cli(["distill", "--device", "cpu", "--method", "kd", *TINY], tmp_path)
    assert "\r" not in out
    run_lines = [line for line in out.splitlines() if " steps in " in line]
    assert len(run_lines) == 2 and run_lines[0].startswith("teacher tiny on shapes"), out  # teacher, student
    assert run_lines[1].startswith("kd (seed 0) on shapes: 6 steps in"), out
    quiet = _cli(["distill", "--device", "cpu", "--method", "kd", "--seed", "1", "--no-progress", *TINY], tmp_path)
    assert "\r" not in quiet and " steps in " not in quiet and "kd student" in quiet, quiet


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)


def test_a_notebook_bar_is_the_record_and_no_line_is_printed(capsys):
    """In a notebook, tqdm.auto's class is a subclass of tqdm.notebook's defined in tqdm.auto:
    the bar widget stays as the run's record and no end-of-run line is added below it."""
    from tqdm import tqdm as std_tqdm
    from tqdm.notebook import tqdm as notebook_tqdm

    class AutoTqdm(notebook_tqdm):   # as tqdm.auto.tqdm is, in a Jupyter kernel
        pass
    progress.done(AutoTqdm(total=1, disable=True), "run: 1 step")
    assert capsys.readouterr().err == ""
    progress.done(std_tqdm(total=1, disable=True), "run: 1 step")
    assert capsys.readouterr().err == "run: 1 step\n"
