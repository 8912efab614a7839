"""Argument checks shared by every public function.

Each check raises ``TypeError`` (wrong kind of thing) or ``ValueError`` (right kind, wrong
value) with a message that names the argument and says what was expected. Nothing in
jkt_lab returns a silent NaN: inputs are checked for finiteness where they enter.
"""
from __future__ import annotations

import math
from numbers import Integral, Real

import torch

__all__ = [
    "check_batch",
    "check_finite",
    "check_labels",
    "check_index",
    "check_positive",
    "check_nonnegative",
    "check_int",
    "check_choice",
    "check_same_shape",
    "check_names",
]


def check_batch(x, name: str = "x", *, min_dim: int = 2, finite: bool = True) -> torch.Tensor:
    """A floating-point tensor with a batch dimension (at least ``min_dim`` dimensions)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be floating point (e.g. float32), got dtype {x.dtype}")
    if x.dim() < min_dim:
        raise ValueError(
            f"{name} must have a batch dimension: expected at least {min_dim} dimensions "
            f"(batch, ...), got shape {tuple(x.shape)}"
        )
    if x.shape[0] == 0:
        raise ValueError(f"{name} must hold at least one example, got an empty batch")
    if finite:
        check_finite(x, name)
    return x


def check_finite(x: torch.Tensor, name: str) -> torch.Tensor:
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} holds {bad} non-finite value(s) (NaN or inf); expected finite values")
    return x


def check_labels(labels, batch: int, num_classes: int, name: str = "labels") -> torch.Tensor:
    """Integer class labels of shape ``(batch,)`` in ``[0, num_classes)``."""
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of class indices, got {type(labels).__name__}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor of class indices, got dtype {labels.dtype}")
    if labels.shape != (batch,):
        raise ValueError(f"{name} must have shape ({batch},) (one label per example), got {tuple(labels.shape)}")
    if batch and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(
            f"{name} must lie in [0, {num_classes}), got values in "
            f"[{int(labels.min())}, {int(labels.max())}]"
        )
    return labels


def check_index(index, batch: int, num_outputs: int, name: str = "index") -> torch.Tensor:
    """One output index per example: shape ``(batch,)``, values in ``[0, num_outputs)``."""
    return check_labels(index, batch, num_outputs, name)


def _real(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def check_positive(value, name: str) -> float:
    value = _real(value, name)
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return value


def check_nonnegative(value, name: str) -> float:
    value = _real(value, name)
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def check_int(value, name: str, *, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_choice(value, name: str, choices) -> str:
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def check_same_shape(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{name_a} and {name_b} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )


def _model_name(value, name: str) -> None:
    from .models import MODELS, _parse_name
    try:
        _parse_name(value)
    except (ValueError, TypeError):
        raise ValueError(f"{name} must be one of {', '.join(map(repr, MODELS))} or 'wrn-<depth>-<width>' "
                         f"such as 'wrn-16-2'; got {value!r}") from None


def _dataset_name(value, name: str) -> None:
    from .data import DATASETS
    check_choice(value, name, DATASETS)


def _method_name(value, name: str) -> None:
    from .methods import METHODS
    if value not in METHODS:
        raise ValueError(f"unknown {name} {value!r}; valid methods: {', '.join(METHODS)}")


NAMED_FIELDS = {"dataset": _dataset_name, "student": _model_name, "teacher": _model_name, "method": _method_name}


def check_names(config, prefix: str = "", *, names=None) -> None:
    """The dataset, model (student, teacher) and method names of ``config`` (a Config or a
    mapping of some of its fields) are ones jkt_lab knows. A misspelt name is a ``ValueError``
    that names the field (``prefix`` + field, or ``names[field]``, e.g. ``"--dataset"``)."""
    for field, check in NAMED_FIELDS.items():
        value = config.get(field) if isinstance(config, dict) else getattr(config, field, None)
        if value is not None:
            check(value, (names or {}).get(field, f"{prefix}{field}"))
