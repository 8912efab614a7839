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


@pytest.mark.parametrize("exercise_id", list(EXERCISES))
def test_expected_answer_is_accepted(exercise_id):
    fb = check(exercise_id, EXERCISES[exercise_id].expected)
    assert isinstance(fb, Feedback) and fb.correct is True and bool(fb)
    assert "correct" in repr(fb) and fb._repr_markdown_() == fb.message


@pytest.mark.parametrize("exercise_id", list(EXERCISES))
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
