""""Check your understanding" exercises of the notebooks, with a checker.

    from jkt_lab import exercises as ex
    ex.question("01.cross_terms")          # the question again
    ex.check("01.cross_terms", 0.34)       # feedback: right, or what to look at
    ex.hint("01.cross_terms")

Two sorts of exercise:

* **questions** (``kind`` number, choice or set): the learner predicts or computes a value and
  :func:`check` compares it with the stored answer;
* **fill-in code** (``kind`` "code"): the learner completes a function in a notebook cell (its
  body starts as ``raise NotImplementedError("write me")``) and ``check(id, function)`` runs it
  against the library on random inputs. The feedback names what differs (shape, reduction, a
  missing ``create_graph``, a missing ``detach``...). :func:`use` returns the learner's function
  once it passes, else the library's own with a message, so the cells after a blank fill-in
  still run (the notebooks run green under nbval exactly as a learner first sees them).

Ids are ``"<notebook number>.<name>"``. :func:`check` returns a :class:`Feedback`: true when the
answer is right, and shown as its message. Answers are stored base64-encoded: hidden from a
casual glance, not from a determined reader (:func:`solution` reveals one on purpose).
"""
from __future__ import annotations

import base64
import copy
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Exercise", "Feedback", "EXERCISES", "check", "hint", "question", "solution", "exercises", "use",
           "code_exercises"]


def _enc(value) -> str:
    return base64.b64encode(json.dumps(value).encode()).decode()


def _dec(token: str):
    return json.loads(base64.b64decode(token.encode()).decode())


@dataclass(frozen=True)
class Exercise:
    """One exercise. ``kind``: ``"number"`` (within ``rel_tol``/``abs_tol``), ``"choice"`` (one
    letter of ``options``), ``"set"`` (a collection of names, order ignored) or ``"code"`` (a
    function, checked against the library; ``answer`` holds a solution's source and
    ``extra["function"]`` the function's name)."""

    id: str
    question: str
    kind: str
    answer: str                     # base64 of the JSON-encoded expected answer (code: the solution's source)
    hint: str
    explanation: str
    options: tuple[str, ...] = ()
    rel_tol: float = 1e-3
    abs_tol: float = 1e-9
    extra: dict = field(default_factory=dict)

    @property
    def expected(self) -> Any:
        return _dec(self.answer)


@dataclass(frozen=True)
class Feedback:
    """The checker's verdict: ``correct`` is True, False, or None (not answered yet)."""

    exercise: str
    correct: bool | None
    message: str

    def __bool__(self) -> bool:
        return bool(self.correct)

    def __repr__(self) -> str:
        return self.message

    def _repr_markdown_(self) -> str:
        mark = {True: "✅", False: "❌", None: "✏️"}[self.correct]
        return f"{mark} {self.message}"


class _Text(str):
    """A string that shows as itself (not as a quoted repr) in a notebook; code in a code block."""

    def __new__(cls, text: str, code: str | None = None):
        obj = super().__new__(cls, text)
        obj.code = code
        return obj

    def __repr__(self) -> str:
        return str(self)

    def _repr_markdown_(self) -> str:
        if self.code is None:
            return str(self)
        rest = str(self)[len(self.code):].strip()
        return f"```python\n{self.code.rstrip()}\n```\n\n{rest}"


def _ex(id, question, kind, answer, hint, explanation, **kw) -> Exercise:
    extra = kw.pop("extra", {})
    if kw.pop("fraction", False):
        extra = {**extra, "fraction": True}
    return Exercise(id, question, kind, _enc(answer), hint, explanation, extra=extra, **kw)


# --------------------------------------------------------------------------- fill-in code exercises
# A solution is plain source, run by the tests (and revealed by solution()); the checkers compare
# the learner's function with the library on random inputs and name what differs.

_SOLUTION_NORMALIZED_LOSS = '''\
def normalized_jacobian_loss(student_jac, teacher_jac):
    s = student_jac.flatten(2)                       # (batch, outputs, input dimensions)
    t = teacher_jac.detach().flatten(2)              # the teacher's Jacobian is a constant target
    s = s / s.norm(dim=2, keepdim=True)              # each (example, output) row to unit length
    t = t / t.norm(dim=2, keepdim=True)
    return (t - s).pow(2).sum(dim=2).sum(dim=1).mean()   # sum over outputs, mean over the batch
'''

_SOLUTION_MONTE_CARLO = '''\
def noisy_loss_mc(teacher, student, x, sigma, n_samples):
    z = torch.randn(n_samples, *x.shape, dtype=x.dtype)      # n_samples noisy copies of the batch
    noisy = (x + sigma * z).flatten(0, 1)                     # the same copy goes to both networks
    with torch.no_grad():
        return (teacher(noisy) - student(noisy)).pow(2).sum(dim=1).mean()   # sum over outputs
'''

_SOLUTION_TOP1_JACOBIAN = '''\
def top1_jacobian(model, x):
    x = x.detach().requires_grad_(True)
    logits = model(x)
    top1 = logits.argmax(dim=1, keepdim=True)       # (batch, 1): each example's most likely class
    chosen = logits.gather(1, top1).sum()           # eval mode: examples are independent, so the
    (jac,) = torch.autograd.grad(chosen, x)         # gradient of the sum is each example's own row
    return jac.unsqueeze(1)                         # (batch, 1, C, H, W)
'''

_SOLUTION_JACOBIAN_STEP = '''\
def jacobian_matching_step(student, teacher, x, optimizer, jacobian_weight=1.0):
    x = x.detach().requires_grad_(True)
    t_logits = teacher(x)
    top1 = t_logits.argmax(dim=1, keepdim=True)                       # the teacher chooses the output
    (j_t,) = torch.autograd.grad(t_logits.gather(1, top1).sum(), x)  # no graph: a constant target
    s_logits = student(x)
    (j_s,) = torch.autograd.grad(s_logits.gather(1, top1).sum(), x, create_graph=True)
    loss = jacobian_weight * losses.jacobian_loss(j_s.unsqueeze(1), j_t.detach().unsqueeze(1), "normalized")
    optimizer.zero_grad()
    loss.backward()                                                   # back-propagates through j_s
    optimizer.step()
    return float(loss.detach())
'''


class _Blank(Exception):
    """The learner's function still raises NotImplementedError."""


class _Raised(Exception):
    """The learner's function raised ``error`` (kept apart from a checker's own errors)."""

    def __init__(self, error: Exception):
        super().__init__(str(error))
        self.error = error


def _call(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except NotImplementedError as err:
        raise _Blank() from err
    except Exception as err:
        raise _Raised(err) from err


def _call_autograd(fn, *args, no_graph: str, **kwargs):
    """``(result, None)``, or ``(None, no_graph)`` when the learner's function hit autograd's
    "nothing to differentiate" error (a tensor without a graph)."""
    try:
        return _call(fn, *args, **kwargs), None
    except _Raised as err:
        if "does not require grad" in str(err) or "does not have a grad_fn" in str(err):
            return None, no_graph
        raise


def _tensor(value, what: str):
    """The learner's return value as a tensor, or a message saying what was expected."""
    import torch
    if isinstance(value, torch.Tensor):
        return value, None
    try:
        return torch.tensor(float(value), dtype=torch.float64), None
    except (TypeError, ValueError):
        return None, f"expected {what}, got {type(value).__name__}"


def _close(a, b, rtol=1e-5, atol=1e-8) -> bool:
    import torch
    return a.shape == b.shape and bool(torch.allclose(a.detach().to(b.dtype), b, rtol=rtol, atol=atol))


def _check_normalized_loss(fn) -> tuple[bool, str]:
    import torch
    import torch.nn.functional as F

    from .losses import jacobian_loss
    gen = torch.Generator().manual_seed(11)
    s = torch.randn(4, 3, 2, 5, 5, generator=gen, dtype=torch.float64)
    t = 7.0 * torch.randn(4, 3, 2, 5, 5, generator=gen, dtype=torch.float64)   # another scale
    s_in, t_in = s.clone().requires_grad_(True), t.clone().requires_grad_(True)
    out, problem = _tensor(_call(fn, s_in, t_in), "a 0-dim tensor (one number)")
    if problem:
        return False, problem
    ref = jacobian_loss(s, t, "normalized")
    if out.shape != ():
        if tuple(out.shape) == (4,):
            return False, "shape: you returned one value per example, shape (4,); take the mean over the batch."
        if tuple(out.shape) == (4, 3):
            return False, ("shape: you returned one value per example and output, shape (4, 3); sum over the "
                           "outputs, then take the mean over the batch.")
        return False, f"shape: expected a 0-dim tensor (one number), got shape {tuple(out.shape)}."
    if not _close(out, ref):
        sf, tf = s.flatten(2), t.flatten(2)
        unit = lambda a, dims: a / a.pow(2).sum(dim=dims, keepdim=True).sqrt()  # noqa: E731
        per_row = (F.normalize(tf, dim=2) - F.normalize(sf, dim=2)).pow(2).sum(dim=2)
        cos = (F.normalize(tf, dim=2) * F.normalize(sf, dim=2)).sum(dim=2)          # (batch, outputs)
        n_out = s.shape[1]
        known = [
            ((2 + 2 * cos).sum(dim=1).mean(),
             f"check the sign of the cosine term: your loss plus the library's is exactly {2 * 2 * n_out} (4 per "
             f"output, {n_out} outputs), so you computed 2 + 2 cos, the distance of J_T/||J_T|| to -J_S/||J_S||. "
             "Subtract the unit vectors (t - s) before squaring."),
            ((2 - cos).sum(dim=1).mean(),
             "a missing factor 2: that is 2 - cos; the squared distance of two unit vectors is "
             "||t||^2 + ||s||^2 - 2 t.s = 2 - 2 cos."),
            (cos.sum(dim=1).mean(), "that is the cosine itself (summed over outputs, averaged over the batch); the "
                                    "loss is 2 - 2 cos, which is 0 when the Jacobians point the same way."),
            (-cos.sum(dim=1).mean(), "that is minus the cosine; the loss is 2 - 2 cos (0 when the Jacobians align, "
                                     "4 when they point opposite ways)."),
            ((tf - sf).pow(2).sum(dim=2).sum(dim=1).mean(),
             "that is the squared distance of the raw Jacobians: normalise each one to unit length first "
             "(divide by its l2 norm over the input dimensions)."),
            (ref / 2, "that is 1 - cos, half the loss: the squared distance of two unit vectors is 2 - 2 cos."),
            (ref / 3, "reduction: you averaged over the outputs; the loss sums over the outputs and averages "
                      "over the batch."),
            (ref * 4, "reduction: you summed over the batch; average over the examples instead."),
            (per_row.mean() / 1, "reduction: you averaged over examples and outputs together; sum over the "
                                 "outputs, then average over the batch."),
            ((unit(tf, (0, 1, 2)) - unit(sf, (0, 1, 2))).pow(2).sum() / 4,
             "you normalised the whole batch at once; normalise each (example, output) row over its own "
             "input dimensions."),
            ((unit(tf, (1, 2)) - unit(sf, (1, 2))).pow(2).sum(dim=(1, 2)).mean(),
             "you normalised each example over all its outputs together; normalise each output's row on its own."),
            ((unit(t, -1) - unit(s, -1)).pow(2).sum(dim=(2, 3, 4)).sum(dim=1).mean(),
             "you normalised over the last axis only; flatten the input dimensions (C, H, W) first and "
             "normalise over all of them."),
        ]
        for value, message in known:
            if _close(out, value):
                return False, message
        return False, (f"on random Jacobians of shape (4, 3, 2, 5, 5) your loss is {float(out):.6g}, the library's "
                       f"{float(ref):.6g}.")
    if not out.requires_grad:
        return False, ("no gradient reaches student_jac: did you detach it or turn it into a float? The student "
                       "learns through this loss.")
    (g_t,) = torch.autograd.grad(out, t_in, retain_graph=True, allow_unused=True)
    if g_t is not None and bool(g_t.abs().max() > 0):
        return False, ("the value is right, but the loss sends gradients into teacher_jac: the teacher's Jacobian "
                       "is a constant target, use teacher_jac.detach().")
    return True, ""


def _toy_networks():
    from .nbtools import toy_pair
    return toy_pair("tanh", n_examples=8)


def _mc_reference(teacher, student, x, sigma, chunks: int = 10, n: int = 1000) -> tuple[float, float]:
    """The library's Monte-Carlo estimate (``losses.noisy_distillation_loss``, squared error) from
    ``chunks`` independent runs of ``n`` samples: ``(mean, standard error)``."""
    import statistics

    from .losses import noisy_distillation_loss
    values = [float(noisy_distillation_loss(student, teacher, x, sigma, n, loss="squared", seed=100 + i).detach())
              for i in range(chunks)]
    return statistics.fmean(values), statistics.stdev(values) / math.sqrt(chunks)


def _check_monte_carlo(fn) -> tuple[bool, str]:
    import torch

    from .losses import activation_loss
    teacher, student, x = _toy_networks()
    sigma, n = 0.5, 2000
    state = torch.random.get_rng_state()
    torch.manual_seed(1234)
    try:
        out, problem = _tensor(_call(fn, teacher, student, x.clone(), sigma, n), "a number (a 0-dim tensor or a float)")
    finally:
        torch.random.set_rng_state(state)
    if problem:
        return False, problem
    if out.numel() != 1:
        return False, (f"shape: expected one number, got shape {tuple(out.shape)}; average over the noise samples "
                       "and the examples.")
    value = float(out.detach())
    if not math.isfinite(value):
        return False, f"your estimate is {value}."
    ref, stderr = _mc_reference(teacher, student, x, sigma)
    tol = 5 * stderr * math.sqrt(1 + 10 * 1000 / n)    # both estimates' Monte-Carlo error, 5 standard errors
    if abs(value - ref) <= tol:
        return True, ""
    with torch.no_grad():
        noise_free = float(activation_loss(student(x), teacher(x)))
        gen = torch.Generator().manual_seed(3)
        z1, z2 = (torch.randn(n, *x.shape, generator=gen, dtype=x.dtype) for _ in range(2))
        split = float((teacher((x + sigma * z1).flatten(0, 1)) - student((x + sigma * z2).flatten(0, 1)))
                      .pow(2).sum(dim=1).mean())
    low, _ = _mc_reference(teacher, student, x, sigma ** 2, chunks=3)
    k, batch = 5, x.shape[0]
    known = [
        (noise_free, 1e-6, "your estimate is the noise-free loss: add the noise, x + sigma * z with "
                           "z ~ N(0, I) (torch.randn_like(x))."),
        (low, tol, "the noise is too small: z is scaled by sigma (the standard deviation), not by sigma^2 (the variance)."),
        (ref / k, tol / k, "reduction: sum the squared differences over the outputs; you averaged them."),
        (ref * batch, tol * batch, "reduction: average over the examples (and the noise samples); you summed over "
                                   "the examples."),
        (split, 3 * tol, "teacher and student must see the same noisy copy x + sigma z; you drew the noise twice."),
        (ref * n, tol * n, "reduction: you summed over the noise samples (the estimate grew with n_samples); average "
                           "over the n_samples draws."),
        (ref * n * batch, tol * n * batch, "reduction: you summed over the noise samples and the examples; average "
                                           "over both (an expectation is a mean)."),
    ]
    for target, within, message in known:
        if abs(value - target) <= within:
            return False, message
    return False, (f"at sigma = {sigma} on notebook 01's tanh pair your estimate is {value:.5g}; the library's "
                   f"Monte Carlo gives {ref:.5g} ± {stderr:.1g} (noise-free {noise_free:.5g}).")


def _image_models(seed_teacher: int = 0, seed_student: int = 1):
    import torch

    from .models import build_model
    teacher = build_model("tiny", 10, width=4, seed=seed_teacher).eval()
    student = build_model("tiny", 10, width=4, seed=seed_student).eval()
    x = torch.rand(6, 3, 12, 12, generator=torch.Generator().manual_seed(5))
    return teacher, student, x


def _check_top1_jacobian(fn) -> tuple[bool, str]:
    import torch

    from .jacobian import jacobian
    model, _, x = _image_models()
    result, problem = _call_autograd(fn, model, x.clone(), no_graph=(
        "x must require grad before the forward pass (x = x.detach().requires_grad_(True)), else autograd has "
        "nothing to differentiate with respect to."))
    out, problem = (None, problem) if problem else _tensor(result, "a tensor of shape (batch, 1, C, H, W)")
    if problem:
        return False, problem
    ref = jacobian(model, x, "top1")[0]
    shape = tuple(out.shape)
    if shape == tuple(x.shape):
        return False, ("shape: you returned (batch, C, H, W); the library's layout is (batch, 1, C, H, W), one row "
                       "per matched output (jac.unsqueeze(1)), the shape jacobian_loss takes.")
    if shape == (x.shape[0], 10, *x.shape[1:]):
        return False, "shape: that is the Jacobian of every output; keep only each example's top-1 logit."
    if shape != tuple(ref.shape):
        return False, f"shape: expected {tuple(ref.shape)} for x of shape {tuple(x.shape)}, got {shape}."
    if _close(out, ref, 1e-4, 1e-7):
        return True, ""
    xg = x.clone().requires_grad_(True)
    logits = model(xg)
    candidates = {
        "sign": -ref,
        "argmin": torch.autograd.grad(logits.min(1).values.sum(), xg, retain_graph=True)[0].unsqueeze(1),
        "mean": ref / x.shape[0],
        "all": torch.autograd.grad(logits.sum(), xg, retain_graph=True)[0].unsqueeze(1),
        "prob": torch.autograd.grad(logits.softmax(1).max(1).values.sum(), xg, retain_graph=True)[0].unsqueeze(1),
        "logprob": torch.autograd.grad(logits.log_softmax(1).max(1).values.sum(), xg)[0].unsqueeze(1),
    }
    messages = {
        "sign": ("check the sign: your Jacobian is exactly minus the library's (the gradient of -logit, or a "
                 "negated result); differentiate the top-1 logit itself."),
        "argmin": "you took each example's smallest logit (min / argmin); the top-1 output is the largest (argmax).",
        "mean": ("reduction: you averaged the top-1 logits over the batch, so every Jacobian is 1/batch too small; "
                 "sum them (in eval mode examples are independent: row i of the gradient of the sum is example i's own)."),
        "all": "you differentiated the sum of all logits; select each example's top-1 logit first (logits.gather).",
        "prob": "you differentiated the softmax probability; differentiate the top-1 logit itself.",
        "logprob": "you differentiated the log-probability; differentiate the top-1 logit itself.",
    }
    for name, value in candidates.items():
        if _close(out, value, 1e-4, 1e-7):
            return False, messages[name]
    nonzero = int((out.flatten(1).abs().amax(dim=1) > 0).sum())
    if nonzero == 1:
        return False, ("only one example got a non-zero Jacobian: take the maximum per example (dim=1), not over "
                       "the whole batch.")
    return False, "the values differ from the library's top-1 Jacobian (jkt_lab.jacobian.jacobian(model, x, 'top1'))."


def _library_step(student, teacher, x, optimizer, jacobian_weight=1.0):
    """The reference for ``03.jacobian_step``: the library's Jacobian term alone, one SGD step."""
    from .jacobian import matched_jacobians
    from .losses import jacobian_loss
    j_s, j_t, _, _ = matched_jacobians(student, teacher, x, "top1", create_graph=True)
    loss = jacobian_weight * jacobian_loss(j_s, j_t, "normalized")
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def _check_jacobian_step(fn) -> tuple[bool, str]:
    import torch

    from .losses import jacobian_loss
    teacher, student, x = _image_models()
    lr, weight = 0.5, 0.5

    def fresh():
        s = copy.deepcopy(student)
        return s, torch.optim.SGD(s.parameters(), lr=lr)

    ref_student, ref_opt = fresh()
    ref_loss = _library_step(ref_student, teacher, x, ref_opt, jacobian_weight=weight)
    mine, opt = fresh()
    for p in mine.parameters():
        p.grad = torch.ones_like(p)        # stale gradients: only zero_grad() removes them
    for p in teacher.parameters():
        p.grad = None
    result, problem = _call_autograd(fn, mine, teacher, x.clone(), opt, jacobian_weight=weight, no_graph=(
        "loss.backward() found no graph: compute the student's Jacobian with create_graph=True (double "
        "backpropagation), else it is a constant and the student gets no gradient."))
    loss, problem = (None, problem) if problem else _tensor(result, "the loss (a float or a 0-dim tensor)")
    if problem:
        return False, problem
    if any(p.grad is not None and bool(p.grad.abs().max() > 0) for p in teacher.parameters()):
        return False, ("the teacher received gradients: compute its Jacobian without create_graph (or .detach() "
                       "it); it is a constant target, and only the student learns.")
    before = dict(student.named_parameters())
    after_ref, after = dict(ref_student.named_parameters()), dict(mine.named_parameters())
    moved = any(not torch.equal(after[k], before[k]) for k in before)
    if not moved:
        if all(p.grad is not None for p in mine.parameters()):
            return False, "the student did not move: call optimizer.step() after loss.backward()."
        return False, "the student did not move: call loss.backward() and optimizer.step()."
    if not math.isclose(float(loss.detach()), ref_loss, rel_tol=1e-4, abs_tol=1e-6):
        from .jacobian import jacobian
        own = student(x).argmax(dim=1)                 # the student's top-1 instead of the teacher's
        student_choice = weight * float(jacobian_loss(jacobian(student, x, own)[0], jacobian(teacher, x, own)[0]))
        if math.isclose(float(loss), student_choice, rel_tol=1e-4):
            return False, ("both Jacobians must be of the output the teacher chooses (the teacher's top-1 class); "
                           "you used the student's.")
        if math.isclose(float(loss), ref_loss / weight, rel_tol=1e-4):
            return False, "multiply the loss by jacobian_weight."
        if math.isclose(float(loss) + ref_loss, 4 * weight, rel_tol=1e-4):
            return False, (f"check the sign of the cosine term: your loss ({float(loss):.6g}) plus the library's "
                           f"({ref_loss:.6g}) is exactly 4 x jacobian_weight = {4 * weight:g}, so you computed "
                           "jacobian_weight * (2 + 2 cos); the loss is jacobian_weight * (2 - 2 cos).")
        cos = 1 - ref_loss / (2 * weight)                 # the batch mean cosine of the library's step
        if math.isclose(float(loss), ref_loss / 2, rel_tol=1e-4):
            return False, ("a missing factor 2: that is jacobian_weight * (1 - cos), half the loss; the normalised "
                           "loss is the squared distance of unit vectors, 2 - 2 cos.")
        if math.isclose(float(loss), weight * (2 - cos), rel_tol=1e-4):
            return False, ("a missing factor 2: that is jacobian_weight * (2 - cos); the squared distance of two unit "
                           "vectors is 2 - 2 cos.")
        if math.isclose(float(loss), ref_loss * x.shape[0], rel_tol=1e-4):
            return False, (f"reduction: you summed over the {x.shape[0]} examples of the batch; average over the "
                           "batch (the library's loss is a batch mean).")
        j_s, j_t = jacobian(student, x, "top1", reference=teacher(x).detach())[0], jacobian(teacher, x, "top1")[0]
        if math.isclose(float(loss), weight * float(jacobian_loss(j_s, j_t, "squared")), rel_tol=1e-4):
            return False, ("normalise the Jacobians first: that is the squared distance of the raw Jacobians; divide "
                           "each by its norm (the loss is 2 - 2 cos, blind to either Jacobian's scale).")
        return False, f"your loss is {float(loss):.6g}, the library's {ref_loss:.6g} (same student, teacher and batch)."
    stale = all(torch.allclose(after[k], after_ref[k] - lr, atol=1e-5) for k in before)
    if stale:
        return False, "call optimizer.zero_grad() before loss.backward(): gradients of earlier steps were added in."
    if not all(torch.allclose(after[k], after_ref[k], rtol=1e-4, atol=1e-6) for k in before):
        return False, "the loss is right but the step differs from the library's: back-propagate the loss once, then step."
    return True, ""


def _library_monte_carlo(teacher, student, x, sigma, n_samples):
    from .losses import noisy_distillation_loss
    return noisy_distillation_loss(student, teacher, x, sigma, n_samples, loss="squared", seed=0).detach()


def _library_normalized_loss(student_jac, teacher_jac):
    from .losses import jacobian_loss
    return jacobian_loss(student_jac, teacher_jac, "normalized")


def _library_top1_jacobian(model, x):
    from .jacobian import jacobian
    return jacobian(model, x, "top1")[0]


#: id -> (checker, the library's function with the same signature, how the fallback is named)
_CODE: dict[str, tuple[Callable, Callable, str]] = {
    "01.normalized_loss": (_check_normalized_loss, _library_normalized_loss,
                           'losses.jacobian_loss(student_jac, teacher_jac, "normalized")'),
    "01.monte_carlo": (_check_monte_carlo, _library_monte_carlo,
                       'losses.noisy_distillation_loss(student, teacher, x, sigma, n_samples, loss="squared")'),
    "02.top1_jacobian": (_check_top1_jacobian, _library_top1_jacobian, 'jkt_lab.jacobian.jacobian(model, x, "top1")'),
    "03.jacobian_step": (_check_jacobian_step, _library_step,
                         "jacobian.matched_jacobians + losses.jacobian_loss, one SGD step"),
}

_CODE_LIST = [
    _ex("01.normalized_loss",
        "Write normalized_jacobian_loss(student_jac, teacher_jac), the loss of Section 3.2. Both arguments have "
        "shape (batch, outputs, *input_shape). Return a 0-dim tensor: the mean over the batch of the sum over "
        "outputs of ||J_T/||J_T|| - J_S/||J_S|| ||^2, each Jacobian row normalised over its input dimensions.",
        "code", _SOLUTION_NORMALIZED_LOSS,
        "Flatten the input dimensions (.flatten(2)), divide each row by its norm (norm(dim=2, keepdim=True)), take "
        "the squared distance, sum over outputs, mean over the batch. The teacher's Jacobian is a target: detach it.",
        "Normalising first makes the loss 2 - 2 cos(J_T, J_S): bounded by 4 and blind to either Jacobian's scale. "
        "(The library's version also guards against an all-zero Jacobian with a tiny eps.)",
        extra={"function": "normalized_jacobian_loss"}),
    _ex("01.monte_carlo",
        "Write noisy_loss_mc(teacher, student, x, sigma, n_samples): a Monte-Carlo estimate of "
        "E_z[ sum_i (T_i(x + sigma z) - S_i(x + sigma z))^2 ], z ~ N(0, I), averaged over the examples of x "
        "(the left-hand side of Proposition 1), from n_samples noise draws. Return one number.",
        "code", _SOLUTION_MONTE_CARLO,
        "Draw z with torch.randn (one per sample and example), feed the same x + sigma * z to both networks, sum "
        "the squared differences over the outputs, then average over samples and examples.",
        "An average over noisy copies: its error shrinks like 1/sqrt(n_samples), which is why notebook 01 "
        "measures the sigma^2 term with moment-matched samples instead.",
        extra={"function": "noisy_loss_mc"}),
    _ex("02.top1_jacobian",
        "Write top1_jacobian(model, x): for a batch x (batch, C, H, W) and a model in eval mode, the gradient of "
        "each example's top-1 logit with respect to its input, shape (batch, 1, C, H, W). Use torch.autograd.grad.",
        "code", _SOLUTION_TOP1_JACOBIAN,
        "x.detach().requires_grad_(True); logits = model(x); pick each row's largest logit (argmax, then gather); "
        "sum them and call torch.autograd.grad(that_sum, x); add the outputs axis with unsqueeze(1).",
        "One backward pass gives every example's row because, in eval mode, example i's logit depends on x_i "
        "only. (In train mode BatchNorm couples the examples of a batch; the library's training step handles it.)",
        extra={"function": "top1_jacobian"}),
    _ex("03.jacobian_step",
        "Write jacobian_matching_step(student, teacher, x, optimizer, jacobian_weight=1.0): one optimiser step on "
        "jacobian_weight * (2 - 2 cos) between the student's and the teacher's Jacobians of the teacher's top-1 "
        "output (models in eval mode). Return the loss as a float.",
        "code", _SOLUTION_JACOBIAN_STEP,
        "Two autograd.grad calls: the teacher's without a graph (a constant), the student's with create_graph=True "
        "so the loss can back-propagate through it. Then zero_grad, backward, step.",
        "create_graph=True keeps the graph of the student's backward pass, so loss.backward() differentiates the "
        "Jacobian itself with respect to the weights (double backpropagation, about twice a KD step's cost).",
        extra={"function": "jacobian_matching_step"}),
]


def _check_code(e: Exercise, fn) -> Feedback:
    if not callable(fn):
        return Feedback(e.id, False, f"{e.id}: expected your function ({e.extra['function']}), got {fn!r}.")
    checker = _CODE[e.id][0]
    try:
        ok, why = checker(fn)
    except _Blank:
        return Feedback(e.id, None, f"{e.id}: not written yet: {e.extra['function']} still raises "
                                    f"NotImplementedError. Write its body, then run this cell again "
                                    f"(hint({e.id!r}) gives a hint, solution({e.id!r}) shows one).")
    except _Raised as raised:  # the learner's code failed: say how, and where to look
        err = raised.error
        return Feedback(e.id, False, f"{e.id}: your function raised {type(err).__name__}: {err}. Hint: {e.hint}")
    if ok:
        return Feedback(e.id, True, f"{e.id}: correct: it agrees with the library on random inputs. {e.explanation}")
    return Feedback(e.id, False, f"{e.id}: not quite: {why}")


def use(exercise_id: str, fn: Callable) -> Callable:
    """The learner's function when it passes :func:`check`, else the library's own (with a message),
    so that the cells after a fill-in run either way."""
    e = _get(exercise_id)
    if e.kind != "code":
        raise ValueError(f"use() takes a fill-in code exercise ({', '.join(code_exercises())}), got {exercise_id!r}")
    feedback = check(exercise_id, fn)
    name = e.extra["function"]
    if feedback.correct:
        print(f"{exercise_id}: the cells below use your {name}.")
        return fn
    state = "is not written yet" if feedback.correct is None else "does not pass its check yet"
    print(f"{exercise_id}: your {name} {state}, so the cells below use the library's: {_CODE[exercise_id][2]}.")
    return _CODE[exercise_id][1]


_LIST = _CODE_LIST + [
    # ---------------------------------------------------------------- 01 noise and Jacobians
    _ex("01.cross_terms",
        "One output, first order: T(x + sigma z) - S(x + sigma z) = f + sigma g^T z with z ~ N(0, I). "
        "Take f = 0.5, g = (1, 2, 2), sigma = 0.1. What is E[(f + sigma g^T z)^2]?",
        "number", 0.34,
        "Expand the square: f^2 + 2 sigma f E[g^T z] + sigma^2 E[(g^T z)^2]. What are E[z] and E[z z^T]?",
        "E[z] = 0 kills the cross term and E[z z^T] = I gives sigma^2 ||g||^2: 0.25 + 0.01 * 9 = 0.34."),
    _ex("01.sigma4",
        "Predict before you run the sweep: the terms of order sigma^3 are cubic in z, so their expectation "
        "vanishes. Which power of sigma does the first term after sigma^2 carry (the slope of |MC - prediction| "
        "on the log-log plot below)?",
        "number", 4,
        "Odd moments of a centred Gaussian vanish; the next even moment is E[z_i z_j z_k z_l].",
        "Only even orders survive: the remainder after the sigma^2 term is O(sigma^4), hence slope 4 for "
        "|MC - prediction| on the log-log plot."),
    _ex("01.relu_curvature",
        "Squared loss on a ReLU network, x + sigma z inside one linear region: what is the curvature term "
        "sum_i f_i * Laplacian(f_i)?",
        "number", 0,
        "Inside a linear region f is affine in x. What is the second derivative of an affine function?",
        "f is affine there, so every Laplacian is 0: Proposition 1 is the whole story (and the loss is "
        "exactly quadratic in the noise, so nothing of order sigma^4 is left either).", abs_tol=1e-12),
    _ex("01.normalized_max",
        "What is the largest value the normalised Jacobian loss ||a/||a|| - b/||b|| ||^2 can take?",
        "number", 4,
        "The loss equals 2 - 2 cos(a, b). Which angle makes it largest?",
        "cos = -1 (opposite directions) gives 2 - 2(-1) = 4: the loss is bounded, whatever the scale."),
    _ex("01.scale",
        "Multiply the student's Jacobian by 10. By what factor does the normalised Jacobian loss change?",
        "number", 1,
        "Normalisation divides by the norm first.",
        "Not at all (factor 1): 2 - 2 cos depends on directions only. The squared loss would change, "
        "which is why the paper normalises: teacher and student logits need not share a scale."),
    # ---------------------------------------------------------------- 02 saliency
    _ex("02.random_projection",
        "For v ~ N(0, I), what is E[(v^T a)^2] when a = (3, 4)?",
        "number", 25,
        "E[(v^T a)^2] = a^T E[v v^T] a.",
        "a^T I a = ||a||^2 = 25: a random projection of (J_T - J_S) is an unbiased estimate of the squared "
        "Frobenius distance of all outputs, for the cost of one backward pass."),
    _ex("02.chance",
        "mask_overlap also reports 'chance'. If the object mask covers 12% of an image, what overlap (a "
        "fraction) does a random saliency map get on average?",
        "number", 0.12,
        "A random map picks its top pixels uniformly.",
        "Uniformly chosen pixels fall on the object with probability equal to the object's area: 0.12.",
        fraction=True),
    _ex("02.weak_test",
        "mask_overlap's 'chance' is the object's area: what a map of random values gets. The teacher's saliency "
        "beats it. Which other maps beat it too, although they never learned anything about the objects?",
        "choice", "b",
        "Where do the objects of the shapes dataset sit, and what would a map that never looks at the image score?",
        "(b): in notebook 02 an untrained network of the teacher's architecture and a fixed Gaussian blob in the "
        "image centre both score far above chance (the blob even above the teacher), so 'beats chance' is no "
        "evidence that a model looks at the object. Compare with baselines measured the same way "
        "(saliency.overlap_baselines).",
        options=("(a) none: beating chance shows that a model attends to the object",
                 "(b) an untrained network of the same architecture, and a fixed blob in the image centre",
                 "(c) only a map equal to the ground-truth mask")),
    _ex("02.top1_vs_label",
        "For an image the teacher gets wrong, which Jacobians differ?",
        "choice", "b",
        "top1 follows the teacher's prediction, label follows the truth.",
        "(b): top1 differentiates the predicted class and label the true class; they differ exactly when "
        "the teacher is wrong.",
        options=("(a) none: top1 and label always agree",
                 "(b) top1 and label: one is the predicted class, the other the true class",
                 "(c) only random and all")),
    # ---------------------------------------------------------------- 03 distillation
    _ex("03.terms",
        "Which named loss terms does the method 'kd+jacobian' add up? (a list of names)",
        "set", ["ce", "jacobian", "kd"],
        "Look at a history row of a kd+jacobian run: its keys 'loss/<term>' name the terms.",
        "ce (labels) + kd (Hinton distillation) + jacobian (normalised Jacobian matching, Section 3.2)."),
    _ex("03.per_class",
        "With per_class=10 on a ten-class dataset (CIFAR-10 or shapes), how many labelled training images "
        "does the student see?",
        "number", 100,
        "per_class is per class.",
        "10 classes x 10 images = 100: the few-shot setting that the paper's claim is about."),
    _ex("03.temperature",
        "kd_loss multiplies the KL divergence by T^2. Why?",
        "choice", "a",
        "How does the gradient of softmax(s/T) with respect to s scale with T?",
        "(a): the soft targets' gradients shrink like 1/T^2; multiplying by T^2 keeps the distillation "
        "term's gradient comparable to the cross-entropy's as T changes (Hinton et al.).",
        options=("(a) so that its gradients keep their size when T changes",
                 "(b) to make the loss positive",
                 "(c) to make the softmax cheaper")),
    # ---------------------------------------------------------------- 04 robustness
    _ex("04.first_order",
        "To first order, S(x + sigma z) - S(x) = sigma J z (one output, J a row). For ||J||^2 = 50 and "
        "sigma = 0.1, what is the variance of the output change?",
        "number", 0.5,
        "Var(sigma J z) = sigma^2 J E[z z^T] J^T.",
        "sigma^2 ||J||^2 = 0.01 * 50 = 0.5: the Jacobian's norm sets how far noise moves the output."),
    _ex("04.grey_levels",
        "Noise sigma = 0.1 on the [0, 1] pixel scale is how many grey levels of a 0..255 image?",
        "number", 25.5,
        "Scale by 255.",
        "0.1 * 255 = 25.5 grey levels: strong noise, clearly visible."),
    _ex("04.norm_unmoved",
        "Predict before you look: each student below is trained with kd plus one more term. Compared with the kd "
        "student of the same teacher, whose input-Jacobian norm (top-1 output, test images) will change the least?",
        "choice", "a",
        "Which loss keeps the same value when the student's Jacobian is multiplied by any c > 0?",
        "(a): the normalised loss 2 - 2 cos sees only the Jacobian's direction, so nothing in it pulls the norm "
        "(on CIFAR-10 in results/robustness-cifar10: x0.91 of kd's norm, against x0.47 for the squared loss and "
        "x0.38 for the norm penalty). Robustness to isotropic noise depends on the norm (04.first_order).",
        options=("(a) kd+jacobian (normalised)", "(b) kd+jacobian (squared)", "(c) kd+jacobian_norm")),
    _ex("04.scale_invariance",
        "The teacher's top-1 Jacobian is J_T = (6, 8). Student A has J_A = (3, 4), student B has J_B = (30, 40): "
        "both have normalised Jacobian loss 0. Under input noise of std sigma, by what factor is the variance of "
        "B's first-order output change larger than A's?",
        "number", 100,
        "The variance is sigma^2 ||J||^2 (04.first_order). What is ||J_B|| / ||J_A||?",
        "||J_B||^2 / ||J_A||^2 = 2500 / 25 = 100. The normalised loss cannot tell A from B; the squared loss can "
        "(||J_A - J_T||^2 = 25, ||J_B - J_T||^2 = 1600), and so can a penalty on ||J_S||^2."),
    _ex("04.mechanism",
        "In the mechanism figure each point is a student (accuracy at sigma 0.1 against its input-Jacobian norm, "
        "log scale); on CIFAR-10 the rank correlation over the students of one panel is about -0.5. Which reading do the "
        "numbers support?",
        "choice", "b",
        "A correlation of -1 would put every student on one falling curve. Which students sit off it, and what else "
        "differs between them?",
        "(b): students with smaller Jacobian norms tend to be more accurate under noise, but not in order: the "
        "norm penalty has the smallest norms and not always the best accuracy, and the students of the "
        "noise-trained teacher do better at the same norm. The direction of the Jacobian (the cosine to a robust "
        "teacher) and the clean accuracy matter too; a correlation alone does not show that the norm causes it.",
        options=("(a) the Jacobian norm decides robustness: the smaller, the more robust, always",
                 "(b) smaller norms go with better robust accuracy, but the norm is not the whole story",
                 "(c) the norm and robust accuracy are unrelated")),
    # ---------------------------------------------------------------- 05 transfer
    _ex("05.lwf_data",
        "Learning without Forgetting distils the old head's outputs on which data?",
        "choice", "b",
        "LwF has no access to the old task's data.",
        "(b): the new task's images, run through the original network before training; that makes LwF a "
        "distillation on the target data, where Jacobian matching can be added (Section 4).",
        options=("(a) the old task's data", "(b) the new task's data", "(c) random noise images")),
    _ex("05.attention",
        "Features A with C channels, all equal to 2 at every position of a 4x4 grid. The attention map is "
        "Q_j = mean_c |A_cj|^2, then l2-normalised over the 16 positions. What is each entry?",
        "number", 0.25,
        "Before normalising, Q is constant (4). A constant vector of length 16, normalised, has entries ...",
        "1/sqrt(16) = 0.25: attention maps are compared after normalisation, so only their shape counts."),
    _ex("05.jacobian_rows",
        "at+jacobian pairs the feature taps of student and teacher (the tiny nets have 3 each). How many "
        "attention-map Jacobians does it compute per example and per network?",
        "number", 3,
        "One Jacobian per attention map: the gradient of its largest value.",
        "3: one per paired feature map, each the input gradient of that map's maximum."),
]

EXERCISES: dict[str, Exercise] = {e.id: e for e in _LIST}


def _get(exercise_id: str) -> Exercise:
    if exercise_id not in EXERCISES:
        raise ValueError(f"unknown exercise {exercise_id!r}; valid ids: {', '.join(EXERCISES)}")
    return EXERCISES[exercise_id]


def exercises(notebook: str | int | None = None) -> list[str]:
    """Exercise ids, all or those of one notebook (``1`` or ``"01"``)."""
    if notebook is None:
        return list(EXERCISES)
    prefix = f"{int(notebook):02d}." if str(notebook).isdigit() else f"{notebook}."
    return [k for k in EXERCISES if k.startswith(prefix)]


def code_exercises(notebook: str | int | None = None) -> list[str]:
    """Ids of the fill-in code exercises (all, or one notebook's)."""
    return [k for k in exercises(notebook) if EXERCISES[k].kind == "code"]


def question(exercise_id: str) -> str:
    """The question text (with its options, for multiple choice)."""
    e = _get(exercise_id)
    return _Text("\n".join([e.question, *e.options]))


def hint(exercise_id: str) -> str:
    return _Text(_get(exercise_id).hint)


def solution(exercise_id: str) -> str:
    """The expected answer and why (spoils the exercise); for a fill-in, a solution's code."""
    e = _get(exercise_id)
    if e.kind == "code":
        return _Text(f"{e.expected}\n{e.explanation}", code=e.expected)
    return _Text(f"answer: {e.expected!r}. {e.explanation}")


def _as_number(answer):
    try:
        value = float(answer)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def check(exercise_id: str, answer) -> Feedback:
    """Compare ``answer`` with the expected one (for a fill-in: run the function against the
    library); returns :class:`Feedback` (true when right)."""
    e = _get(exercise_id)
    if answer is None or answer is Ellipsis:
        what = "your function" if e.kind == "code" else "your answer"
        return Feedback(e.id, None, f"{e.id}: not answered yet: replace None with {what} "
                                    f"(hint({e.id!r}) gives a hint).")
    if e.kind == "code":
        return _check_code(e, answer)
    expected = e.expected
    if e.kind == "number":
        value = _as_number(answer)
        if value is None:
            return Feedback(e.id, False, f"{e.id}: expected a number, got {answer!r}.")
        ok = math.isclose(value, float(expected), rel_tol=e.rel_tol, abs_tol=e.abs_tol)
        if not ok and e.extra.get("fraction") and math.isclose(value, 100 * float(expected), rel_tol=e.rel_tol):
            return Feedback(e.id, False, f"{e.id}: a fraction between 0 and 1 is expected, not a percentage: "
                                         f"{value:g}% is {value / 100:g}.")
    elif e.kind == "choice":
        given = str(answer).strip().lower().strip("()")
        letters = [o.split(")")[0].strip("( ").lower() for o in e.options]
        if given not in letters:
            return Feedback(e.id, False, f"{e.id}: answer with one of the letters {', '.join(letters)}.")
        ok = given == expected
    elif e.kind == "set":
        if isinstance(answer, str) or not hasattr(answer, "__iter__"):
            return Feedback(e.id, False, f"{e.id}: expected a list of names, got {answer!r}.")
        ok = {str(a).strip().lower() for a in answer} == set(expected)
    else:  # pragma: no cover - the table above holds only these kinds
        raise ValueError(f"exercise {e.id} has unknown kind {e.kind!r}")
    if ok:
        return Feedback(e.id, True, f"{e.id}: correct. {e.explanation}")
    return Feedback(e.id, False, f"{e.id}: not quite ({answer!r}). Hint: {e.hint}")
