"""Saliency from input Jacobians: maps, teacher-student agreement, overlap with the ground truth.

A saliency map is the input Jacobian of one output (Section 2: "Jacobians as saliency maps"),
reduced over colour channels by the absolute value's maximum, as in Simonyan et al.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import check_batch, check_int, check_positive
from .jacobian import jacobian, matched_jacobians
from .models import build_model

__all__ = ["saliency", "saliency_cosine", "mask_overlap", "centre_prior", "overlap_baselines", "top1_jacobians"]


def top1_jacobians(student: nn.Module, teacher: nn.Module, x: torch.Tensor, output="top1", *,
                   labels=None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Student and teacher Jacobians of the same output (chosen by the teacher), eval mode.

    Returns ``(student_jac, teacher_jac)``, each ``(batch, m, *x.shape[1:])``.
    """
    check_batch(x, "x")
    modes = (student.training, teacher.training)
    student.eval(), teacher.eval()
    try:
        j_s, j_t, _, _ = matched_jacobians(student, teacher, x, output, labels=labels,
                                           generator=torch.Generator().manual_seed(seed))
    finally:
        student.train(modes[0]), teacher.train(modes[1])
    return j_s, j_t


def saliency(model: nn.Module, x: torch.Tensor, output="top1", *, labels=None, reference=None,
             seed: int = 0) -> torch.Tensor:
    """Saliency maps ``(batch, H, W)``: max over channels of ``|dy/dx|`` for the chosen output
    (``"all"``: the root-sum-square over rows; ``"random"`` with ``m`` rows, each scaled by
    ``1/sqrt(m)``: their root-mean-square)."""
    check_batch(x, "x", min_dim=4)
    was = model.training
    model.eval()
    try:
        jac, _ = jacobian(model, x, output, labels=labels, reference=reference, seed=seed)
    finally:
        model.train(was)
    return jac.pow(2).sum(dim=1).sqrt().amax(dim=1)


def saliency_cosine(student: nn.Module, teacher: nn.Module, x: torch.Tensor, output="top1", *,
                    labels=None, seed: int = 0) -> float:
    """Mean cosine between student and teacher Jacobians of the same outputs (1: same direction)."""
    j_s, j_t = top1_jacobians(student, teacher, x, output, labels=labels, seed=seed)
    return float(F.cosine_similarity(j_s.flatten(2), j_t.flatten(2), dim=2, eps=1e-12).mean())


def mask_overlap(saliency_maps: torch.Tensor, masks: torch.Tensor, *, fraction: float | None = None) -> dict:
    """How much saliency falls on the object: ``{"overlap", "chance"}``.

    ``overlap``: the fraction of the top ``k`` saliency pixels (``k``: as many as the mask has,
    or ``fraction`` of the image) that lie inside the ground-truth mask, averaged over images.
    Ties count as misses: pixels tied with the ``k``-th largest value are taken only when the
    whole tie fits among the ``k``, so an all-zero map scores 0 and a map equal to the mask 1.
    ``chance``: the mask's area fraction, what a map of random (untied) values gets on average;
    a weak reference: compare with :func:`overlap_baselines` (untrained networks, centre prior).
    """
    check_batch(saliency_maps, "saliency_maps", min_dim=3)
    if not isinstance(masks, torch.Tensor) or masks.shape != saliency_maps.shape:
        raise ValueError(f"masks must be a tensor of shape {tuple(saliency_maps.shape)}, "
                         f"got {getattr(masks, 'shape', type(masks).__name__)}")
    s = saliency_maps.flatten(1)
    m = masks.flatten(1).bool().to(s.device)
    area = m.sum(dim=1).clamp(min=1)
    if fraction is not None:
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        k = torch.full_like(area, max(1, int(round(fraction * s.shape[1]))))
    else:
        k = area
    k = k.unsqueeze(1)
    kth = s.sort(dim=1, descending=True).values.gather(1, k - 1)          # the k-th largest value
    whole_tie_fits = (s >= kth).sum(dim=1, keepdim=True) <= k
    top = (s > kth) | ((s == kth) & whole_tie_fits)
    overlap = (top & m).sum(dim=1).float() / k.squeeze(1).float()
    chance = m.float().mean(dim=1)
    return {"overlap": float(overlap.mean()), "chance": float(chance.mean())}


def centre_prior(height: int, width: int, *, sigma: float = 0.25) -> torch.Tensor:
    """A fixed map ``(height, width)``: a Gaussian centred on the image, standard deviation
    ``sigma`` times the shorter side. The saliency of "objects sit in the middle"."""
    height, width = check_int(height, "height", minimum=1), check_int(width, "width", minimum=1)
    sigma = check_positive(sigma, "sigma") * min(height, width)
    rows = torch.arange(height, dtype=torch.float64) - (height - 1) / 2
    cols = torch.arange(width, dtype=torch.float64) - (width - 1) / 2
    return torch.exp(-(rows[:, None] ** 2 + cols[None, :] ** 2) / (2 * sigma ** 2)).float()


def _untrained_builder(model, build_kwargs) -> tuple[nn.Module | None, Callable[[int], nn.Module]]:
    if isinstance(model, nn.Module):
        spec = getattr(model, "spec", None)
        if not isinstance(spec, dict):
            raise ValueError("model must come from jkt_lab.models.build_model (it carries .spec) to build untrained "
                             "copies; or pass a model name (with num_classes=...) or a builder(seed) -> model")
        args = {k: spec[k] for k in ("in_channels", "width", "depth") if spec.get(k) is not None}
        args.update(mean=model.mean.flatten().tolist(), std=model.std.flatten().tolist())
        return model, lambda seed: build_model(spec["name"], spec["num_classes"], seed=seed, **{**args, **build_kwargs})
    if isinstance(model, str):
        if "num_classes" not in build_kwargs:
            raise ValueError(f"model={model!r} is a name: pass num_classes=... (and any other build_model argument)")
        kwargs = dict(build_kwargs)
        num_classes = kwargs.pop("num_classes")
        return None, lambda seed: build_model(model, num_classes, seed=seed, **kwargs)
    if callable(model):
        return None, model
    raise TypeError(f"model must be a trained model, a model name or a builder(seed) -> model, got {type(model).__name__}")


def overlap_baselines(model, x: torch.Tensor, masks: torch.Tensor, *, seeds: Sequence[int] = (0, 1, 2),
                      output="top1", labels=None, fraction: float | None = None, centre_sigma: float = 0.25,
                      **build_kwargs) -> dict:
    """Saliency-on-object overlap (:func:`mask_overlap`) of a model against honest baselines,
    each computed the same way on the same images.

    ``model``: a trained model from :func:`~jkt_lab.models.build_model` (its overlap is reported
    as ``"model"``; the untrained copies share its architecture and input normalisation), a
    model name (``build_kwargs`` go to ``build_model``, ``num_classes`` required), or a
    ``builder(seed) -> model``. Returns ``{"model", "untrained" (mean over seeds),
    "untrained_seeds" (one per seed), "centre_prior" (:func:`centre_prior`), "chance"}``.
    """
    check_batch(x, "x", min_dim=4)
    if not isinstance(masks, torch.Tensor) or masks.shape != (x.shape[0], *x.shape[2:]):
        raise ValueError(f"masks must be a tensor of shape {(x.shape[0], *x.shape[2:])} (one mask per image), "
                         f"got {getattr(masks, 'shape', type(masks).__name__)}")
    seeds = [check_int(s, "seeds", minimum=0) for s in seeds]
    if not seeds:
        raise ValueError("seeds must hold at least one seed for the untrained baseline")
    trained, build = _untrained_builder(model, build_kwargs)

    def overlap_of(net) -> float:
        net = net.to(x.device)
        return mask_overlap(saliency(net, x, output, labels=labels), masks, fraction=fraction)["overlap"]

    out = {} if trained is None else {"model": overlap_of(trained)}
    untrained = [overlap_of(build(s)) for s in seeds]
    prior = centre_prior(*x.shape[2:], sigma=centre_sigma).to(x.device).expand(x.shape[0], -1, -1)
    prior_and_chance = mask_overlap(prior, masks, fraction=fraction)
    out.update(untrained=sum(untrained) / len(untrained), untrained_seeds=untrained,
               centre_prior=prior_and_chance["overlap"], chance=prior_and_chance["chance"])
    return out
