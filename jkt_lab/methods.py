"""Training objectives, one small class each, in a registry by name.

Each method's :meth:`Method.loss` takes a batch and returns ``(student_logits, terms)``, where
``terms`` maps a name (``"ce"``, ``"kd"``, ``"jacobian"``, ...) to a weighted scalar; the
training loss is their sum. The teacher stays in eval mode and is never updated. Jacobian
terms use each example's own Jacobian, also with BatchNorm in train mode
(:func:`~jkt_lab.jacobian.jacobian_forward`: batch statistics held constant in a second pass;
the logits that ce and kd train through come from the ordinary forward pass).

==================  ==============================================================  =======
name                terms                                                           paper
==================  ==============================================================  =======
ce                  ce_weight * cross-entropy on labels (the student alone)         Tab. 1
kd                  ce + Hinton distillation at ``temperature``                     Sec. 5
activations         ce + squared error of logits (activation matching)              Eq. 1
kd+jacobian         ce + kd + jacobian_weight * Jacobian matching                   Sec. 3.2
activations+jacobian ce + activations + jacobian_weight * Jacobian matching          Prop. 1
noise               ce + distillation on noisy copies x + sigma z                   Sec. 3
kd+jacobian_norm    ce + kd + jacobian_weight * ||J_S||^2 of the chosen output      ref. [1]
                    (double backpropagation, Drucker & LeCun 1992; no teacher
                    Jacobian)
at                  ce + attention transfer (Zagoruyko & Komodakis)                 Sec. 4.3
at+jacobian         ce + at + jacobian_weight * attention-map Jacobian matching     Sec. 4.3
lwf                 ce on the new head + distillation of the old head (Li & Hoiem)  Sec. 4.3
                    at ``temperature`` (one source: Config.temperature, default 4)
==================  ==============================================================  =======
"""
from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from . import losses
from .config import Config
from .jacobian import jacobian_forward, matched_jacobians, output_jacobian, projections, teacher_jacobian
from .teacher_cache import TeacherCache

__all__ = ["METHODS", "Method", "register", "get_method", "make_method", "tap_pairs"]

METHODS: dict[str, type["Method"]] = {}


def register(name: str) -> Callable[[type["Method"]], type["Method"]]:
    def deco(cls):
        cls.name = name
        METHODS[name] = cls
        return cls
    return deco


def get_method(name: str) -> type["Method"]:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; valid methods: {', '.join(METHODS)}")
    return METHODS[name]


def make_method(name: str, student: nn.Module, teacher: nn.Module | None, config: Config,
                teacher_cache: TeacherCache | None = None) -> "Method":
    """The method ``name`` for this student and teacher; ``teacher_cache``: keep the teacher's
    outputs by input key (:mod:`jkt_lab.teacher_cache`), where the method's teacher outputs are
    a function of the input alone (:attr:`Method.cacheable`)."""
    method = get_method(name)(student, teacher, config)
    method.teacher_cache = teacher_cache if method.cacheable else None
    return method


class Method:
    """Base class: holds student, teacher and config; subclasses implement :meth:`terms`."""

    name = "?"
    needs_teacher = True          # a teacher model is required
    matches_logits = True         # teacher and student must have the same number of outputs

    def __init__(self, student: nn.Module, teacher: nn.Module | None, config: Config):
        self.student, self.teacher, self.config = student, teacher, config
        self.teacher_cache: TeacherCache | None = None
        self._keys: torch.Tensor | None = None
        if self.needs_teacher:
            if teacher is None:
                raise ValueError(f"method {self.name!r} needs a teacher; pass teacher=...")
            teacher.eval()
            for p in teacher.parameters():
                p.requires_grad_(False)
            if self.matches_logits and _num_outputs(teacher) != _num_outputs(student):
                raise ValueError(
                    f"teacher has {_num_outputs(teacher)} outputs but the student has {_num_outputs(student)}: "
                    f"method {self.name!r} matches their outputs, so they must agree"
                )

    @property
    def cacheable(self) -> bool:
        """True when what the method asks of the teacher depends on the input alone (not on the
        step's randomness), so a :class:`~jkt_lab.teacher_cache.TeacherCache` may serve it."""
        return False

    def loss(self, x: torch.Tensor, y: torch.Tensor, step: int = 0,
             keys: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(student_logits, {term: weighted scalar})`` for one batch; ``step`` seeds randomness;
        ``keys`` number the distinct inputs (``Batches(return_keys=True)``) for the teacher cache."""
        self._keys = keys
        try:
            return self.terms(x, y, step)
        finally:
            self._keys = None

    def terms(self, x, y, step):  # pragma: no cover - abstract
        raise NotImplementedError

    def _from_teacher(self, x, y, compute):
        """``compute(x, y)``: the teacher's per-example outputs, served from the teacher cache
        for inputs it has seen (when the batch has keys) and computed for the others."""
        if self.teacher_cache is None or self._keys is None:
            return compute(x, y)
        return self.teacher_cache.get(self._keys, lambda pos: compute(x[pos], y[pos]))

    def _generator(self, step: int) -> torch.Generator:
        """Randomness of a step depends only on (seed, step): resumed runs repeat it exactly."""
        return torch.Generator().manual_seed(self.config.seed * 1_000_003 + step)

    def _ce(self, logits, y):
        c = self.config
        return {"ce": c.ce_weight * F.cross_entropy(logits, y, label_smoothing=c.label_smoothing)} if c.ce_weight else {}


def _num_outputs(model: nn.Module) -> int | None:
    return getattr(model, "num_classes", None)


@register("ce")
class CrossEntropy(Method):
    needs_teacher = False

    def __init__(self, student, teacher, config):
        super().__init__(student, teacher, config)
        if not config.ce_weight:
            raise ValueError("method 'ce' with ce_weight=0 has no loss term to train; set ce_weight > 0")

    def terms(self, x, y, step):
        logits = self.student(x)
        return logits, self._ce(logits, y)


class _KDTerm:
    def distill(self, logits, t_logits):
        return {"kd": self.config.kd_weight * losses.kd_loss(logits, t_logits, self.config.temperature)}


class _ActivationTerm:
    def distill(self, logits, t_logits):
        return {"activations": self.config.activation_weight * losses.activation_loss(logits, t_logits)}


def _teacher_logits(teacher):
    def compute(x, y):
        with torch.no_grad():
            return (teacher(x),)
    return compute


class _LogitMatching(Method):
    """Shared by kd and activations: ce plus a term on teacher and student logits (``distill``)."""

    cacheable = True

    def terms(self, x, y, step):
        logits = self.student(x)
        t_logits, = self._from_teacher(x, y, _teacher_logits(self.teacher))
        return logits, {**self._ce(logits, y), **self.distill(logits, t_logits)}


def untrained_copy(teacher: nn.Module, seed: int) -> nn.Module:
    """A network of the teacher's architecture at a fresh initialisation (``seed``): the
    ``jacobian_source="untrained"`` control, whose Jacobian has a network's statistics but none
    of the teacher's training."""
    net = copy.deepcopy(teacher)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in net.modules():
            if m is not net and hasattr(m, "reset_parameters"):
                m.reset_parameters()
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def _derangement(n: int, generator: torch.Generator) -> torch.Tensor:
    """A random permutation of ``range(n)`` with no fixed point (n >= 2): each example is given
    another example's row."""
    order = torch.randperm(n, generator=generator)
    out = torch.empty(n, dtype=torch.long)
    out[order] = order.roll(-1)
    return out


class _JacobianMatching(Method):
    """Shared by kd+jacobian and activations+jacobian: adds the output-Jacobian term of Section 3.

    ``config.jacobian_source`` chooses the matched Jacobian (controls for "is it the teacher's
    knowledge, or any regulariser?"): the teacher's (default); that of an untrained network of
    the teacher's architecture (``"untrained"``, the same output row the teacher chooses); or
    the teacher's Jacobian of *another* example of the batch (``"shuffled"``: the right
    statistics, the wrong direction). The logits that kd matches are always the teacher's.
    """

    def __init__(self, student, teacher, config):
        super().__init__(student, teacher, config)
        self.source = config.jacobian_source or "teacher"
        self.untrained = untrained_copy(teacher, config.teacher_seed + 1_000) if self.source == "untrained" else None

    @property
    def cacheable(self):
        return self.config.jacobian_output != "random"  # random projections are drawn anew each step

    def _teacher_side(self, xs, ys):
        """``(jacobian rows to match, teacher logits)`` for a batch: a function of the input alone."""
        c = self.config
        j_t, t_logits, v = teacher_jacobian(self.teacher, xs, c.jacobian_output, labels=ys)
        if self.untrained is not None:
            xg = xs.detach().requires_grad_(True)
            with torch.enable_grad():
                _, u_out, _ = jacobian_forward(self.untrained, xg)
                j_t = output_jacobian(u_out, xg, v)
        return j_t, t_logits

    def terms(self, x, y, step):
        c = self.config
        teacher_outputs = None
        if self.source != "teacher" or (self.teacher_cache is not None and self._keys is not None):
            teacher_outputs = self._from_teacher(x, y, self._teacher_side)
        j_s, j_t, logits, t_logits = matched_jacobians(self.student, self.teacher, x, c.jacobian_output, labels=y,
                                                       generator=self._generator(step), create_graph=True,
                                                       teacher_outputs=teacher_outputs)
        if self.source == "shuffled" and len(x) > 1:
            j_t = j_t[_derangement(len(x), self._generator(step))]
        return logits, {**self._ce(logits, y), **self.distill(logits, t_logits),
                        "jacobian": c.jacobian_weight * losses.jacobian_loss(j_s, j_t, c.jacobian_kind)}


@register("kd")
class KD(_KDTerm, _LogitMatching):
    pass


@register("activations")
class Activations(_ActivationTerm, _LogitMatching):
    pass


@register("kd+jacobian")
class KDJacobian(_KDTerm, _JacobianMatching):
    pass


@register("activations+jacobian")
class ActivationsJacobian(_ActivationTerm, _JacobianMatching):
    pass


@register("noise")
class Noise(Method):
    def terms(self, x, y, step):
        c = self.config
        logits = self.student(x)
        noisy = losses.noisy_distillation_loss(self.student, self.teacher, x, c.sigma, c.n_samples,
                                               loss=c.noise_loss, temperature=c.temperature,
                                               generator=self._generator(step))
        weight = c.kd_weight if c.noise_loss == "kd" else c.activation_weight
        return logits, {**self._ce(logits, y), "noise": weight * noisy}


@register("kd+jacobian_norm")
class KDJacobianNorm(_KDTerm, Method):
    """kd plus a penalty on the size of the student's own input Jacobian: double
    backpropagation (Drucker & LeCun 1992, the paper's reference [1]).

    The term is ``jacobian_weight * mean_i ||dS_o/dx_i||^2`` for the output ``o`` chosen by
    ``jacobian_output`` (``"top1"``: the teacher's top-1 class, the output ``kd+jacobian``
    matches), written as the squared Jacobian loss against a flat (all-zero) teacher Jacobian:
    Jacobian matching without the teacher's Jacobian. ``jacobian_kind`` does not apply (a
    normalised norm is always 1). Each example's own Jacobian, also in train mode
    (:func:`~jkt_lab.jacobian.jacobian_forward`). The teacher gives only its logits (kd and the
    top-1 class), a function of the input alone: the teacher cache may serve them.
    """

    cacheable = True

    def terms(self, x, y, step):
        c = self.config
        t_logits, = self._from_teacher(x, y, _teacher_logits(self.teacher))
        with torch.enable_grad():
            logits, out, xg = jacobian_forward(self.student, x)
            v = projections(out.detach(), c.jacobian_output, labels=y, reference=t_logits,
                            generator=self._generator(step))
            j_s = output_jacobian(out, xg, v, create_graph=True)
        penalty = losses.jacobian_loss(j_s, torch.zeros_like(j_s), "squared")
        return logits, {**self._ce(logits, y), **self.distill(logits, t_logits), "jacobian": c.jacobian_weight * penalty}


def tap_pairs(student, teacher):
    """Pair the deepest feature taps of student and teacher, as many as both have."""
    s_taps, t_taps = tuple(student.feature_taps), tuple(teacher.feature_taps)
    n = min(len(s_taps), len(t_taps))
    if n == 0:
        raise ValueError("attention transfer needs models with feature taps (build them with jkt_lab.models.build_model)")
    return list(s_taps[-n:]), list(t_taps[-n:])


class _Attention(Method):
    matches_logits = False

    def __init__(self, student, teacher, config):
        super().__init__(student, teacher, config)
        self.s_taps, self.t_taps = tap_pairs(student, teacher)

    def features(self, x):
        logits, s_feats = self.student.forward_features(x)
        _, t_feats = self.teacher.forward_features(x)
        return logits, [s_feats[k] for k in self.s_taps], [t_feats[k] for k in self.t_taps]

    def jacobian_features(self, x):
        """Like :meth:`features`, plus each network's tapped features from a per-example forward
        pass (:func:`~jkt_lab.jacobian.jacobian_forward`) on the returned leaf ``xg``."""
        xg = x.detach().requires_grad_(True)
        (logits, s_feats), (_, s_jac_feats), _ = jacobian_forward(self.student, xg, self.student.forward_features)
        _, (_, t_feats), _ = jacobian_forward(self.teacher, xg, self.teacher.forward_features)
        return (logits, [s_feats[k] for k in self.s_taps], [s_jac_feats[k] for k in self.s_taps],
                [t_feats[k] for k in self.t_taps], xg)


@register("at")
class AttentionTransfer(_Attention):
    def terms(self, x, y, step):
        c = self.config
        logits, s_f, t_f = self.features(x)
        at = losses.attention_transfer_loss(s_f, [t.detach() for t in t_f], c.attention_p)
        return logits, {**self._ce(logits, y), "at": c.attention_weight * at}


@register("at+jacobian")
class AttentionJacobian(_Attention):
    def terms(self, x, y, step):
        c = self.config
        with torch.enable_grad():
            logits, s_f, s_jf, t_f, xg = self.jacobian_features(x)
            at = losses.attention_transfer_loss(s_f, [t.detach() for t in t_f], c.attention_p)
            jac = losses.attention_jacobian_loss(s_jf, t_f, xg, c.attention_p)
        return logits, {**self._ce(logits, y), "at": c.attention_weight * at, "jacobian": c.jacobian_weight * jac}


@register("lwf")
class LearningWithoutForgetting(Method):
    """The student is a :class:`~jkt_lab.models.MultiHead` built on a copy of the teacher."""

    matches_logits = False
    cacheable = True

    def __init__(self, student, teacher, config):
        super().__init__(student, teacher, config)
        if not hasattr(student, "forward_heads"):
            raise ValueError("method 'lwf' needs a student with an old and a new head "
                             "(jkt_lab.models.MultiHead; config init='finetune')")

    def terms(self, x, y, step):
        c = self.config
        new_logits, old_logits, _ = self.student.forward_heads(x)
        t_old, = self._from_teacher(x, y, _teacher_logits(self.teacher))
        t = losses.lwf_loss(new_logits, y, old_logits, t_old, temperature=c.temperature, lwf_weight=c.lwf_weight)
        return new_logits, {"ce": c.ce_weight * t["ce"], "lwf": t["lwf"]}
