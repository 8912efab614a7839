"""The notebooks' exercises: the checker, and each expected answer against the library itself."""
import pytest
import torch

from jkt_lab import exercises as ex
from jkt_lab import losses
from jkt_lab.config import Config
from jkt_lab.exercises import EXERCISES, Feedback, check
from jkt_lab.methods import make_method
from jkt_lab.models import build_model


def test_every_notebook_has_exercises():
    for nb in ("01", "02", "03", "04", "05"):
        assert len(ex.exercises(nb)) >= 2, nb
    assert ex.exercises(1) == ex.exercises("01")
    assert ex.exercises() == list(EXERCISES)


QUESTIONS = [k for k, e in EXERCISES.items() if e.kind != "code"]


@pytest.mark.parametrize("exercise_id", QUESTIONS)
def test_expected_answer_is_accepted(exercise_id):
    fb = check(exercise_id, EXERCISES[exercise_id].expected)
    assert isinstance(fb, Feedback) and fb.correct is True and bool(fb)
    assert "correct" in repr(fb) and fb._repr_markdown_().endswith(fb.message)


@pytest.mark.parametrize("exercise_id", QUESTIONS)
def test_unanswered_and_wrong(exercise_id):
    e = EXERCISES[exercise_id]
    fb = check(exercise_id, None)
    assert fb.correct is None and not fb and "not answered" in fb.message
    wrong = {"number": 1234.5, "choice": "c" if e.expected != "c" else "a", "set": ["nothing"]}[e.kind]
    fb = check(exercise_id, wrong)
    assert fb.correct is False and e.hint in fb.message
    assert ex.hint(exercise_id) == e.hint
    assert repr(e.expected) in ex.solution(exercise_id)
    assert e.question in ex.question(exercise_id)


def test_answer_formats():
    assert check("01.sigma4", "4")                     # numbers may come as text
    assert check("01.sigma4", torch.tensor(4.0))       # or as tensors
    assert check("01.cross_terms", 0.34 * (1 + 1e-4))  # within tolerance
    assert not check("01.cross_terms", "a lot")
    assert "expected a number" in check("01.cross_terms", "a lot").message
    assert check("02.top1_vs_label", " (B) ")
    assert "letters" in check("02.top1_vs_label", "d").message
    assert check("03.terms", ("KD", "jacobian", "ce"))
    assert not check("03.terms", ["ce", "kd"])
    assert "list of names" in check("03.terms", "ce kd jacobian").message
    fb = check("02.chance", 12)                        # a percentage where a fraction is expected
    assert fb.correct is False and "fraction" in fb.message and "0.12" in fb.message
    assert check("02.chance", 0.12)


def test_unknown_exercise():
    with pytest.raises(ValueError, match="01.cross_terms"):
        check("99.nothing", 1)


def test_answers_by_monte_carlo():
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(400_000, 3, generator=gen, dtype=torch.float64)
    f, g, sigma = 0.5, torch.tensor([1.0, 2.0, 2.0], dtype=torch.float64), 0.1
    assert float((f + sigma * z @ g).pow(2).mean()) == pytest.approx(EXERCISES["01.cross_terms"].expected, abs=2e-3)
    v = torch.randn(400_000, 2, generator=gen, dtype=torch.float64)
    a = torch.tensor([3.0, 4.0], dtype=torch.float64)
    assert float((v @ a).pow(2).mean()) == pytest.approx(EXERCISES["02.random_projection"].expected, rel=2e-2)


def test_answers_by_the_losses():
    t = torch.randn(4, 1, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    s = torch.randn(4, 1, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    assert float(losses.jacobian_loss(-t, t, "normalized")) == pytest.approx(EXERCISES["01.normalized_max"].expected)
    ratio = float(losses.jacobian_loss(10 * s, t, "normalized") / losses.jacobian_loss(s, t, "normalized"))
    assert ratio == pytest.approx(EXERCISES["01.scale"].expected)
    q = losses.attention_map(torch.full((1, 5, 4, 4), 2.0), p=2.0)
    assert torch.allclose(q, torch.full_like(q, EXERCISES["05.attention"].expected))


def test_answers_by_the_methods():
    teacher = build_model("tiny", 10, width=4, seed=0).eval()
    student = build_model("tiny", 10, width=4, seed=1)
    x, y = torch.rand(4, 3, 16, 16), torch.arange(4)
    _, terms = make_method("kd+jacobian", student, teacher, Config()).loss(x, y)
    assert sorted(terms) == EXERCISES["03.terms"].expected
    xg = x.clone().requires_grad_(True)
    _, feats = teacher.forward_features(xg)
    jac = losses.attention_jacobians([feats[k] for k in teacher.feature_taps], xg)
    assert jac.shape[1] == EXERCISES["05.jacobian_rows"].expected


# --------------------------------------------------------------------------- fill-in code exercises

import json  # noqa: E402
from pathlib import Path  # noqa: E402

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def fill_in_cells():
    """``{exercise id: cell source}`` of every notebook cell marked as a fill-in."""
    cells = {}
    for path in NOTEBOOKS:
        for cell in json.loads(path.read_text())["cells"]:
            if "exercise" in cell.get("metadata", {}):
                cells[cell["metadata"]["exercise"]] = "".join(cell["source"])
    return cells


def namespace():
    return {"torch": torch, "losses": losses}


def define(source: str, name: str):
    ns = namespace()
    exec(source, ns)  # noqa: S102 - the notebook's own cell, or a solution from the package
    return ns[name]


def test_every_code_exercise_has_one_fill_in_cell():
    cells = fill_in_cells()
    assert set(cells) == set(ex.code_exercises())
    assert len(ex.code_exercises()) >= 4
    for eid, source in cells.items():
        e = EXERCISES[eid]
        assert e.kind == "code"
        assert 'raise NotImplementedError("write me")' in source
        assert f"def {e.extra['function']}(" in source
        assert e.expected not in source                          # the solution is never printed above the cell


@pytest.mark.parametrize("exercise_id", ex.code_exercises())
def test_fill_in_cell_fails_blank_and_passes_with_the_solution(exercise_id, capsys):
    import inspect
    e = EXERCISES[exercise_id]
    name = e.extra["function"]
    blank = define(fill_in_cells()[exercise_id], name)
    fb = check(exercise_id, blank)
    assert fb.correct is None and not fb and "not written yet" in fb.message
    fallback = ex.use(exercise_id, blank)                        # the notebook goes on with the library's
    assert fallback is not blank and "library" in capsys.readouterr().out
    solved = define(e.expected, name)
    assert inspect.signature(solved) == inspect.signature(blank)
    fb = check(exercise_id, solved)
    assert fb.correct is True, fb.message
    assert ex.use(exercise_id, solved) is solved
    assert e.expected in ex.solution(exercise_id) and "```python" in ex.solution(exercise_id)._repr_markdown_()


@pytest.mark.parametrize("exercise_id", ex.code_exercises())
def test_library_fallback_passes_its_own_check(exercise_id):
    from jkt_lab.exercises import _CODE
    assert check(exercise_id, _CODE[exercise_id][1]).correct is True


# Each wrong variant: (exercise, function source, words the feedback must contain).
WRONG = [
    ("01.normalized_loss", """
def normalized_jacobian_loss(student_jac, teacher_jac):
    return (teacher_jac - student_jac).flatten(2).pow(2).sum(dim=2).sum(dim=1).mean()
""", "normalise each one"),
    ("01.normalized_loss", """
def normalized_jacobian_loss(student_jac, teacher_jac):
    s = torch.nn.functional.normalize(student_jac.flatten(2), dim=2)
    t = torch.nn.functional.normalize(teacher_jac.detach().flatten(2), dim=2)
    return (t - s).pow(2).sum(dim=2).mean()
""", "reduction"),
    ("01.normalized_loss", """
def normalized_jacobian_loss(student_jac, teacher_jac):
    s = torch.nn.functional.normalize(student_jac.flatten(2), dim=2)
    t = torch.nn.functional.normalize(teacher_jac.detach().flatten(2), dim=2)
    return (t - s).pow(2).sum(dim=2).sum(dim=1)
""", "shape"),
    ("01.normalized_loss", """
def normalized_jacobian_loss(student_jac, teacher_jac):
    s = torch.nn.functional.normalize(student_jac.flatten(2), dim=2)
    t = torch.nn.functional.normalize(teacher_jac.flatten(2), dim=2)
    return (t - s).pow(2).sum(dim=2).sum(dim=1).mean()
""", "detach"),
    ("01.normalized_loss", """
def normalized_jacobian_loss(student_jac, teacher_jac):
    return losses.jacobian_loss(student_jac.detach(), teacher_jac, "normalized")
""", "no gradient reaches student_jac"),
    ("01.monte_carlo", """
def noisy_loss_mc(teacher, student, x, sigma, n_samples):
    return (teacher(x) - student(x)).pow(2).sum(dim=1).mean()
""", "noise-free"),
    ("01.monte_carlo", """
def noisy_loss_mc(teacher, student, x, sigma, n_samples):
    noisy = (x + sigma ** 2 * torch.randn(n_samples, *x.shape, dtype=x.dtype)).flatten(0, 1)
    return (teacher(noisy) - student(noisy)).pow(2).sum(dim=1).mean()
""", "not by sigma^2"),
    ("01.monte_carlo", """
def noisy_loss_mc(teacher, student, x, sigma, n_samples):
    noisy = (x + sigma * torch.randn(n_samples, *x.shape, dtype=x.dtype)).flatten(0, 1)
    return (teacher(noisy) - student(noisy)).pow(2).mean()
""", "reduction"),
    ("01.monte_carlo", """
def noisy_loss_mc(teacher, student, x, sigma, n_samples):
    z1, z2 = torch.randn(2, n_samples, *x.shape, dtype=x.dtype)
    return (teacher((x + sigma * z1).flatten(0, 1)) - student((x + sigma * z2).flatten(0, 1))).pow(2).sum(1).mean()
""", "same noisy copy"),
    ("02.top1_jacobian", """
def top1_jacobian(model, x):
    x = x.detach().requires_grad_(True)
    return torch.autograd.grad(model(x).max(dim=1).values.sum(), x)[0]
""", "shape"),
    ("02.top1_jacobian", """
def top1_jacobian(model, x):
    x = x.detach().requires_grad_(True)
    return torch.autograd.grad(model(x).max(dim=1).values.mean(), x)[0].unsqueeze(1)
""", "reduction"),
    ("02.top1_jacobian", """
def top1_jacobian(model, x):
    x = x.detach().requires_grad_(True)
    return torch.autograd.grad(model(x).sum(), x)[0].unsqueeze(1)
""", "sum of all logits"),
    ("02.top1_jacobian", """
def top1_jacobian(model, x):
    return torch.autograd.grad(model(x).max(dim=1).values.sum(), x)[0].unsqueeze(1)
""", "requires_grad"),
    # the library's solution with one line broken
    ("03.jacobian_step", ("x, create_graph=True)", "x)"), "create_graph=True"),
    ("03.jacobian_step", ("    optimizer.zero_grad()\n", ""), "zero_grad"),
    ("03.jacobian_step", ("    optimizer.step()\n", ""), "optimizer.step()"),
    ("03.jacobian_step", ("top1 = t_logits.argmax", "top1 = student(x).argmax"), "teacher's top-1"),
    ("03.jacobian_step", ("loss = jacobian_weight * ", "loss = "), "jacobian_weight"),
    ("03.jacobian_step", """
def jacobian_matching_step(student, teacher, x, optimizer, jacobian_weight=1.0):
    x = x.detach().requires_grad_(True)
    t_logits = teacher(x)
    top1 = t_logits.argmax(dim=1, keepdim=True)
    (j_t,) = torch.autograd.grad(t_logits.gather(1, top1).sum(), x, create_graph=True)
    (j_s,) = torch.autograd.grad(student(x).gather(1, top1).sum(), x, create_graph=True)
    cos = torch.nn.functional.cosine_similarity(j_s.flatten(1), j_t.flatten(1))
    loss = jacobian_weight * (2 - 2 * cos).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return float(loss)
""", "teacher received gradients"),
    # tell-tale mistakes: each has a value the checker recognises, and a hint that names it
    ("01.normalized_loss", """
def normalized_jacobian_loss(student_jac, teacher_jac):
    s = torch.nn.functional.normalize(student_jac.flatten(2), dim=2)
    t = torch.nn.functional.normalize(teacher_jac.detach().flatten(2), dim=2)
    return (t + s).pow(2).sum(dim=2).sum(dim=1).mean()
""", "check the sign of the cosine term"),
    ("01.normalized_loss", """
def normalized_jacobian_loss(student_jac, teacher_jac):
    cos = torch.nn.functional.cosine_similarity(student_jac.flatten(2), teacher_jac.detach().flatten(2), dim=2)
    return (2 - cos).sum(dim=1).mean()
""", "factor 2"),
    ("01.normalized_loss", """
def normalized_jacobian_loss(student_jac, teacher_jac):
    cos = torch.nn.functional.cosine_similarity(student_jac.flatten(2), teacher_jac.detach().flatten(2), dim=2)
    return cos.sum(dim=1).mean()
""", "the cosine itself"),
    ("01.monte_carlo", """
def noisy_loss_mc(teacher, student, x, sigma, n_samples):
    noisy = (x + sigma * torch.randn(n_samples, *x.shape, dtype=x.dtype)).flatten(0, 1)
    return (teacher(noisy) - student(noisy)).pow(2).sum(dim=1).sum() / x.shape[0]
""", "summed over the noise samples"),
    ("01.monte_carlo", """
def noisy_loss_mc(teacher, student, x, sigma, n_samples):
    noisy = (x + sigma * torch.randn(n_samples, *x.shape, dtype=x.dtype)).flatten(0, 1)
    return (teacher(noisy) - student(noisy)).pow(2).sum()
""", "summed over the noise samples"),
    ("02.top1_jacobian", """
def top1_jacobian(model, x):
    x = x.detach().requires_grad_(True)
    return -torch.autograd.grad(model(x).max(dim=1).values.sum(), x)[0].unsqueeze(1)
""", "check the sign"),
    ("02.top1_jacobian", """
def top1_jacobian(model, x):
    x = x.detach().requires_grad_(True)
    return torch.autograd.grad(model(x).min(dim=1).values.sum(), x)[0].unsqueeze(1)
""", "smallest logit"),
    ("03.jacobian_step", ("loss = jacobian_weight * losses.jacobian_loss(j_s.unsqueeze(1), j_t.detach().unsqueeze(1), "
                          "\"normalized\")",
                          "cos = torch.nn.functional.cosine_similarity(j_s.flatten(1), j_t.detach().flatten(1))\n"
                          "    loss = jacobian_weight * (2 + 2 * cos).mean()"), "check the sign of the cosine term"),
    ("03.jacobian_step", ("loss = jacobian_weight * losses.jacobian_loss(j_s.unsqueeze(1), j_t.detach().unsqueeze(1), "
                          "\"normalized\")",
                          "cos = torch.nn.functional.cosine_similarity(j_s.flatten(1), j_t.detach().flatten(1))\n"
                          "    loss = jacobian_weight * (1 - cos).mean()"), "factor 2"),
    ("03.jacobian_step", ("loss = jacobian_weight * losses.jacobian_loss(j_s.unsqueeze(1), j_t.detach().unsqueeze(1), "
                          "\"normalized\")",
                          "cos = torch.nn.functional.cosine_similarity(j_s.flatten(1), j_t.detach().flatten(1))\n"
                          "    loss = jacobian_weight * (2 - 2 * cos).sum()"), "average over the batch"),
    ("03.jacobian_step", ('"normalized")', '"squared")'), "normalise"),
    ("03.jacobian_step", ("loss = jacobian_weight * losses.jacobian_loss(j_s.unsqueeze(1), j_t.detach().unsqueeze(1), "
                          "\"normalized\")",
                          "cos = torch.nn.functional.cosine_similarity(j_s.flatten(1), j_t.detach().flatten(1))\n"
                          "    loss = jacobian_weight * (2 - cos).mean()"), "factor 2"),
]


@pytest.mark.parametrize("exercise_id,source,words", WRONG, ids=[f"{w[0]}-{i}" for i, w in enumerate(WRONG)])
def test_wrong_code_gets_a_hint_that_names_what_differs(exercise_id, source, words):
    name = EXERCISES[exercise_id].extra["function"]
    if isinstance(source, tuple):                                   # (old, new): one change to the solution
        assert source[0] in EXERCISES[exercise_id].expected
        source = EXERCISES[exercise_id].expected.replace(*source)
    fb = check(exercise_id, define(source, name))
    assert fb.correct is False and words in fb.message, fb.message


def test_code_exercise_answers_that_are_not_functions():
    assert "expected your function" in check("01.normalized_loss", 3).message
    assert check("01.normalized_loss", None).correct is None
    with pytest.raises(ValueError, match="fill-in"):
        ex.use("01.cross_terms", print)
