"""Input Jacobians: exact against autograd.functional and finite differences; output choices;
per-example training Jacobians under train-mode BatchNorm."""
import copy
import importlib

import pytest
import torch
from torch import nn

import jkt_lab as jl
from jkt_lab.jacobian import matched_jacobians
from jkt_lab.models import MODELS, build_model
from jkt_lab.theory import make_mlp

from held_reference import held_reference

jacobian_module = importlib.import_module("jkt_lab.jacobian")  # the package re-exports a function of that name


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
    """E ||z^T (J_T - J_S)||^2 = ||J_T - J_S||_F^2 for z ~ N(0, I): within 3 standard errors.
    With n projections the rows are z_j / sqrt(n), so n times a row's squared distance is one z's."""
    teacher, student = make_mlp(6, 5, seed=1), make_mlp(6, 5, (8,), seed=2)
    x = torch.randn(3, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = float(jl.jacobian_loss(jl.input_jacobian(student, x), jl.input_jacobian(teacher, x), "squared"))
    n = 4000
    j_t, logits = jl.jacobian(teacher, x, "random", seed=7, num_projections=n)
    j_s, _ = jl.jacobian(student, x, "random", seed=7, num_projections=n)
    per_projection = n * (j_t - j_s).pow(2).sum(dim=2).mean(dim=0)    # (n,)
    mean, stderr = float(per_projection.mean()), float(per_projection.std() / n ** 0.5)
    assert abs(mean - exact) < 3 * stderr, (mean, exact, stderr)


@pytest.mark.parametrize("m", [1, 4])
def test_m_random_projections_give_the_mean_of_m_squared_distances(m):
    """jacobian_loss("squared") of m projections is the mean (not the sum) of m unbiased estimates."""
    teacher, student = make_mlp(6, 5, seed=1), make_mlp(6, 5, (8,), seed=2)
    x = torch.randn(3, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    diff = jl.input_jacobian(teacher, x) - jl.input_jacobian(student, x)          # (3, 5, 6)
    exact = float(jl.jacobian_loss(diff, torch.zeros_like(diff), "squared"))
    logits = torch.zeros(3, 5, dtype=torch.float64)
    estimates = []
    for seed in range(3000):
        v = jl.projections(logits, "random", generator=torch.Generator().manual_seed(seed), num_projections=m)
        z = torch.randn(3, m, 5, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        rows = torch.einsum("bmk,bkd->bmd", v, diff)
        estimate = float(jl.jacobian_loss(rows, torch.zeros_like(rows), "squared"))
        mean_of_m = float(torch.einsum("bmk,bkd->bmd", z, diff).pow(2).sum(2).mean(1).mean())
        assert estimate == pytest.approx(mean_of_m, rel=1e-12)
        estimates.append(estimate)
    est = torch.tensor(estimates)
    mean, stderr = float(est.mean()), float(est.std() / len(est) ** 0.5)
    assert abs(mean - exact) < 3 * stderr, (m, mean, exact, stderr)


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


# --------------------------------------------------------------------------- train-mode BatchNorm
# Reference: tests/held_reference.py (an eval-mode copy with the batch's statistics, torch.func).

STUDENTS = [("tiny", dict(width=4), 12), ("vgg4", dict(width=4), 12), ("vgg9", dict(width=2), 16),
            ("wrn", dict(width=1, depth=10), 12), ("resnet18", {}, 16)]


@pytest.mark.parametrize("name, kwargs, size", STUDENTS, ids=[s[0] for s in STUDENTS])
def test_training_jacobian_is_each_examples_own_on_every_student_architecture(name, kwargs, size):
    assert {s[0] for s in STUDENTS} | {"resnet34"} == set(MODELS)     # every student architecture
    model = build_model(name, 3, seed=0, **kwargs).double().train()
    teacher = build_model("tiny", 3, width=4, seed=5).double().eval()
    x = torch.rand(4, 3, size, size, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref = held_reference(model, x)
    jac, logits = jl.jacobian(model, x, "all", create_graph=True)
    assert jac.requires_grad and jac.shape == ref.shape
    assert float((jac - ref).norm() / ref.norm()) < 1e-10
    j_s, j_t, s_logits, _ = matched_jacobians(model, teacher, x, "top1", create_graph=True)
    top1 = teacher(x).argmax(1)
    assert float((j_s[:, 0] - ref[torch.arange(4), top1]).norm() / ref.norm()) < 1e-10
    assert torch.allclose(j_t[:, 0], jl.input_jacobian(teacher, x)[torch.arange(4), top1])


def test_training_forward_stays_ordinary_and_running_statistics_move_once():
    model = build_model("tiny", 3, width=4, seed=0).double().train()
    twin = copy.deepcopy(model)
    teacher = build_model("tiny", 3, width=4, seed=5).double().eval()
    x = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    _, _, logits, _ = matched_jacobians(model, teacher, x, "top1", create_graph=True)
    ordinary = twin(x)                                                # one ordinary train-mode pass
    assert torch.allclose(logits, ordinary, rtol=0, atol=1e-12)
    for a, b in zip(model.buffers(), twin.buffers()):                 # running mean/var, batches tracked
        assert torch.equal(a, b)
    # cross-entropy trains through the ordinary pass, batch statistics included
    g = torch.autograd.grad(nn.functional.cross_entropy(logits, y), list(model.parameters()))
    h = torch.autograd.grad(nn.functional.cross_entropy(ordinary, y), list(twin.parameters()))
    assert all(torch.allclose(a, b, rtol=1e-10, atol=1e-14) for a, b in zip(g, h))


def smooth_bn_net(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.Softplus(),
                         nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3), nn.Tanh(),
                         nn.Flatten(), nn.Linear(3 * 4 * 4, 4)).double()


def test_jacobian_term_weight_gradient_is_exact_for_held_statistics():
    """Autograd's weight gradient of the normalised Jacobian loss against central finite
    differences of the same loss computed from the independent reference (float64)."""
    student, teacher = smooth_bn_net(0).train(), smooth_bn_net(1).eval()
    x = torch.randn(5, 2, 4, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    top1 = teacher(x).argmax(1)
    j_t = jl.input_jacobian(teacher, x)[torch.arange(5), top1].unsqueeze(1)

    j_s, _, _, _ = matched_jacobians(student, teacher, x, "top1", create_graph=True)
    params = list(student.parameters())
    grads = torch.autograd.grad(jl.jacobian_loss(j_s, j_t, "normalized"), params, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]   # the last bias

    def reference_loss():
        ref = held_reference(student, x)[torch.arange(5), top1].unsqueeze(1)
        return float(jl.jacobian_loss(ref, j_t, "normalized"))

    h = 1e-6
    checked = 0
    for p, g in zip(params, grads):
        flat, gflat = p.data.view(-1), g.reshape(-1)
        for i in sorted({0, flat.numel() // 2, flat.numel() - 1}):
            old = float(flat[i])
            flat[i] = old + h
            up = reference_loss()
            flat[i] = old - h
            down = reference_loss()
            flat[i] = old
            fd = (up - down) / (2 * h)
            assert float(gflat[i]) == pytest.approx(fd, rel=1e-5, abs=1e-8), (p.shape, i)
            checked += 1
    assert checked >= 20


@pytest.mark.parametrize("name, kwargs, size", [("vgg4", dict(width=4), 12), ("resnet18", {}, 16)],
                         ids=["vgg4", "resnet18"])
def test_constant_mask_forms_give_the_same_jacobian_loss_gradient(name, kwargs, size, monkeypatch):
    """The held pass runs ReLU, max pooling and global average pooling in constant-mask forms
    (a cheaper double backward): the Jacobian, the logits and every weight gradient of a
    ce + Jacobian loss equal those of the native modules (float64)."""
    x = torch.rand(4, 3, size, size, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 1])
    teacher = build_model("tiny", 3, width=4, seed=5).double().eval()

    def run(constant_masks):
        model = build_model(name, 3, seed=0, **kwargs).double().train()
        if not constant_masks:
            monkeypatch.setattr(jacobian_module, "_with_constant_masks", lambda module: None)
        j_s, j_t, logits, _ = matched_jacobians(model, teacher, x, "top1", create_graph=True)
        monkeypatch.undo()
        loss = nn.functional.cross_entropy(logits, y) + jl.jacobian_loss(j_s, j_t, "normalized")
        return j_s.detach(), logits.detach(), torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)

    patched = [m for m in build_model(name, 3, seed=0, **kwargs).modules()
               if jacobian_module._with_constant_masks(m) is not None]
    assert {type(m) for m in patched} == {nn.ReLU, nn.MaxPool2d, nn.AdaptiveAvgPool2d}
    (j_a, l_a, g_a), (j_b, l_b, g_b) = run(True), run(False)
    assert torch.allclose(j_a, j_b, rtol=1e-12, atol=1e-15) and torch.allclose(l_a, l_b, rtol=1e-12, atol=1e-15)
    assert sum(g is not None for g in g_a) >= 4
    for a, b in zip(g_a, g_b):
        assert (a is None) == (b is None)
        if a is not None:
            assert torch.allclose(a, b, rtol=1e-9, atol=1e-13)
