"""One config object for every experiment: what to train, with which objective, and how.

A :class:`Config` is plain data (JSON-serialisable), hashed by the results store, so a run is
identified by its config. Field names follow the paper (teacher, student, sigma,
jacobian_weight, per_class).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from ._checks import check_choice, check_int, check_nonnegative, check_positive

__all__ = ["Config", "JACOBIAN_OUTPUTS", "JACOBIAN_SOURCES", "SCHEDULES", "quick_mode"]

JACOBIAN_OUTPUTS = ("top1", "label", "random", "all")
SCHEDULES = ("cosine", "step", "constant")
# left out of to_dict() while None: fields added after results were recorded keep the old hashes
UNSET_OMITTED = ("data_path", "data_fingerprint", "image_size", "augment_views", "jacobian_source")
JACOBIAN_SOURCES = ("teacher", "untrained", "shuffled")


@dataclass(frozen=True)
class Config:
    """Settings of one run. ``replace(**changes)`` returns a checked copy."""

    # what is trained
    dataset: str = "shapes"
    data_path: str | None = None          # your data: a folder (imagefolder), .npz (npz); or cifar10-jpeg, indoor67
    data_fingerprint: str | None = None   # content hash of the data at data_path; filled in when a run starts
    image_size: int | None = None         # images resized to image_size^2 (imagefolder: shorter side + centre crop)
    per_class: int | None = 5             # training images per class (None: all)
    method: str = "kd+jacobian"
    student: str = "tiny"
    student_width: int | None = None
    teacher: str = "tiny"
    teacher_width: int | None = None
    teacher_epochs: int = 30
    teacher_seed: int = 0                 # one teacher shared by all student seeds
    teacher_pretrained: bool = False      # ImageNet weights (torchvision resnets; downloads once)
    # the teacher's own recipe: a teacher's identity never depends on the student's settings
    teacher_batch_size: int = 128
    teacher_lr: float = 0.05
    teacher_weight_decay: float = 5e-4
    teacher_schedule: str = "cosine"
    teacher_augment: bool = True
    teacher_label_smoothing: float = 0.0
    teacher_train_sigma: float = 0.0      # Gaussian input noise while training the teacher (a robust teacher)
    n_train: int | None = None            # training images to use (class-balanced subset; shapes: generated)
    n_test: int | None = None             # test images to use (None: all)
    classes: tuple[int, ...] | None = None          # train on these classes only (transfer target)
    teacher_classes: tuple[int, ...] | None = None  # the teacher's (source) classes
    init: str = "scratch"                 # "scratch" or "finetune" (student starts from the teacher)
    # objective (Section 3; weights multiply the terms)
    ce_weight: float = 1.0
    kd_weight: float = 1.0
    temperature: float = 4.0
    activation_weight: float = 0.1
    jacobian_weight: float = 1.0
    jacobian_kind: str = "normalized"     # squared | normalized | cosine
    jacobian_output: str = "top1"         # top1 | label | random | all
    jacobian_source: str | None = None    # whose Jacobian is matched (controls): None/"teacher", "untrained", "shuffled"
    sigma: float = 0.1                    # input-noise std for the "noise" method, [0, 1] pixel units
    n_samples: int = 1                    # noisy copies per example for the "noise" method
    noise_loss: str = "kd"                # kd | squared
    attention_weight: float = 100.0
    attention_p: float = 2.0
    lwf_weight: float = 1.0
    # optimisation
    epochs: int = 30
    steps: int | None = None              # a step budget instead of epochs
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    augment: bool = True
    augment_views: int | None = None      # augment from a fixed pool of this many views per image (None: fresh each epoch)
    label_smoothing: float = 0.0          # cross-entropy on smoothed labels (Szegedy et al. 2016)
    train_sigma: float = 0.0              # Gaussian input noise added to every training batch, [0, 1] pixel units
    amp: bool = False                     # bf16 autocast (CUDA only)
    seed: int = 0
    eval_every: int | None = None         # epochs between history rows (None: about 20 per run)
    extra: dict[str, Any] = field(default_factory=dict)  # free-form tags (ignored by training)

    def __post_init__(self):
        if self.per_class is not None:
            check_int(self.per_class, "per_class", minimum=1)
        for name in ("ce_weight", "kd_weight", "activation_weight", "jacobian_weight", "sigma",
                     "attention_weight", "lwf_weight", "weight_decay", "momentum", "train_sigma",
                     "teacher_weight_decay", "teacher_train_sigma"):
            check_nonnegative(getattr(self, name), name)
        for name in ("label_smoothing", "teacher_label_smoothing"):
            if not 0 <= check_nonnegative(getattr(self, name), name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        for name in ("temperature", "lr", "attention_p", "teacher_lr"):
            check_positive(getattr(self, name), name)
        for name in ("epochs", "teacher_epochs", "n_samples", "batch_size", "teacher_batch_size"):
            check_int(getattr(self, name), name, minimum=1 if "epochs" not in name else 0)
        check_int(self.teacher_seed, "teacher_seed", minimum=0)
        for name in ("n_train", "n_test", "image_size", "augment_views"):
            if getattr(self, name) is not None:
                check_int(getattr(self, name), name, minimum=1)
        for name in ("steps", "eval_every"):
            if getattr(self, name) is not None:
                check_int(getattr(self, name), name, minimum=1)
        check_int(self.seed, "seed", minimum=0)
        from .losses import JACOBIAN_KINDS
        check_choice(self.jacobian_kind, "jacobian_kind", JACOBIAN_KINDS)
        check_choice(self.jacobian_output, "jacobian_output", JACOBIAN_OUTPUTS)
        if self.jacobian_source is not None:
            check_choice(self.jacobian_source, "jacobian_source", JACOBIAN_SOURCES)
            if self.jacobian_source != "teacher" and self.jacobian_output == "random":
                raise ValueError(f"jacobian_source={self.jacobian_source!r} is a control for a fixed output; "
                                 f"use jacobian_output top1, label or all, not 'random'")
        check_choice(self.noise_loss, "noise_loss", ("kd", "squared"))
        check_choice(self.schedule, "schedule", SCHEDULES)
        check_choice(self.teacher_schedule, "teacher_schedule", SCHEDULES)
        check_choice(self.init, "init", ("scratch", "finetune"))
        for name in ("classes", "teacher_classes"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(check_int(c, name, minimum=0) for c in value))
        self._check_data()

    def _check_data(self) -> None:
        from .data import PATH_DATASETS, USER_DATASETS
        if isinstance(self.data_path, os.PathLike):
            object.__setattr__(self, "data_path", os.fspath(self.data_path))
        for name in ("data_path", "data_fingerprint"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise TypeError(f"{name} must be a non-empty str or None, got {value!r}")
        if self.data_path is None:
            if self.dataset in USER_DATASETS:
                what = "folder (ImageFolder layout)" if self.dataset == "imagefolder" else ".npz file"
                raise ValueError(f"dataset {self.dataset!r} reads your own data: set data_path "
                                 f"(--data-path) to the {what}")
            if self.data_fingerprint is not None:
                raise ValueError(f"data_fingerprint={self.data_fingerprint!r} needs a data_path "
                                 f"(the data it fingerprints)")
        elif self.dataset not in PATH_DATASETS:
            raise ValueError(f"data_path={self.data_path!r} is for the datasets {', '.join(PATH_DATASETS)}; "
                             f"dataset {self.dataset!r} takes no data_path")

    def replace(self, **changes) -> "Config":
        """A checked copy with ``changes``; a new ``data_path`` drops the old ``data_fingerprint``
        (unless one is given), which belonged to the old data."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"unknown Config field(s) {sorted(unknown)}; valid fields: "
                             f"{', '.join(f.name for f in dataclasses.fields(self))}")
        if changes.get("data_path", self.data_path) != self.data_path:
            changes.setdefault("data_fingerprint", None)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able fields. The fields ``UNSET_OMITTED`` appear only when set, so the
        dict (and hash) of a run that leaves them unset is what it was before they existed."""
        d = dataclasses.asdict(self)
        for k in ("classes", "teacher_classes"):
            if d[k] is not None:
                d[k] = list(d[k])
        for k in UNSET_OMITTED:
            if d[k] is None:
                del d[k]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Config":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown Config field(s) {sorted(unknown)}; valid fields: {', '.join(sorted(names))}")
        return cls(**d)

    def teacher_config(self) -> "Config":
        """The config that trains this run's teacher: cross-entropy on all of its data.

        It is built from the teacher's own fields (``teacher*``) and its training data
        (``dataset``, ``data_path``, ``data_fingerprint``, ``image_size``, ``n_train``,
        ``teacher_classes``) only, so a teacher's identity (its cache key and card) never changes
        with the student's batch size, learning rate, schedule or test subset (``n_test``: the
        teacher is evaluated on all test images), and does change with the data's content.
        Everything else keeps :class:`Config`'s defaults.
        """
        own = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name.startswith("teacher")}
        return Config(dataset=self.dataset, data_path=self.data_path, data_fingerprint=self.data_fingerprint,
                      image_size=self.image_size, n_train=self.n_train, classes=self.teacher_classes,
                      per_class=None, method="ce", student=self.teacher, student_width=self.teacher_width,
                      epochs=self.teacher_epochs, seed=self.teacher_seed, batch_size=self.teacher_batch_size,
                      lr=self.teacher_lr, weight_decay=self.teacher_weight_decay, schedule=self.teacher_schedule,
                      augment=self.teacher_augment, label_smoothing=self.teacher_label_smoothing,
                      train_sigma=self.teacher_train_sigma, **own)


def quick_mode() -> bool:
    """True when the environment variable ``JKT_LAB_QUICK`` is set to 1/true/yes: notebooks, the
    demo and the reproduce grid then run the same code on tiny sizes (as pyro's smoke tests do)."""
    return os.environ.get("JKT_LAB_QUICK", "").strip().lower() in ("1", "true", "yes", "on")
