"""The noise/Jacobian equivalence (Section 3, Proposition 1), checked numerically."""
import pytest
import torch

import jkt_lab as jl
from jkt_lab.theory import fit_slope, make_mlp, same_linear_region

SIGMAS = [0.01, 0.02, 0.04, 0.07, 0.1]


def pair(activation):
    return make_mlp(6, 4, (16, 16), activation, seed=1), make_mlp(6, 4, (12,), activation, seed=2)


@pytest.fixture(scope="module")
def x():
    return torch.randn(8, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


@pytest.mark.parametrize("loss", ["squared", "cross_entropy"])
def test_relu_inside_linear_region_matches_prediction(x, loss):
    teacher, student = pair("relu")
    sigma = 1e-3
    assert same_linear_region(teacher, x, sigma) == 1.0 and same_linear_region(student, x, sigma) == 1.0
    out = jl.equivalence(teacher, student, x, sigma, n_samples=4000, loss=loss, sampling="iid", seed=3)
    assert set(out) >= {"monte_carlo", "stderr", "noise_free", "jacobian_term", "prediction"}
    assert all(isinstance(out[k], float) for k in ("monte_carlo", "stderr", "noise_free", "jacobian_term", "prediction"))
    assert abs(out["monte_carlo"] - out["prediction"]) < 4 * out["stderr"]
    if loss == "squared":  # Proposition 1 exactly: no curvature inside a linear region
        assert out["curvature_term"] == pytest.approx(0.0, abs=1e-12)
        assert out["prediction"] == pytest.approx(out["proposition1"], rel=1e-12)


@pytest.mark.parametrize("loss", ["squared", "cross_entropy"])
def test_smooth_net_orders_of_sigma(x, loss):
    teacher, student = pair("tanh")
    sweep = jl.sigma_sweep(teacher, student, x, SIGMAS, n_samples=64, loss=loss, seed=0)
    assert sweep["slope_noise_free"] == pytest.approx(2.0, abs=0.3)
    assert sweep["slope_prediction"] == pytest.approx(4.0, abs=0.6)
    rows = sweep["rows"]
    assert [r["sigma"] for r in rows] == SIGMAS
    assert rows[0]["jacobian_term"] != 0.0


def test_sigma_zero_gives_noise_free(x):
    teacher, student = pair("tanh")
    out = jl.equivalence(teacher, student, x, 0.0, n_samples=4)
    assert out["monte_carlo"] == pytest.approx(out["noise_free"], rel=1e-12)


def test_jacobian_term_is_frobenius_distance(x):
    teacher, student = pair("tanh")
    out = jl.equivalence(teacher, student, x, 0.1, n_samples=2)
    j = jl.input_jacobian(teacher, x) - jl.input_jacobian(student, x)
    assert out["jacobian_term"] == pytest.approx(float(j.pow(2).sum() / x.shape[0]), rel=1e-10)


def test_fit_slope_recovers_power_law():
    s = [0.1, 0.2, 0.4]
    assert fit_slope(s, [3 * v**4 for v in s]) == pytest.approx(4.0)


@pytest.mark.parametrize("kwargs, match", [
    (dict(sigma=-1.0), "sigma"),
    (dict(n_samples=0), "n_samples"),
    (dict(loss="hinge"), "loss"),
    (dict(sampling="sobol"), "sampling"),
    (dict(temperature=0.0), "temperature"),
    (dict(n_samples=3, sampling="antithetic"), "even"),
    (dict(n_samples=4, sampling="moment_matched"), "at least"),
])
def test_bad_input(x, kwargs, match):
    teacher, student = pair("tanh")
    args = dict(sigma=0.1, n_samples=4)
    args.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=match):
        jl.equivalence(teacher, student, x, **args)


def test_bad_x():
    teacher, student = pair("tanh")
    with pytest.raises(ValueError, match="batch dimension"):
        jl.equivalence(teacher, student, torch.zeros(6, dtype=torch.float64), 0.1)
    with pytest.raises(TypeError, match="floating point"):
        jl.equivalence(teacher, student, torch.zeros(2, 6, dtype=torch.long), 0.1)
