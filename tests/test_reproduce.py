"""The reproduce pipeline (quick form, the same grid at toy size) and the report's claims."""
from pathlib import Path

import pytest

from jkt_lab import cli, reproduce as rp
from jkt_lab.report import claims, write_report
from jkt_lab.results import ResultStore
from shipped_teachers import remake_commands


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("JKT_LAB_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("JKT_LAB_CACHE", str(tmp_path / "cache"))


def fake(variant, part, per_class, seed, acc, noise=None):
    return {"config": {"method": variant.split(" ")[0], "per_class": per_class, "seed": seed,
                       "extra": {"variant": variant, "part": part}},
            "metrics": {"test_acc": acc, "noise_acc": noise or {}}}


def test_claims_say_what_the_numbers_say():
    recs = []
    for pc in (1, 5, 10, 100):
        for seed, wobble in enumerate((0.0, 0.04, -0.03)):   # seeds differ; each seed's pair moves together
            clean = 0.30 + wobble
            recs.append(fake("kd", "distillation", pc, seed, clean, {"0.1": clean - 0.05, "0.2": clean - 0.10}))
            recs.append(fake("kd+jacobian", "distillation", pc, seed, clean + 0.05 + wobble / 10,
                             {"0.1": clean - 0.08, "0.2": clean - 0.15 + wobble / 10}))
            recs.append(fake("at (scratch)", "transfer", pc, seed, 0.5 + wobble))
            recs.append(fake("at+jacobian (scratch)", "transfer", pc, seed, 0.5 + wobble + (0.001 if seed else -0.002)))
    text = "\n".join(claims(recs))
    assert "(a) **Jacobian matching helps distillation when data is scarce (per_class <= 10, kd+jacobian vs kd, test " \
           "accuracy): supported.**" in text
    assert "kd+jacobian ahead in 3 of 3 per_class settings; mean paired difference +5.0 points" in text
    # ahead clean, behind under noise: robustness is judged by the drop, so the verdict is the opposite
    assert "(d) **Jacobian-matched students are more robust to Gaussian input noise (judged by the drop from clean " \
           "accuracy, paired by seed): opposite.**" in text
    assert "(e) **Matching Jacobians of attention maps helps transfer learning (at+jacobian vs at): not supported.**" in text
    assert "at+jacobian (fine-tune) vs. at (fine-tune): not tested" in text
    assert "(c) **Proposition 1 holds in training" in text and "not tested" in text


def test_grid_has_the_papers_settings():
    base = rp.base_config("cifar100")
    configs = rp.distillation_configs(base, {"kd+jacobian": {"jacobian_weight": 10.0, "val_acc": 0.5}})
    assert len(configs) == len(rp.PER_CLASS) * len(rp.DISTILLATION) * len(rp.SEEDS)
    assert {c.per_class for c in configs} == {1, 5, 10, 50, 100, 500, None}
    assert {c.dataset for c in configs} == {"cifar100"}
    jac = [c for c in configs if c.extra["variant"] == "kd+jacobian"]
    assert {c.jacobian_weight for c in jac} == {10.0} and {c.jacobian_kind for c in jac} == {"normalized"}
    transfer = rp.transfer_configs(base, {})
    assert {c.classes for c in transfer} == {(5, 6, 7, 8, 9)}
    assert {c.teacher_classes for c in transfer} == {(0, 1, 2, 3, 4)}
    assert {c.extra["variant"] for c in transfer} == set(rp.TRANSFER)
    assert all(c.per_class == 10 and c.seed == rp.SELECT_SEED not in rp.SEEDS for c in rp.selection_configs(base))


def test_reproduce_quick_runs_the_same_grid_at_toy_size(tmp_path, capsys):
    store = tmp_path / "r.jsonl"
    args = ["reproduce", "--quick", "--scale", "cpu", "--dataset", "shapes", "--store", str(store),
            "--report", str(tmp_path / "rep"), "--device", "cpu", "--no-progress"]
    assert cli.main(args) == 0
    records = ResultStore(store).records()
    parts = {r["config"]["extra"]["part"] for r in records}
    assert parts == {"select", "distillation", "transfer"}
    variants = {r["config"]["extra"]["variant"] for r in records}
    assert set(rp.SCALES["cpu"].variants) | set(rp.TRANSFER) <= variants
    assert {r["config"]["seed"] for r in records if r["config"]["extra"]["part"] != "select"} == set(rp.SEEDS)
    report = (tmp_path / "rep" / "REPORT.md").read_text()
    assert "## Claims of the paper" in report and "## Hyper-parameters chosen on the validation split" in report
    assert "Wall time of this invocation by part" in report and "Training wall time recorded in the runs" in report
    n = len(records)
    assert cli.main(args) == 0  # resumable: a second call runs nothing new
    assert len(ResultStore(store)) == n
    assert "already done" in capsys.readouterr().out
    # --estimate measures the part's cost here and counts what is left (nothing: all done)
    assert cli.main(args[:-1] + ["--parts", "select", "--estimate"]) == 0
    out = capsys.readouterr().out
    n_select = sum(r["config"]["extra"]["part"] == "select" for r in records)
    assert f"select: {n_select} runs" in out and "0 to go: 0 min" in out and "to go: 0 min of CPU time" in out
    assert len(ResultStore(store)) == n                    # nothing was run


def test_report_refuses_empty(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        write_report([], tmp_path)
    with pytest.raises(FileNotFoundError):
        write_report(tmp_path / "missing.jsonl", tmp_path)


def test_cpu_scale_asks_for_the_shipped_teachers():
    made = remake_commands()
    assert set(made) == {"shapes", "cifar10", "cifar10-noise", "cifar10-source"}
    base = rp.base_config("cifar10", "cpu")
    assert base.teacher_config() == made["cifar10"].teacher_config()
    assert rp._transfer_base(base, "cpu").teacher_config() == made["cifar10-source"].teacher_config()
    assert made["cifar10-noise"].teacher_config().train_sigma == 0.1


def test_cpu_scale_grid():
    base = rp.base_config("cifar10", "cpu")
    configs = rp.distillation_configs(base, {}, scale="cpu")
    scale = rp.SCALES["cpu"]
    assert {c.per_class for c in configs} == {1, 5, 10, 50, 100, 500}
    assert {c.extra["variant"] for c in configs} == {"ce", "kd", "kd+jacobian", "kd+jacobian (squared)", "noise",
                                                     *rp.CONTROLS}
    assert len(configs) == len(scale.per_class) * len(scale.variants) * len(rp.SEEDS)
    assert len({(c.steps, c.student, c.student_width, c.batch_size) for c in configs}) == 1  # same budget for all
    assert {c.extra["variant"] for c in rp.selection_configs(base, scale="cpu")} == \
        {"kd", "kd+jacobian", "kd+jacobian (squared)", "noise", "at", *rp.CONTROLS}
    transfer = rp.transfer_configs(base, {}, scale="cpu")
    assert {c.teacher_width for c in transfer} == {24} and {c.per_class for c in transfer} == {5, 50}
    assert {c.eval_every for c in configs + transfer} == {100}   # few history rows: they cost more than steps
    with pytest.raises(ValueError, match="scale must be one of gpu, cpu"):
        rp.base_config("cifar10", "tpu")


COMMITTED_CIFAR10 = Path(__file__).resolve().parents[1] / "results" / "cifar10-cpu"


def test_committed_cifar10_cpu_results_say_what_the_prose_says():
    """The committed CPU-scale records (``jkt-lab reproduce --dataset cifar10 --scale cpu``) are
    the settings of the cpu scale, and the README's tables and claims are computed from them."""
    from jkt_lab.report import accuracy_table
    records = ResultStore(COMMITTED_CIFAR10 / "results.jsonl").records()
    base = rp.base_config("cifar10", "cpu").to_dict()
    assert records and {r["device"].split(":")[0] for r in records} <= {"cpu", "cuda"}
    assert all(r["config"][k] == base[k] for r in records for k in ("teacher", "student", "student_width", "batch_size"))
    assert {r["config"]["seed"] for r in records if r["config"]["extra"]["part"] == "select"} == {rp.SELECT_SEED}
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for part in ("distillation", "transfer"):
        runs = [r for r in records if r["config"]["extra"]["part"] == part]
        for row in accuracy_table(runs):                                 # the README's tables are these tables
            assert "| " + " | ".join(row.values()) + " |" in readme, row
    for line in claims(records):                                         # and its claims are the report's
        assert "- " + line in readme
    distillation = [r for r in records if r["config"]["extra"]["part"] == "distillation"]
    rows = {row["method"]: row for row in accuracy_table(distillation)}
    notebook = (Path(__file__).resolve().parents[1] / "notebooks" / "03_distillation.ipynb").read_text()
    assert f"`kd+jacobian` at {rows['kd+jacobian']['10']}% against `kd`'s {rows['kd']['10']}%" in notebook
