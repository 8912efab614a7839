"""Loss terms: golden values from an independent NumPy implementation, properties, gradients."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import jkt_lab as jl
from jkt_lab import losses

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
from make_golden_losses import inputs  # noqa: E402

GOLDEN = json.loads((Path(__file__).parent / "fixtures" / "golden_losses.json").read_text())


@pytest.fixture(scope="module")
def fixed():
    return {k: torch.from_numpy(np.asarray(v)) for k, v in inputs().items()}


def close(value, key):
    assert float(value) == pytest.approx(GOLDEN[key], rel=1e-10, abs=1e-12), key


def test_golden_values(fixed):
    f = fixed
    for t in (1.0, 4.0):
        close(jl.kd_loss(f["student_logits"], f["teacher_logits"], t), f"kd_T{t:g}")
    close(jl.activation_loss(f["student_logits"], f["teacher_logits"]), "activation")
    for kind in losses.JACOBIAN_KINDS:
        close(jl.jacobian_loss(f["student_jac"], f["teacher_jac"], kind), f"jacobian_{kind}")
    tiny = f["student_jac"].clone()
    tiny[:, 0] *= 1e-5                      # below NORM_FLOOR of the teacher's norm: scaled linearly
    for kind in ("normalized", "cosine"):
        close(jl.jacobian_loss(tiny, f["teacher_jac"], kind), f"jacobian_{kind}_tiny_student")
    am = jl.attention_map(f["student_features"])
    np.testing.assert_allclose(am.numpy(), np.array(GOLDEN["attention_map_student"]), rtol=1e-12)
    close(jl.attention_transfer_loss([f["student_features"]], [f["teacher_features"]]), "attention_transfer")
    terms = jl.lwf_loss(f["student_logits"], f["labels"], f["student_logits"], f["teacher_logits"],
                        temperature=2.0, lwf_weight=0.5)
    close(terms["ce"], "lwf_ce")
    close(terms["lwf"], "lwf_lwf_weight_0.5")


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_normalized_is_two_minus_two_cos_per_output():
    s, t = rand(4, 3, 2, 5, 5, seed=1), rand(4, 3, 2, 5, 5, seed=2)
    cos = nn.functional.cosine_similarity(s.flatten(2), t.flatten(2), dim=2)
    for b in range(4):
        for o in range(3):
            one = jl.jacobian_loss(s[b:b + 1, o:o + 1], t[b:b + 1, o:o + 1], "normalized")
            assert float(one) == pytest.approx(float(2 - 2 * cos[b, o]), rel=1e-10)
    assert float(jl.jacobian_loss(s, t, "normalized")) == pytest.approx(2 * float(jl.jacobian_loss(s, t, "cosine")))


def test_normalized_scale_invariant_and_zero_when_aligned():
    s, t = rand(4, 2, 10, seed=3), rand(4, 2, 10, seed=4)
    base = jl.jacobian_loss(s, t, "normalized")
    assert float(jl.jacobian_loss(7.5 * s, t, "normalized")) == pytest.approx(float(base), rel=1e-12)
    assert float(jl.jacobian_loss(s, 0.01 * t, "normalized")) == pytest.approx(float(base), rel=1e-12)
    assert float(jl.jacobian_loss(3.0 * t, t, "normalized")) == pytest.approx(0.0, abs=1e-14)
    assert float(jl.jacobian_loss(-t, t, "normalized")) == pytest.approx(4.0 * 2, rel=1e-12)  # 2 outputs x 4
    assert float(jl.jacobian_loss(s, s, "squared")) == 0.0


def test_zero_jacobian_stays_finite_with_finite_gradients():
    for kind in losses.JACOBIAN_KINDS:
        s = torch.zeros(2, 1, 6, dtype=torch.float64, requires_grad=True)
        t = rand(2, 1, 6, seed=5)
        value = jl.jacobian_loss(s, t, kind)
        value.backward()
        assert torch.isfinite(value) and torch.isfinite(s.grad).all(), kind
        both = jl.jacobian_loss(torch.zeros(2, 1, 6), torch.zeros(2, 1, 6), kind)
        assert torch.isfinite(both), kind


def test_zero_student_jacobian_has_a_bounded_gradient():
    """An all-zero student Jacobian: loss 1 per row, gradient at most 4 / (NORM_FLOOR ||J_T||) per
    row (divided by the batch for the batch mean); a 1e-12 guard gave 2e12."""
    t = rand(3, 2, 50, seed=5)
    bound = 4 / (losses.NORM_FLOOR * t.norm(dim=2)) / 3
    for kind in ("normalized", "cosine"):
        s = torch.zeros(3, 2, 50, dtype=torch.float64, requires_grad=True)
        value = jl.jacobian_loss(s, t, kind)
        value.backward()
        assert float(value) == pytest.approx(2.0, rel=1e-12), kind          # 2 rows x 1
        assert (s.grad.norm(dim=2) <= bound).all() and s.grad.norm(dim=2).max() > 0.1 * bound.min(), kind
        # and near zero, on both sides of the floor
        for scale in (1e-6, 1e-4, 2e-3):
            s2 = (scale * t.norm(dim=2, keepdim=True) * rand(3, 2, 50, seed=6) / 50 ** 0.5).requires_grad_()
            jl.jacobian_loss(s2, t, kind).backward()
            assert torch.isfinite(s2.grad).all() and (s2.grad.norm(dim=2) <= bound).all(), (kind, scale)


def test_normalized_scale_invariant_down_to_the_floor():
    t = rand(4, 1, 30, seed=7)
    s = rand(4, 1, 30, seed=8)
    s = s / s.norm(dim=2, keepdim=True) * t.norm(dim=2, keepdim=True)      # same norm as the teacher
    for kind in ("normalized", "cosine"):
        base = float(jl.jacobian_loss(s, t, kind))
        for c in (1e3, 0.5, 1.01 * losses.NORM_FLOOR):                        # ||c s|| >= floor ||t||
            assert float(jl.jacobian_loss(c * s, t, kind)) == pytest.approx(base, rel=1e-12), (kind, c)
        assert float(jl.jacobian_loss(1e-3 * s, 1e-3 * t, kind)) == pytest.approx(base, rel=1e-12)
        assert float(jl.jacobian_loss(0.1 * losses.NORM_FLOOR * s, t, kind)) != pytest.approx(base, rel=1e-3)


def test_lwf_temperature_has_one_source():
    """lwf_loss has no default temperature: the lwf method passes Config.temperature."""
    s, t = rand(4, 5, seed=12), rand(4, 5, seed=13)
    labels = torch.tensor([0, 1, 2, 3])
    with pytest.raises(TypeError, match="temperature"):
        jl.lwf_loss(s, labels, s, t)
    terms = jl.lwf_loss(s, labels, s, t, temperature=2.0)
    assert float(terms["lwf"]) == pytest.approx(float(jl.kd_loss(s, t, 2.0)), rel=1e-12)


def test_kd_zero_for_constant_shift_and_positive_otherwise():
    t = rand(6, 10, seed=6)
    shift = rand(6, 1, seed=7)
    assert float(jl.kd_loss(t + shift, t, 3.0)) == pytest.approx(0.0, abs=1e-12)
    assert float(jl.kd_loss(rand(6, 10, seed=8), t, 3.0)) > 0


def test_kd_gradient_reaches_student_only():
    s = rand(4, 5, seed=9).requires_grad_()
    t = rand(4, 5, seed=10).requires_grad_()
    jl.kd_loss(s, t, 2.0).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None


def small_net(seed, width=16):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.Tanh(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(4 * width, 5))


def test_jacobian_step_turns_student_gradient_towards_teacher():
    """The classic bug: a Jacobian term that passes no gradient to the student."""
    teacher, student = small_net(0), small_net(1)
    x = torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(2))

    def cosine():
        j_t, t_logits = jl.jacobian(teacher.eval(), x, "top1")
        j_s, _ = jl.jacobian(student.eval(), x, "top1", reference=t_logits)
        return float(nn.functional.cosine_similarity(j_s.flatten(1), j_t.flatten(1), dim=1).mean())

    before = cosine()
    student.train()
    opt = torch.optim.SGD(student.parameters(), lr=0.5)
    for _ in range(5):
        xg = x.clone().requires_grad_(True)
        t_logits = teacher.eval()(xg)
        v = jl.projections(t_logits, "top1")
        j_t = jl.output_jacobian(t_logits, xg, v)
        s_logits = student(xg)
        j_s = jl.output_jacobian(s_logits, xg, v, create_graph=True)
        loss = jl.jacobian_loss(j_s, j_t, "normalized")
        opt.zero_grad()
        loss.backward()
        grads = [p.grad for p in student.parameters() if p.grad is not None]
        assert grads and sum(float(g.abs().sum()) for g in grads) > 0
        opt.step()
    after = cosine()
    assert after > before + 0.05, (before, after)


def test_noisy_distillation_matches_manual_and_trains_student():
    teacher, student = small_net(0).eval(), small_net(1).eval()
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    value = jl.noisy_distillation_loss(student, teacher, x, 0.1, n_samples=3, seed=5)
    z = torch.randn((3, *x.shape), generator=torch.Generator().manual_seed(5))
    noisy = (x + 0.1 * z).flatten(0, 1)
    manual = (student(noisy) - teacher(noisy)).pow(2).sum(1).mean()
    assert float(value.detach()) == pytest.approx(float(manual.detach()), rel=1e-6)
    value.backward()
    assert all(p.grad is not None for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    assert float(jl.noisy_distillation_loss(student, teacher, x, 0.0, 2)) == pytest.approx(
        float(jl.activation_loss(student(x), teacher(x))), rel=1e-6)


def test_attention_jacobian_loss_trains_student():
    teacher, student = small_net(0).eval(), small_net(1).train()
    x = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(4)).requires_grad_(True)
    f_t = [teacher[:3](x)]
    f_s = [student[:3](x)]
    loss = jl.attention_jacobian_loss(f_s, f_t, x)
    assert torch.isfinite(loss) and 0 <= float(loss.detach()) <= 4.0 + 1e-9
    loss.backward()
    assert student[0].weight.grad.abs().sum() > 0
    jac = losses.attention_jacobians([teacher[:3](x)], x)
    assert jac.shape == (8, 1, 1, 8, 8)


def test_attention_jacobians_are_taken_at_the_teachers_maximum():
    teacher, student = small_net(0).eval(), small_net(1).eval()
    x = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(4), dtype=torch.float32)
    x = x.requires_grad_(True)
    f_t, f_s = teacher[:3](x), student[:3](x)
    q_t = jl.attention_map(f_t, normalize=False)
    q_s = jl.attention_map(f_s, normalize=False)
    peak = q_t.argmax(1)
    assert (peak != q_s.argmax(1)).any()              # the two networks' maxima differ somewhere
    assert torch.equal(losses.attention_peaks([f_t])[0], peak)
    idx = torch.arange(8)
    (s_ref,) = torch.autograd.grad(q_s[idx, peak].sum(), x, retain_graph=True)
    (t_ref,) = torch.autograd.grad(q_t[idx, peak].sum(), x, retain_graph=True)
    s_jac = losses.attention_jacobians([f_s], x, at=[peak], create_graph=True)
    assert torch.allclose(s_jac[:, 0], s_ref)
    loss = jl.attention_jacobian_loss([f_s], [f_t], x)
    expected = jl.jacobian_loss(s_ref.unsqueeze(1), t_ref.unsqueeze(1), "normalized")
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)


def test_attention_transfer_pools_different_sizes_and_is_zero_on_itself():
    a = rand(2, 3, 8, 8, seed=11)
    b = rand(2, 5, 4, 4, seed=12)
    assert torch.isfinite(jl.attention_transfer_loss([a], [b]))
    assert float(jl.attention_transfer_loss({"x": a}, {"y": a})) == pytest.approx(0.0, abs=1e-14)


@pytest.mark.parametrize("call, match", [
    (lambda: jl.kd_loss(torch.zeros(2, 3), torch.zeros(2, 3), temperature=0), "temperature"),
    (lambda: jl.kd_loss(torch.zeros(2, 3), torch.zeros(2, 4)), "same shape"),
    (lambda: jl.kd_loss(torch.zeros(3), torch.zeros(3)), "batch dimension"),
    (lambda: jl.kd_loss(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3)), "floating point"),
    (lambda: jl.activation_loss(torch.tensor([[float("nan"), 0.0]]), torch.zeros(1, 2)), "non-finite"),
    (lambda: jl.jacobian_loss(torch.zeros(2, 1, 4), torch.zeros(2, 1, 4), kind="l1"), "kind"),
    (lambda: jl.jacobian_loss(torch.zeros(2, 4), torch.zeros(2, 4)), "student_jac"),
    (lambda: jl.jacobian_loss(torch.zeros(2, 1, 4), torch.full((2, 1, 4), float("inf"))), "teacher_jac"),
    (lambda: jl.noisy_distillation_loss(nn.Identity(), nn.Identity(), torch.zeros(2, 3), sigma=-0.1), "sigma"),
    (lambda: jl.noisy_distillation_loss(nn.Identity(), nn.Identity(), torch.zeros(2, 3), 0.1, n_samples=0), "n_samples"),
    (lambda: jl.lwf_loss(torch.zeros(2, 3), torch.tensor([0, 3]), torch.zeros(2, 3), torch.zeros(2, 3), temperature=2.0), "labels"),
    (lambda: jl.lwf_loss(torch.zeros(2, 3), torch.tensor([[0], [1]]), torch.zeros(2, 3), torch.zeros(2, 3), temperature=2.0), "labels"),
    (lambda: jl.lwf_loss(torch.zeros(2, 3), torch.tensor([0.0, 1.0]), torch.zeros(2, 3), torch.zeros(2, 3), temperature=2.0), "labels"),
    (lambda: jl.attention_map(torch.zeros(2, 3, 4, 4), p=0), "p"),
    (lambda: jl.attention_transfer_loss([torch.zeros(2, 3, 4, 4)], []), "pair up"),
])
def test_bad_input_names_the_argument(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()
