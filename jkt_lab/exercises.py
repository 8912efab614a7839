""""Check your understanding" exercises of the notebooks, with a checker.

    from jkt_lab.exercises import check, hint, question
    question("01.cross_terms")          # the question again
    check("01.cross_terms", 0.34)       # feedback: right, or what to look at
    hint("01.cross_terms")

Ids are ``"<notebook number>.<name>"``. :func:`check` returns a :class:`Feedback`: true when the
answer is right, and shown as its message. Answers are stored base64-encoded below: hidden from a
casual glance, not from a determined reader (:func:`solution` reveals one on purpose).
"""
from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Exercise", "Feedback", "EXERCISES", "check", "hint", "question", "solution", "exercises"]


def _enc(value) -> str:
    return base64.b64encode(json.dumps(value).encode()).decode()


def _dec(token: str):
    return json.loads(base64.b64decode(token.encode()).decode())


@dataclass(frozen=True)
class Exercise:
    """One question. ``kind``: ``"number"`` (within ``rel_tol``/``abs_tol``), ``"choice"`` (one
    letter of ``options``), ``"set"`` (a collection of names, order ignored)."""

    id: str
    question: str
    kind: str
    answer: str                     # base64 of the JSON-encoded expected answer
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
        return self.message


def _ex(id, question, kind, answer, hint, explanation, **kw) -> Exercise:
    return Exercise(id, question, kind, _enc(answer), hint, explanation, **kw)


_LIST = [
    # ---------------------------------------------------------------- 01 noise and Jacobians
    _ex("01.cross_terms",
        "One output, first order: T(x + sigma z) - S(x + sigma z) = f + sigma g^T z with z ~ N(0, I). "
        "Take f = 0.5, g = (1, 2, 2), sigma = 0.1. What is E[(f + sigma g^T z)^2]?",
        "number", 0.34,
        "Expand the square: f^2 + 2 sigma f E[g^T z] + sigma^2 E[(g^T z)^2]. What are E[z] and E[z z^T]?",
        "E[z] = 0 kills the cross term and E[z z^T] = I gives sigma^2 ||g||^2: 0.25 + 0.01 * 9 = 0.34."),
    _ex("01.sigma4",
        "The third-order Taylor term is cubic in z, so its expectation vanishes. Which power of sigma "
        "does the first term after sigma^2 carry?",
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
        "Uniformly chosen pixels fall on the object with probability equal to the object's area: 0.12."),
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
        "With per_class=10 on the 10 classes of the shapes dataset, how many labelled training images does "
        "the student see?",
        "number", 100,
        "per_class is per class.",
        "10 classes x 10 images = 100: the few-shot setting where the teacher's Jacobians help most."),
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


def question(exercise_id: str) -> str:
    """The question text (with its options, for multiple choice)."""
    e = _get(exercise_id)
    return "\n".join([e.question, *e.options])


def hint(exercise_id: str) -> str:
    return _get(exercise_id).hint


def solution(exercise_id: str) -> str:
    """The expected answer and why (spoils the exercise)."""
    e = _get(exercise_id)
    return f"answer: {e.expected!r}. {e.explanation}"


def _as_number(answer):
    try:
        value = float(answer)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def check(exercise_id: str, answer) -> Feedback:
    """Compare ``answer`` with the expected one; returns :class:`Feedback` (true when right)."""
    e = _get(exercise_id)
    if answer is None or answer is Ellipsis:
        return Feedback(e.id, None, f"{e.id}: not answered yet: replace None with your answer "
                                    f"(hint({e.id!r}) gives a hint).")
    expected = e.expected
    if e.kind == "number":
        value = _as_number(answer)
        if value is None:
            return Feedback(e.id, False, f"{e.id}: expected a number, got {answer!r}.")
        ok = math.isclose(value, float(expected), rel_tol=e.rel_tol, abs_tol=e.abs_tol)
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
