"""The noise/Jacobian equivalence of Section 3, made measurable.

For a per-example loss ``L(x)`` and Gaussian noise ``xi = sigma z``, ``z ~ N(0, I)``, a Taylor
expansion gives (odd moments of z vanish, ``E[z z^T] = I``)

    E[L(x + xi)] = L(x) + sigma^2 / 2 * Laplacian(L)(x) + O(sigma^4).

* Squared error, ``L = sum_i (T_i - S_i)^2`` with ``f = T - S``: ``Laplacian(L) / 2 =
  sum_i ||grad f_i||^2 + sum_i f_i Laplacian(f_i)``. The first part is the Jacobian-matching
  term of **Proposition 1**, ``sum_i ||dT_i/dx - dS_i/dx||^2``; the second, the *curvature
  term*, vanishes inside a linear region of a ReLU network, where Proposition 1 is exact (no
  sigma^4 term either, since L is then a quadratic in xi).
* Cross-entropy, ``L = -sum_i p_T,i log p_S,i`` (softmax at ``temperature``): the sigma^2 term
  holds the inner product of teacher and student Jacobians, ``-sum_i <grad p_T,i, grad log
  p_S,i>`` (Section 3.2), which is what :func:`equivalence` reports as ``jacobian_term``; the
  rest of ``Laplacian(L) / 2`` is the curvature term.

:func:`equivalence` returns the Monte-Carlo expectation next to these predictions;
``prediction`` is the full second-order expansion, ``proposition1`` is ``noise_free + sigma^2 *
jacobian_term``. They agree exactly for piecewise-linear networks.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import check_batch, check_choice, check_int, check_nonnegative, check_positive
from .jacobian import input_jacobian

__all__ = ["LOSSES", "SAMPLINGS", "equivalence", "sigma_sweep", "fit_slope", "make_mlp", "same_linear_region"]

LOSSES = ("squared", "cross_entropy")
SAMPLINGS = ("iid", "antithetic", "moment_matched")


def make_mlp(in_features: int, out_features: int, hidden: Sequence[int] = (32, 32), activation: str = "tanh",
             *, seed: int = 0, dtype: torch.dtype = torch.float64) -> nn.Sequential:
    """A small fully connected network for the theory checks (tanh: smooth; relu: piecewise linear)."""
    check_int(in_features, "in_features", minimum=1)
    check_int(out_features, "out_features", minimum=1)
    check_choice(activation, "activation", ("tanh", "relu"))
    act = nn.Tanh if activation == "tanh" else nn.ReLU
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, check_int(h, "hidden", minimum=1)), act()]
            width = h
        layers.append(nn.Linear(width, out_features))
        net = nn.Sequential(*layers).to(dtype)
    finally:
        torch.random.set_rng_state(gen_state)
    return net.eval()


def _per_example_loss(teacher, student, x, loss: str, temperature: float) -> torch.Tensor:
    t, s = teacher(x), student(x)
    if loss == "squared":
        return (t - s).pow(2).sum(dim=1)
    p_t = F.softmax(t / temperature, dim=1)
    return -(p_t * F.log_softmax(s / temperature, dim=1)).sum(dim=1)


class _Then(nn.Module):
    def __init__(self, model: nn.Module, fn):
        super().__init__()
        self.model, self.fn = model, fn

    def forward(self, x):
        return self.fn(self.model(x))


def _laplacian(fn, x: torch.Tensor, chunk_size: int = 256) -> torch.Tensor:
    """Per-example trace of the Hessian of ``fn`` (examples independent), via jvp-of-grad."""
    grad_fn = torch.func.grad(lambda xx: fn(xx).sum())
    d = x[0].numel()
    out = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)

    def diag_entry(e):
        tangent = e.reshape(x.shape[1:]).expand_as(x)
        _, hv = torch.func.jvp(grad_fn, (x,), (tangent,))
        return (hv * tangent).flatten(1).sum(dim=1)

    eye = torch.eye(d, dtype=x.dtype, device=x.device)
    with warnings.catch_warnings():
        # torch.func.jvp loads its decompositions through torch.jit.script the first time, which
        # warns that torch.jit.script is deprecated: torch's internals, nothing a learner can act on.
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.* is deprecated", category=FutureWarning)
        for start in range(0, d, chunk_size):
            out += torch.func.vmap(diag_entry)(eye[start:start + chunk_size]).sum(dim=0)
    return out


def _terms(teacher, student, x, loss, temperature):
    """Sigma-independent parts: noise-free loss, Jacobian term, curvature term (example means)."""
    with torch.no_grad():
        noise_free = _per_example_loss(teacher, student, x, loss, temperature).mean()
    if loss == "squared":
        j_t, j_s = input_jacobian(teacher, x), input_jacobian(student, x)
        jac_term = (j_t - j_s).flatten(1).pow(2).sum(dim=1).mean()
    else:
        j_t = input_jacobian(_Then(teacher, lambda o: F.softmax(o / temperature, dim=1)), x)
        j_s = input_jacobian(_Then(student, lambda o: F.log_softmax(o / temperature, dim=1)), x)
        jac_term = -(j_t * j_s).flatten(1).sum(dim=1).mean()
    half_lap = 0.5 * _laplacian(lambda xx: _per_example_loss(teacher, student, xx, loss, temperature), x.detach()).mean()
    return float(noise_free), float(jac_term.detach()), float((half_lap - jac_term).detach())


def _noise(n: int, shape, sampling: str, seed: int, dtype) -> torch.Tensor:
    """Noise directions z (n, *shape), on the CPU, the same for every sigma (common random numbers)."""
    gen = torch.Generator().manual_seed(int(seed))
    if sampling == "iid":
        return torch.randn((n, *shape), generator=gen, dtype=torch.float64).to(dtype)
    if n % 2:
        raise ValueError(f"n_samples must be even for sampling={sampling!r} (antithetic pairs), got {n}")
    half = torch.randn((n // 2, math.prod(shape)), generator=gen, dtype=torch.float64)
    if sampling == "moment_matched":
        d = half.shape[1]
        if n // 2 < d:
            raise ValueError(
                f"n_samples must be at least 2 * input size = {2 * d} for sampling='moment_matched', got {n}"
            )
        # Whiten so that the empirical second moment of {+z, -z} is exactly the identity.
        cov = half.T @ half / half.shape[0]
        evals, evecs = torch.linalg.eigh(cov)
        half = half @ (evecs @ torch.diag(evals.rsqrt()) @ evecs.T)
    z = torch.stack([half, -half], dim=1).reshape(n, *shape)
    return z.to(dtype)


def _monte_carlo(teacher, student, x, sigma, z, loss, temperature, paired: bool, chunk: int = 64):
    values = []
    with torch.no_grad():
        for start in range(0, z.shape[0], chunk):
            zc = z[start:start + chunk].to(x.device)
            noisy = (x.unsqueeze(0) + sigma * zc.unsqueeze(1)).flatten(0, 1)
            per = _per_example_loss(teacher, student, noisy, loss, temperature)
            values.append(per.reshape(zc.shape[0], x.shape[0]).mean(dim=1))
    v = torch.cat(values).double()
    if paired:
        v = v.reshape(-1, 2).mean(dim=1)
    stderr = float(v.std(unbiased=True) / math.sqrt(v.numel())) if v.numel() > 1 else float("nan")
    return float(v.mean()), stderr


def _check_models(teacher, student, x, loss, temperature, n_samples, sampling):
    for name, m in (("teacher", teacher), ("student", student)):
        if not isinstance(m, nn.Module):
            raise TypeError(f"{name} must be a torch.nn.Module, got {type(m).__name__}")
    check_batch(x, "x")
    check_choice(loss, "loss", LOSSES)
    check_positive(temperature, "temperature")
    check_int(n_samples, "n_samples", minimum=1)
    check_choice(sampling, "sampling", SAMPLINGS)


def _row(sigma, mc, stderr, noise_free, jac, curv, loss, n, sampling):
    return {
        "sigma": sigma,
        "monte_carlo": mc,
        "stderr": stderr,
        "noise_free": noise_free,
        "jacobian_term": jac,
        "curvature_term": curv,
        "proposition1": noise_free + sigma**2 * jac,
        "prediction": noise_free + sigma**2 * (jac + curv),
        "loss": loss,
        "n_samples": n,
        "sampling": sampling,
    }


def equivalence(teacher: nn.Module, student: nn.Module, x: torch.Tensor, sigma: float, n_samples: int = 1000,
                loss: str = "squared", seed: int = 0, *, sampling: str = "antithetic",
                temperature: float = 1.0) -> dict:
    """Monte-Carlo expectation of the loss under input noise next to its Taylor prediction.

    Returns floats: ``monte_carlo`` (mean over noisy copies ``x + sigma z`` of the loss summed
    over outputs, averaged over the examples of ``x``), ``stderr`` (its standard error),
    ``noise_free``, ``jacobian_term``, ``curvature_term``, ``proposition1`` and ``prediction``
    (see the module docstring). ``sampling``: ``"iid"``, ``"antithetic"`` (pairs z, -z) or
    ``"moment_matched"`` (antithetic and whitened so the samples' second moment is exactly I;
    then only the sigma^4 term is left between ``monte_carlo`` and ``prediction``). Models must
    be in eval mode; use float64 for small sigma.
    """
    _check_models(teacher, student, x, loss, temperature, n_samples, sampling)
    sigma = check_nonnegative(sigma, "sigma")
    noise_free, jac, curv = _terms(teacher, student, x, loss, temperature)
    z = _noise(n_samples, x.shape[1:], sampling, seed, x.dtype)
    mc, stderr = _monte_carlo(teacher, student, x, sigma, z, loss, temperature, sampling != "iid")
    return _row(sigma, mc, stderr, noise_free, jac, curv, loss, n_samples, sampling)


def fit_slope(sigmas: Sequence[float], values: Sequence[float]) -> float:
    """Least-squares slope of ``log|values|`` against ``log sigma`` (the order of a power law)."""
    s = torch.tensor([float(v) for v in sigmas], dtype=torch.float64)
    v = torch.tensor([abs(float(v)) for v in values], dtype=torch.float64)
    if s.numel() < 2 or s.numel() != v.numel():
        raise ValueError("fit_slope needs at least two sigmas and one value per sigma")
    if bool((s <= 0).any()) or bool((v <= 0).any()):
        raise ValueError("fit_slope needs sigmas > 0 and non-zero values (a log-log fit)")
    ls, lv = s.log(), v.log()
    ls_c = ls - ls.mean()
    return float((ls_c * (lv - lv.mean())).sum() / ls_c.pow(2).sum())


def sigma_sweep(teacher: nn.Module, student: nn.Module, x: torch.Tensor, sigmas: Sequence[float],
                n_samples: int = 1000, loss: str = "squared", seed: int = 0, *,
                sampling: str = "moment_matched", temperature: float = 1.0) -> dict:
    """:func:`equivalence` at several sigmas with the same noise directions (common random numbers).

    Returns ``{"rows": [...], "slope_noise_free": ..., "slope_prediction": ...,
    "slope_proposition1": ...}``: fitted log-log slopes of ``|monte_carlo - noise_free|``
    (about 2: the sigma^2 term), ``|monte_carlo - prediction|`` (about 4: what the second-order
    expansion leaves) and ``|monte_carlo - proposition1|``.
    """
    _check_models(teacher, student, x, loss, temperature, n_samples, sampling)
    sigmas = [check_nonnegative(s, "sigmas") for s in sigmas]
    if len(sigmas) < 2:
        raise ValueError(f"sigmas must hold at least two values, got {len(sigmas)}")
    noise_free, jac, curv = _terms(teacher, student, x, loss, temperature)
    z = _noise(n_samples, x.shape[1:], sampling, seed, x.dtype)
    rows = []
    for sigma in sigmas:
        mc, stderr = _monte_carlo(teacher, student, x, sigma, z, loss, temperature, sampling != "iid")
        rows.append(_row(sigma, mc, stderr, noise_free, jac, curv, loss, n_samples, sampling))

    def slope(key):
        gaps = [r["monte_carlo"] - r[key] for r in rows]
        try:
            return fit_slope(sigmas, gaps)
        except ValueError:
            return float("nan")

    return {"rows": rows, "slope_noise_free": slope("noise_free"), "slope_prediction": slope("prediction"),
            "slope_proposition1": slope("proposition1")}


def same_linear_region(model: nn.Module, x: torch.Tensor, sigma: float, n_samples: int = 100, seed: int = 0) -> float:
    """Fraction of noisy copies ``x + sigma z`` whose ReLU on/off pattern equals that of ``x``.

    1.0 means every copy stayed in the linear region of ``x``, where Proposition 1 is exact.
    """
    check_batch(x, "x")
    sigma = check_nonnegative(sigma, "sigma")
    n = check_int(n_samples, "n_samples", minimum=1)
    patterns: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: patterns.append((out > 0).flatten(1)))
             for m in model.modules() if isinstance(m, nn.ReLU)]
    if not hooks:
        raise ValueError("model has no nn.ReLU modules: same_linear_region is for ReLU networks")
    try:
        with torch.no_grad():
            model(x)
            clean = torch.cat(patterns, dim=1)
            patterns.clear()
            z = torch.randn((n, *x.shape), generator=torch.Generator().manual_seed(seed), dtype=x.dtype).to(x.device)
            model((x.unsqueeze(0) + sigma * z).flatten(0, 1))
            noisy = torch.cat(patterns, dim=1).reshape(n, x.shape[0], -1)
    finally:
        for h in hooks:
            h.remove()
    same = (noisy == clean.unsqueeze(0)).all(dim=2)
    return float(same.double().mean())
