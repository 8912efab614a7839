"""Teachers that ship inside the package, so that a learner on a laptop only ever trains students.

Each shipped teacher is two files in ``jkt_lab/teachers/``: ``<name>.pt``, its weights in half
precision, and ``<name>.json``, its card: the teacher's config (``Config.teacher_config()``),
test accuracy, wall time and machine of its training, the sha256 of the weights file, and the
exact command that remakes it (``jkt-lab train-teacher ... --ship <name>``).

:func:`pretrained_teacher` loads one by name and checks its hash. :func:`shipped_for` finds the
shipped teacher whose config is a given teacher config; ``experiments.get_teacher`` calls it
first, so a config that asks for a shipped teacher never trains it again.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import platform
import warnings
from pathlib import Path

import torch
from torch import nn

from .config import Config
from .models import build_model
from .results import config_hash

__all__ = ["TEACHERS_DIR", "ShippedTeacherError", "WeightsFileError", "read_weights", "shipped_teachers", "card",
           "pretrained_teacher", "shipped_for", "ship_teacher", "check_subset"]

TEACHERS_DIR = Path(__file__).resolve().parent / "teachers"
CARD_FORMAT = "jkt_lab-teacher-card-1"
REPAIR = "reinstall the package (pip install --force-reinstall jkt_lab, or git checkout jkt_lab/teachers in a clone)"


class ShippedTeacherError(RuntimeError):
    """A shipped teacher's files are missing, corrupt, or do not fit what was asked of it."""


class WeightsFileError(ValueError):
    """A file that should hold a model's weights is empty, cut short, or holds something else."""


def read_weights(path: str | Path) -> dict:
    """The state dict in the weights file ``path`` (``torch.load`` with ``weights_only=True``:
    tensors only, nothing else is ever unpickled). A damaged or foreign file is a
    :class:`WeightsFileError` that names it in one line (torch's own message, with its advice to
    load untrusted files with ``weights_only=False``, is never passed on)."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on pickle protocols
            state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # torch raises several types for damaged files
        if isinstance(exc, EOFError) or path.stat().st_size == 0:
            why = "is empty or cut short"
        elif isinstance(exc, pickle.UnpicklingError):
            why = "is damaged or holds more than tensors (it was not unpickled)"
        else:
            why = f"is unreadable ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        raise WeightsFileError(f"weights file {path} {why}") from None
    if not isinstance(state, dict):
        raise WeightsFileError(f"weights file {path} holds a {type(state).__name__}, not a state dict")
    return state


def _folder(root: str | Path | None) -> Path:
    return TEACHERS_DIR if root is None else Path(root)


def shipped_teachers(root: str | Path | None = None) -> list[str]:
    """Names of the teachers that have a card in ``root`` (default: the package's own)."""
    return sorted(p.stem for p in _folder(root).glob("*.json"))


def card(name: str, root: str | Path | None = None) -> dict:
    """The card (JSON) of shipped teacher ``name``."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a str (one of {shipped_teachers(root)}), got {type(name).__name__}")
    path = _folder(root) / f"{name}.json"
    if not path.is_file():
        raise ValueError(f"no shipped teacher named {name!r}; shipped teachers: {', '.join(shipped_teachers(root)) or 'none'}")
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ShippedTeacherError(f"teacher card {path} is unreadable ({exc}); {REPAIR}") from exc
    if not isinstance(info, dict) or info.get("format") != CARD_FORMAT:
        raise ShippedTeacherError(f"teacher card {path} is not a jkt_lab teacher card (format {CARD_FORMAT!r}); "
                                  f"{REPAIR}")
    return info


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _build(info: dict) -> nn.Module:
    spec = info["model"]
    return build_model(spec["name"], spec["num_classes"], in_channels=spec["in_channels"], width=spec["width"],
                       depth=spec.get("depth"), seed=0)


def pretrained_teacher(name: str, *, data=None, device: str | torch.device = "cpu",
                       root: str | Path | None = None) -> tuple[nn.Module, dict]:
    """Shipped teacher ``name`` (for example ``"cifar10"``) in eval mode, and its card.

    The weights file's sha256 must match the card's. ``data`` (a :class:`~jkt_lab.data.Data`),
    if given, must be what the teacher was trained on: same classes and image shape.
    """
    info = card(name, root)
    path = _folder(root) / f"{name}.pt"
    if not path.is_file():
        raise ShippedTeacherError(f"weights file {path} of shipped teacher {name!r} is missing; {REPAIR}")
    digest = _sha256(path)
    if digest != info["sha256"]:
        raise ShippedTeacherError(f"weights file {path} does not match its card: sha256 {digest[:16]}..., "
                                  f"card {info['sha256'][:16]}...; {REPAIR}, or remake it with: {info['command']}")
    try:
        state = read_weights(path)
    except WeightsFileError as exc:
        raise ShippedTeacherError(f"{exc}; {REPAIR}") from None
    if data is not None:
        check_subset(info, data)
    model = _build(info)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval().to(device), info


def check_subset(info: dict, data) -> None:
    """Raise unless ``data`` has the classes and image shape the card's teacher was trained on."""
    want_classes, want_shape = info["classes"], tuple(info["model"]["input_shape"])
    if list(data.classes) != list(want_classes) or tuple(data.input_shape) != want_shape:
        raise ShippedTeacherError(
            f"shipped teacher {info['name']!r} was trained on {info['config']['dataset']} with classes "
            f"{want_classes} and images {want_shape}; the data given is {data.name} with classes "
            f"{list(data.classes)} and images {tuple(data.input_shape)}")


def _normal(config_dict: dict) -> str:
    """Hash of a card's teacher config as today's ``Config.teacher_config()`` defines it: fields
    added later take their defaults, fields no longer part of a teacher's identity drop out."""
    return config_hash(Config.from_dict(config_dict).teacher_config().to_dict())


def shipped_for(teacher_config: Config, root: str | Path | None = None) -> str | None:
    """Name of the shipped teacher trained with exactly ``teacher_config``, else None."""
    key = config_hash(teacher_config.to_dict())
    for name in shipped_teachers(root):
        try:
            found = _normal(card(name, root)["config"]) == key
        except ShippedTeacherError as exc:  # one bad card blocks no other teacher
            warnings.warn(f"skipped a shipped teacher: {exc}", stacklevel=2)
            continue
        except (KeyError, ValueError, TypeError) as exc:
            warnings.warn(f"skipped a shipped teacher: its card {_folder(root) / f'{name}.json'} holds no valid "
                          f"config ({exc}); {REPAIR}", stacklevel=2)
            continue
        if found:
            return name
    return None


def _machine(device: str) -> str:
    """Where a teacher was trained, for its card: processor, cores, GPU (when it trained on one)."""
    gpu = (f", {torch.cuda.get_device_name(torch.device(device))}"
           if str(device).startswith("cuda") and torch.cuda.is_available() else "")
    return (f"{platform.machine()}, {os.cpu_count()} CPU cores{gpu}, {platform.system()}, "
            f"python {platform.python_version()}, torch {torch.__version__}")


def ship_teacher(name: str, teacher: nn.Module, info: dict, data, *, command: str,
                 root: str | Path | None = None) -> dict:
    """Write ``teacher`` (half precision) and its card as shipped teacher ``name``; returns the card.

    ``info`` is ``experiments.get_teacher``'s (config, metrics, wall time, device). The card's
    accuracy is measured again here with the half-precision weights, on the whole test split
    and on every fifth test image (the 2,000-image check that ``tests`` repeat).
    """
    from .train import evaluate
    folder = _folder(root)
    folder.mkdir(parents=True, exist_ok=True)
    half = {k: (v.detach().cpu().half() if v.is_floating_point() else v.detach().cpu())
            for k, v in teacher.state_dict().items()}
    path = folder / f"{name}.pt"
    tmp = path.with_name(path.name + ".tmp")
    torch.save(half, tmp)
    os.replace(tmp, path)
    spec = dict(teacher.spec)
    rounded = _build({"model": spec})
    rounded.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in half.items()})
    rounded.eval()
    x, y = data.x_test.cpu(), data.y_test.cpu()
    test_acc = evaluate(rounded, x, y)["acc"]
    check_acc = evaluate(rounded, x[::5], y[::5])["acc"]
    info_card = {
        "format": CARD_FORMAT, "name": name, "config": info["config"], "key": info["key"],
        "model": {**{k: spec[k] for k in ("name", "num_classes", "in_channels", "width", "depth")},
                  "input_shape": list(data.input_shape),
                  "parameters": sum(p.numel() for p in teacher.parameters())},
        "classes": list(data.classes),
        "data": data.name,  # what was read: e.g. cifar10-jpeg, the JPEG copy, where torchvision's files were absent
        "test_acc": test_acc, "n_test": int(y.shape[0]),
        "check_acc": check_acc, "check_subset": "x_test[::5] (every fifth test image)",
        # a shipped teacher shipped again has only its half-precision weights: no float32 figure
        "test_acc_float32": None if info.get("shipped") else info["metrics"].get("test_acc"),
        "wall_time_s": info["wall_time_s"], "device": info["device"],
        "machine": _machine(info["device"]),
        "sha256": _sha256(path), "bytes": path.stat().st_size, "command": command,
    }
    (folder / f"{name}.json").write_text(json.dumps(info_card, indent=1) + "\n")
    return info_card
