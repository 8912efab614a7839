"""Saliency from input Jacobians: maps, teacher-student agreement, overlap with the ground truth.

A saliency map is the input Jacobian of one output (Section 2: "Jacobians as saliency maps"),
reduced over colour channels by the absolute value's maximum, as in Simonyan et al.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import check_batch
from .jacobian import jacobian, matched_jacobians

__all__ = ["saliency", "saliency_cosine", "mask_overlap", "top1_jacobians"]


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
    (``"all"`` or ``"random"`` with several rows: the root-sum-square over rows)."""
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

    ``overlap``: the fraction of the top saliency pixels (as many as the mask has, or
    ``fraction`` of the image) that lie inside the ground-truth mask, averaged over images;
    ``chance``: the same for a random map (the mask's area fraction).
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
    order = s.argsort(dim=1, descending=True)
    ranks = torch.arange(s.shape[1], device=s.device).expand_as(s)
    top = torch.zeros_like(m).scatter(1, order, ranks < k.unsqueeze(1))
    overlap = (top & m).sum(dim=1).float() / k.float()
    chance = m.float().mean(dim=1)
    return {"overlap": float(overlap.mean()), "chance": float(chance.mean())}
