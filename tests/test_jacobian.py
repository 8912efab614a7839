"""Input Jacobians: exact against autograd.functional and finite differences; output choices."""
import pytest
import torch
from torch import nn

import jkt_lab as jl
from jkt_lab.theory import make_mlp


def smooth_cnn(seed=0, k=7):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(2, 6, 3, padding=1), nn.BatchNorm2d(6), nn.Tanh(), nn.Flatten(),
                         nn.Linear(6 * 5 * 5, k)).double().eval()


@pytest.fixture(scope="module")
def x():
    return torch.randn(4, 2, 5, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def reference(model, x):
    full = torch.autograd.functional.jacobian(model, x)             # (B, k, B, *in)
    return torch.stack([full[b, :, b] for b in range(x.shape[0])])


@pytest.mark.parametrize("chunk_size", [None, 1, 3])
def test_input_jacobian_equals_autograd_functional(x, chunk_size):
    model = smooth_cnn()
    jac = jl.input_jacobian(model, x, chunk_size=chunk_size)
    ref = reference(model, x)
    assert jac.shape == (4, 7, 2, 5, 5)
    assert float((jac - ref).norm() / ref.norm()) < 1e-10
    loop = jl.input_jacobian(model, x, method="loop")
    assert float((loop - ref).norm() / ref.norm()) < 1e-10


def test_input_jacobian_matches_central_finite_differences(x):
    model = smooth_cnn(1)
    jac = jl.input_jacobian(model, x)
    h = 1e-6
    flat = x.flatten(1)
    for d in [0, 7, 23, 49]:
        e = torch.zeros_like(flat)
        e[:, d] = h
        fd = (model((flat + e).view_as(x)) - model((flat - e).view_as(x))) / (2 * h)
        assert torch.allclose(jac.flatten(2)[:, :, d], fd, rtol=1e-6, atol=1e-8)


def test_input_jacobian_refuses_train_mode_batchnorm(x):
    with pytest.raises(ValueError, match="eval mode"):
        jl.input_jacobian(smooth_cnn().train(), x)


def test_output_choices_pick_the_right_rows(x):
    model = smooth_cnn(2)
    full = jl.input_jacobian(model, x)
    logits = model(x)
    top1, _ = jl.jacobian(model, x, "top1")
    assert torch.allclose(top1[:, 0], full[torch.arange(4), logits.argmax(1)])
    labels = torch.tensor([0, 6, 3, 3])
    lab, _ = jl.jacobian(model, x, "label", labels=labels)
    assert torch.allclose(lab[:, 0], full[torch.arange(4), labels])
    idx, _ = jl.jacobian(model, x, torch.tensor([1, 1, 2, 5]))
    assert torch.allclose(idx[:, 0], full[torch.arange(4), torch.tensor([1, 1, 2, 5])])
    allj, _ = jl.jacobian(model, x, "all")
    assert torch.allclose(allj, full)
    ref_logits = torch.zeros(4, 7, dtype=x.dtype)
    ref_logits[:, 4] = 1
    by_teacher, _ = jl.jacobian(model, x, "top1", reference=ref_logits)
    assert torch.allclose(by_teacher[:, 0], full[:, 4])
    rnd, _ = jl.jacobian(model, x, "random", seed=3, num_projections=2)
    v = jl.projections(logits, "random", generator=torch.Generator().manual_seed(3), num_projections=2)
    assert torch.allclose(rnd, torch.einsum("bmk,bk...->bm...", v, full))


def test_random_projection_is_unbiased_for_frobenius_distance():
    """E ||v^T (J_T - J_S)||^2 = ||J_T - J_S||_F^2 for v ~ N(0, I): within 3 standard errors."""
    teacher, student = make_mlp(6, 5, seed=1), make_mlp(6, 5, (8,), seed=2)
    x = torch.randn(3, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = float(jl.jacobian_loss(jl.input_jacobian(student, x), jl.input_jacobian(teacher, x), "squared"))
    n = 4000
    j_t, logits = jl.jacobian(teacher, x, "random", seed=7, num_projections=n)
    j_s, _ = jl.jacobian(student, x, "random", seed=7, num_projections=n)
    per_projection = (j_t - j_s).pow(2).sum(dim=2).mean(dim=0)        # (n,)
    mean, stderr = float(per_projection.mean()), float(per_projection.std() / n ** 0.5)
    assert abs(mean - exact) < 3 * stderr, (mean, exact, stderr)


def test_student_jacobian_with_graph_in_train_mode():
    model = smooth_cnn(3).float().train()
    x = torch.randn(8, 2, 5, 5)
    jac, logits = jl.jacobian(model, x, "top1", create_graph=True)
    assert jac.requires_grad
    jac.pow(2).sum().backward()
    assert model[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("call, match", [
    (lambda m: jl.input_jacobian(m, torch.zeros(2, 5, 5)), None),
    (lambda m: jl.input_jacobian(m, torch.zeros(2, 2, 5, 5, dtype=torch.long)), "floating point"),
    (lambda m: jl.input_jacobian(m, torch.full((1, 2, 5, 5), float("nan"))), "non-finite"),
    (lambda m: jl.input_jacobian(m, torch.zeros(1, 2, 5, 5), chunk_size=0), "chunk_size"),
    (lambda m: jl.input_jacobian(m, torch.zeros(1, 2, 5, 5), method="fast"), "method"),
    (lambda m: jl.input_jacobian("model", torch.zeros(1, 2, 5, 5)), "model"),
    (lambda m: jl.jacobian(m, torch.zeros(2, 2, 5, 5), torch.tensor([0, 7])), "output"),
    (lambda m: jl.jacobian(m, torch.zeros(2, 2, 5, 5), torch.tensor([0])), "output"),
    (lambda m: jl.jacobian(m, torch.zeros(2, 2, 5, 5), "label"), "labels"),
    (lambda m: jl.jacobian(m, torch.zeros(2, 2, 5, 5), "label", labels=torch.tensor([0, 1, 2])), "labels"),
    (lambda m: jl.jacobian(m, torch.zeros(2, 2, 5, 5), "second"), "output"),
    (lambda m: jl.jacobian(m, torch.zeros(2, 2, 5, 5), "random", num_projections=0), "num_projections"),
])
def test_bad_input(call, match):
    model = smooth_cnn().float()
    with pytest.raises((ValueError, TypeError), match=match):
        call(model)
