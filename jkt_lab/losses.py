"""Loss terms of the paper, each a small function of tensors.

Every loss is summed over outputs (and input dimensions) and averaged over the examples of the
batch, unless its docstring says otherwise. Shapes are checked; non-finite inputs are refused.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import (
    check_batch,
    check_choice,
    check_index,
    check_int,
    check_labels,
    check_nonnegative,
    check_positive,
    check_same_shape,
)

__all__ = [
    "JACOBIAN_KINDS",
    "NORM_FLOOR",
    "kd_loss",
    "activation_loss",
    "jacobian_loss",
    "noisy_distillation_loss",
    "attention_map",
    "attention_transfer_loss",
    "attention_peaks",
    "attention_jacobians",
    "attention_jacobian_loss",
    "lwf_loss",
    "cross_entropy",
]

JACOBIAN_KINDS = ("squared", "normalized", "cosine")
_EPS = 1e-12
#: Below this fraction of the teacher's Jacobian norm, a student Jacobian counts as essentially zero.
NORM_FLOOR = 1e-3


def _logit_pair(student_logits, teacher_logits):
    check_batch(student_logits, "student_logits")
    check_batch(teacher_logits, "teacher_logits")
    if student_logits.dim() != 2:
        raise ValueError(f"student_logits must have shape (batch, outputs), got {tuple(student_logits.shape)}")
    check_same_shape(student_logits, teacher_logits, "student_logits", "teacher_logits")


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 4.0) -> torch.Tensor:
    """Hinton et al. distillation: ``T^2 KL(softmax(t/T) || softmax(s/T))``, batch mean.

    Zero when the logits differ by a constant per example (softmax is shift invariant).
    """
    _logit_pair(student_logits, teacher_logits)
    t = check_positive(temperature, "temperature")
    log_p_s = F.log_softmax(student_logits / t, dim=1)
    log_p_t = F.log_softmax(teacher_logits.detach() / t, dim=1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1)
    return kl.mean() * t * t


def activation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Activation (logit) matching: ``sum_i (T_i(x) - S_i(x))^2``, batch mean (Section 3, Eq. 1)."""
    _logit_pair(student_logits, teacher_logits)
    return (student_logits - teacher_logits.detach()).pow(2).sum(dim=1).mean()


def _student_unit(s: torch.Tensor, t_norm: torch.Tensor) -> torch.Tensor:
    """``s / max(||s||, NORM_FLOOR * ||t||)`` per row: the unit vector of ``s`` wherever ``s`` is
    not essentially zero next to the teacher's Jacobian, a linear map below that."""
    floor = (NORM_FLOOR * t_norm).clamp_min(_EPS)
    return s / torch.maximum(s.norm(dim=2, keepdim=True), floor)


def jacobian_loss(student_jac: torch.Tensor, teacher_jac: torch.Tensor, kind: str = "normalized") -> torch.Tensor:
    """Jacobian matching on ``(batch, outputs, *input_shape)`` tensors (outputs = 1 for one output).

    Batch mean of the sum over outputs (rows) of, with ``J`` flattened over the input dimensions:

    * ``"squared"``: ``||J_T - J_S||^2`` (Proposition 1; Sobolev training);
    * ``"normalized"``: ``||J_T/||J_T|| - J_S/||J_S|| ||^2 = 2 - 2 cos(J_T, J_S)`` (Section 3.2,
      the paper's loss for cross-entropy distillation);
    * ``"cosine"``: ``1 - cos(J_T, J_S)``.

    The normalised kinds divide the student's Jacobian by ``max(||J_S||, NORM_FLOOR * ||J_T||)``
    (``NORM_FLOOR = 1e-3``): exactly the formulas above, invariant to the scale of ``J_S``,
    whenever the student's Jacobian is at least 1/1000 of the teacher's; an essentially zero
    student Jacobian (below that) is scaled linearly instead, so the loss stays finite (1 per
    row at ``J_S = 0``) and its gradient with respect to ``J_S`` is at most
    ``4 / (NORM_FLOOR * ||J_T||)`` per row (a plain ``1e-12`` guard gives ``2e12``).
    The loss is invariant to rescaling teacher and student together (pixel units). An all-zero
    teacher row normalises to zero. The teacher's Jacobian is treated as a constant.
    """
    check_batch(student_jac, "student_jac", min_dim=3)
    check_batch(teacher_jac, "teacher_jac", min_dim=3)
    check_same_shape(student_jac, teacher_jac, "student_jac", "teacher_jac")
    check_choice(kind, "kind", JACOBIAN_KINDS)
    s = student_jac.flatten(2)
    t = teacher_jac.detach().flatten(2).to(s.dtype)
    if kind == "squared":
        per_output = (t - s).pow(2).sum(dim=2)
    else:
        t_norm = t.norm(dim=2, keepdim=True)
        t_unit, s_unit = t / t_norm.clamp_min(_EPS), _student_unit(s, t_norm)
        if kind == "normalized":
            per_output = (t_unit - s_unit).pow(2).sum(dim=2)
        else:
            per_output = 1.0 - (t_unit * s_unit).sum(dim=2)
    return per_output.sum(dim=1).mean()


def noisy_distillation_loss(
    student: nn.Module,
    teacher: nn.Module,
    x: torch.Tensor,
    sigma: float,
    n_samples: int = 1,
    *,
    loss: str = "squared",
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    seed: int | None = None,
) -> torch.Tensor:
    """Distillation with input noise: ``E_z[ loss(S(x + sigma z), T(x + sigma z)) ]``, z ~ N(0, I).

    Monte Carlo over ``n_samples`` noisy copies of the batch, run as one batch. ``loss`` is
    ``"squared"`` (:func:`activation_loss`, the setting of Proposition 1) or ``"kd"``
    (:func:`kd_loss` at ``temperature``). Noise is drawn on the CPU from ``generator`` (or a
    new one seeded with ``seed``), so a seed gives the same noise on every device.
    """
    check_batch(x, "x")
    sigma = check_nonnegative(sigma, "sigma")
    n = check_int(n_samples, "n_samples", minimum=1)
    check_choice(loss, "loss", ("squared", "kd"))
    check_positive(temperature, "temperature")
    if generator is None:
        generator = torch.Generator().manual_seed(0 if seed is None else int(seed))
    z = torch.randn((n, *x.shape), generator=generator, dtype=x.dtype).to(x.device)
    noisy = (x.unsqueeze(0) + sigma * z).flatten(0, 1)
    with torch.no_grad():
        t_logits = teacher(noisy)
    s_logits = student(noisy)
    if loss == "squared":
        return activation_loss(s_logits, t_logits)
    return kd_loss(s_logits, t_logits, temperature)


def attention_map(features: torch.Tensor, p: float = 2.0, *, normalize: bool = True) -> torch.Tensor:
    """Attention map of a feature map (Zagoruyko & Komodakis): channel mean of ``|A|^p``.

    ``features`` (batch, channels, H, W) -> (batch, H*W), l2-normalised per example when
    ``normalize`` (the map that attention transfer compares).
    """
    check_batch(features, "features", min_dim=3)
    p = check_positive(p, "p")
    q = features.abs().pow(p).mean(dim=1).flatten(1)
    return F.normalize(q, dim=1, eps=_EPS) if normalize else q


def _feature_list(features) -> list[torch.Tensor]:
    if isinstance(features, Mapping):
        return list(features.values())
    if isinstance(features, torch.Tensor):
        return [features]
    return list(features)


def _pairs(student_features, teacher_features):
    student_features, teacher_features = _feature_list(student_features), _feature_list(teacher_features)
    if len(student_features) != len(teacher_features) or not student_features:
        raise ValueError(
            "student_features and teacher_features must pair up one to one (same non-zero number of feature maps), "
            f"got {len(student_features)} and {len(teacher_features)}"
        )
    pairs = []
    for i, (s, t) in enumerate(zip(student_features, teacher_features)):
        check_batch(s, f"student_features[{i}]", min_dim=4)
        check_batch(t, f"teacher_features[{i}]", min_dim=4)
        if s.shape[0] != t.shape[0]:
            raise ValueError(f"feature map {i}: batch sizes differ ({s.shape[0]} vs {t.shape[0]})")
        # Different resolutions: pool the larger map down to the smaller one.
        hs, ht = s.shape[-2:], t.shape[-2:]
        if hs != ht:
            size = (min(hs[0], ht[0]), min(hs[1], ht[1]))
            s = F.adaptive_avg_pool2d(s, size) if hs != size else s
            t = F.adaptive_avg_pool2d(t, size) if ht != size else t
        pairs.append((s, t))
    return pairs


def attention_transfer_loss(student_features, teacher_features, p: float = 2.0) -> torch.Tensor:
    """Attention transfer (Zagoruyko & Komodakis 2017): sum over feature-map pairs of the squared
    difference of l2-normalised attention maps ``Q/||Q||``, **averaged over the H*W positions**
    and the batch, as their reference code's ``at_loss`` does (``(at(x) - at(y)).pow(2).mean()``).

    The reference weights the sum by ``beta / 2`` with ``beta = 1000``: ``Config.attention_weight``
    500 is that weight (the experiments choose it on the validation split). Averaging over
    positions keeps the term's scale independent of each tap's resolution; a sum over positions
    (this function before 2026-12) made it 64x to 1024x larger on 8x8 to 32x32 maps.
    Feature maps come as lists (or dicts, in order) of (batch, C, H, W) tensors; channel counts
    may differ; spatial sizes are pooled to the smaller one.
    """
    total = 0.0
    for s, t in _pairs(student_features, teacher_features):
        diff = attention_map(s, p) - attention_map(t.detach(), p)
        total = total + diff.pow(2).mean()
    return total


def attention_peaks(features: Sequence[torch.Tensor], p: float = 2.0) -> list[torch.Tensor]:
    """Position (flat index into H*W) of each attention map's maximum, one ``(batch,)`` tensor per
    feature map: where :func:`attention_jacobian_loss` takes both networks' Jacobians."""
    return [attention_map(f.detach(), p, normalize=False).argmax(dim=1) for f in _feature_list(features)]


def attention_jacobians(features: Sequence[torch.Tensor], x: torch.Tensor, p: float = 2.0,
                        *, create_graph: bool = False, at: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
    """Jacobian of attention-map values with respect to the input (Section 4.3).

    ``features`` were computed from ``x`` (which requires grad), per example (BatchNorm in train
    mode: :func:`jkt_lab.jacobian.jacobian_forward`). Returns ``(batch, len(features),
    *x.shape[1:])``: one row per feature map, the gradient of ``Q(x)_j`` where Q is the
    unnormalised attention map and ``j`` its maximum, or the positions ``at`` (one ``(batch,)``
    index tensor per feature map, e.g. the teacher's :func:`attention_peaks`).
    """
    features = _feature_list(features)
    if not isinstance(x, torch.Tensor) or not x.requires_grad:
        raise ValueError("x must be a tensor that requires grad and from which features were computed")
    if at is not None and len(at) != len(features):
        raise ValueError(f"at must hold one index tensor per feature map ({len(features)}), got {len(at)}")
    rows = []
    for i, f in enumerate(features):
        q = attention_map(f, p, normalize=False)
        if at is None:
            value = q.max(dim=1).values
        else:
            index = check_index(at[i], q.shape[0], q.shape[1], f"at[{i}]")
            value = q.gather(1, index.to(q.device).view(-1, 1)).squeeze(1)
        (g,) = torch.autograd.grad(value.sum(), x, create_graph=create_graph,
                                   retain_graph=create_graph or i < len(features) - 1)
        rows.append(g)
    jac = torch.stack(rows, dim=1)
    return jac if create_graph else jac.detach()


def attention_jacobian_loss(student_features, teacher_features, x: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """The paper's transfer-learning term: normalised matching of attention-map Jacobians.

    ``student_features`` and ``teacher_features`` must both have been computed from ``x``
    (requiring grad), per example. Both Jacobians are taken at the position of the *teacher's*
    attention maximum (the teacher chooses what is matched, as for output Jacobians), after
    pooling each pair to a common size; then ``jacobian_loss(kind="normalized")``.
    """
    pairs = _pairs(student_features, teacher_features)
    t_feats = [t for _, t in pairs]
    peaks = attention_peaks(t_feats, p)
    s_jac = attention_jacobians([s for s, _ in pairs], x, p, create_graph=True, at=peaks)
    t_jac = attention_jacobians(t_feats, x, p, create_graph=False, at=peaks)
    return jacobian_loss(s_jac, t_jac, "normalized")


def lwf_loss(
    new_logits: torch.Tensor,
    labels: torch.Tensor,
    old_logits: torch.Tensor,
    teacher_old_logits: torch.Tensor,
    *,
    temperature: float,
    lwf_weight: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Learning without Forgetting (Li & Hoiem): cross-entropy on the new task's labels plus
    distillation of the old head's outputs, recorded before training, on the new data.

    Returns the named terms ``{"ce": ..., "lwf": lwf_weight * kd}``; their sum is the loss.
    ``temperature`` has no default: its one source is ``Config.temperature``, which the ``lwf``
    method passes (default 4, the value the package's transfer experiments use, the same as for
    kd; Li & Hoiem used 2: set ``temperature=2`` in the config to follow them).
    """
    check_batch(new_logits, "new_logits")
    check_labels(labels, new_logits.shape[0], new_logits.shape[1], "labels")
    lwf_weight = check_nonnegative(lwf_weight, "lwf_weight")
    return {
        "ce": F.cross_entropy(new_logits, labels),
        "lwf": lwf_weight * kd_loss(old_logits, teacher_old_logits, temperature),
    }


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on true labels, with the library's argument checks."""
    check_batch(logits, "logits")
    check_labels(labels, logits.shape[0], logits.shape[1], "labels")
    return F.cross_entropy(logits, labels)

