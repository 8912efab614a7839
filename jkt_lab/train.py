"""Training and evaluation: ``fit`` a student with a method, ``evaluate`` it (optionally under noise).

Everything random is a function of the config's seed, the epoch and the step (batch order and
augmentation: seed and epoch; noise and random projections: seed and step), so the same config
on the CPU gives the same numbers, and a run resumed from a checkpoint ends exactly where an
uninterrupted run would.
"""
from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import check_batch, check_labels, check_nonnegative, check_int
from .config import Config
from . import progress as progress_mod
from .data import Batches, Data, add_noise
from .methods import get_method, make_method
from .saliency import saliency_cosine
from .teacher_cache import TeacherCache, cache_context

__all__ = ["Result", "fit", "evaluate", "robustness", "resolve_device", "NonFiniteLossError",
           "CheckpointError", "save_checkpoint", "load_checkpoint", "memory_format_for"]

CHECKPOINT_FORMAT = "jkt_lab-checkpoint-1"


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or inf: training stops and names the term."""


class CheckpointError(RuntimeError):
    """A checkpoint could not be read or does not belong to this run."""


@dataclass
class Result:
    """What a run produced: its config, final metrics, per-epoch history and the trained model."""

    config: Config
    metrics: dict
    history: list[dict]
    wall_time_s: float
    device: str
    model: nn.Module | None = field(default=None, repr=False)

    def to_record(self) -> dict:
        from .results import make_record
        return make_record(self.config.to_dict(), self.metrics, history=self.history,
                           wall_time_s=self.wall_time_s, device=self.device)


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` picks CUDA when available, else the CPU; ``"cuda"`` without a GPU is an error."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was asked for but no CUDA GPU is available; use device='cpu' or 'auto'")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    return dev


def memory_format_for(device: torch.device) -> torch.memory_format:
    """The memory format ``fit`` puts the models' convolution weights in: channels-last on the
    CPU, where oneDNN convolutions run natively in it (ce, kd and Jacobian-matching steps of
    the CPU scale 7-25% faster, ``benchmarks/README.md``; the same numbers up to float
    rounding), the default elsewhere (not measured on a GPU in fp32)."""
    return torch.channels_last if torch.device(device).type == "cpu" else torch.preserve_format


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, sigma: float = 0.0, seed: int = 0,
             batch_size: int = 1000) -> dict:
    """Accuracy and cross-entropy of ``model`` on ``(x, y)``, inputs optionally corrupted by
    Gaussian noise of std ``sigma`` (pixel units, before normalisation; noise seeded by ``seed``)."""
    check_batch(x, "x")
    sigma = check_nonnegative(sigma, "sigma")
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    was_training = model.training
    model.eval()
    try:
        n_out = None
        correct, total_loss = 0, 0.0
        gen = torch.Generator().manual_seed(int(seed))
        for start in range(0, x.shape[0], batch_size):
            xb, yb = x[start:start + batch_size], y[start:start + batch_size]
            if sigma > 0:
                xb = add_noise(xb, sigma, generator=gen)
            logits = model(xb)
            if n_out is None:
                n_out = logits.shape[1]
                check_labels(y, x.shape[0], n_out, "y")
            correct += int((logits.argmax(1) == yb).sum())
            total_loss += float(F.cross_entropy(logits.float(), yb, reduction="sum"))
    finally:
        model.train(was_training)
    n = x.shape[0]
    return {"acc": correct / n, "loss": total_loss / n, "n": n, "sigma": sigma}


def robustness(model: nn.Module, data: Data, sigmas: Sequence[float], *, seed: int = 0, split: str = "test") -> list[dict]:
    """Accuracy under Gaussian input noise at each sigma (the paper's robustness experiment)."""
    if split not in ("test", "val"):
        raise ValueError(f"split must be 'test' or 'val', got {split!r}")
    x, y = (data.x_test, data.y_test) if split == "test" else (data.x_val, data.y_val)
    return [{"sigma": float(s), **evaluate(model, x, y, sigma=s, seed=seed)} for s in sigmas]


def _lr_factor(schedule: str, step: int, total: int) -> float:
    frac = min(step / max(total, 1), 1.0)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * frac))
    if schedule == "step":
        return 1.0 if frac < 0.5 else 0.1 if frac < 0.75 else 0.01
    return 1.0


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write atomically: temp file, fsync, keep the current file as ``<path>.prev``, rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        torch.save({"format": CHECKPOINT_FORMAT, **state}, fh)
        fh.flush()
        os.fsync(fh.fileno())
    if path.exists():
        os.replace(path, path.with_name(path.name + ".prev"))
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`; a damaged file is a clear error."""
    path = Path(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for damaged files
        prev = path.with_name(path.name + ".prev")
        hint = f" The previous checkpoint {prev} is intact: rename it to {path.name} to resume from it." \
            if prev.exists() else ""
        raise CheckpointError(f"checkpoint {path} is corrupt or unreadable ({type(exc).__name__}: {exc}).{hint}") from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a jkt_lab checkpoint (format {CHECKPOINT_FORMAT!r} expected)")
    return state


JACOBIAN_PROBE = 64  # validation images on which each history row measures the Jacobian cosine


def _jacobian_cosines(student: nn.Module, teacher: nn.Module, x_train: torch.Tensor, x_val: torch.Tensor) -> dict:
    """Teacher-student cosine of top-1 Jacobians (eval mode), on the last training batch and on
    a fixed validation probe: ``jacobian_cosine/train`` and ``jacobian_cosine/val``."""
    out = {"jacobian_cosine/train": saliency_cosine(student, teacher, x_train.detach())}
    if x_val.shape[0]:
        out["jacobian_cosine/val"] = saliency_cosine(student, teacher, x_val)
    return out


def fit(student: nn.Module, method: str, data: Data, *, teacher: nn.Module | None = None,
        config: Config | None = None, device: str | torch.device | None = "auto",
        checkpoint: str | Path | None = None, checkpoint_every: int = 1, progress: bool = True,
        callback: Callable[[dict], None] | None = None, desc: str | None = None,
        teacher_cache: bool | TeacherCache = True) -> Result:
    """Train ``student`` on ``data`` with ``method`` (a name from :data:`jkt_lab.methods.METHODS`).

    SGD with momentum and weight decay, learning-rate ``schedule`` over the run, ``epochs`` or a
    ``steps`` budget, optional bf16 autocast on CUDA (``amp``). Returns a :class:`Result` whose
    history holds one row every ``eval_every`` epochs (default: about 20 rows a run) with the
    mean of every loss term and the training accuracy since the previous row, and the
    validation accuracy; with a teacher of the same outputs, also the teacher-student cosine of
    top-1 Jacobians (eval mode) on the last training batch and on the first
    :data:`JACOBIAN_PROBE` validation images (``jacobian_cosine/train``, ``jacobian_cosine/val``).
    ``callback`` receives each row as it is made (live plots). ``progress``: a bar on a terminal
    and one line when the run ends (:mod:`jkt_lab.progress`), named ``desc``. With
    ``checkpoint``, the state is saved every ``checkpoint_every`` rows (and at the end), and an
    existing checkpoint of the same config is resumed. ``teacher_cache``: the teacher's outputs
    on each distinct training input are computed once and reused when the input comes again
    (:mod:`jkt_lab.teacher_cache`; the same losses, fewer teacher passes); pass ``False`` to
    compute them every step, or a :class:`~jkt_lab.teacher_cache.TeacherCache` to read its
    ``stats()`` afterwards or to share it between runs (entries of another teacher, training
    set, view numbering or matched output are dropped first:
    :meth:`~jkt_lab.teacher_cache.TeacherCache.bind`). Inputs with training noise
    (``train_sigma``) never repeat.
    """
    config = config or Config(method=method)
    get_method(method)  # unknown names list the valid ones
    if not isinstance(data, Data):
        raise TypeError(f"data must be a jkt_lab.data.Data, got {type(data).__name__}")
    dev = resolve_device(device)
    if config.amp and dev.type != "cuda":
        raise ValueError("amp=True (bf16 autocast) needs a CUDA device; set amp=False on the CPU")
    num_out = getattr(student, "num_classes", None)
    if num_out is not None and num_out != data.num_classes:
        raise ValueError(f"student has {num_out} outputs but dataset {data.name!r} has {data.num_classes} classes")
    data = data.to(dev)
    fmt = memory_format_for(dev)
    student.to(dev, memory_format=fmt)
    if teacher is not None:
        teacher.to(dev, memory_format=fmt)
    if not isinstance(teacher_cache, (bool, TeacherCache)):
        raise TypeError(f"teacher_cache must be a bool or a TeacherCache, got {type(teacher_cache).__name__}")
    given_cache = isinstance(teacher_cache, TeacherCache)
    if teacher_cache is True:
        teacher_cache = TeacherCache()
    use_cache = teacher_cache is not False and teacher is not None and not config.train_sigma
    runner = make_method(method, student, teacher, config, teacher_cache=teacher_cache if use_cache else None)

    augment = config.augment and data.x_train.shape[-1] >= 16
    pool = config.augment_views if augment else None
    batches = Batches(data.x_train, data.y_train, min(config.batch_size, data.x_train.shape[0]),
                      shuffle=True, augment=augment, views=pool, seed=config.seed, drop_last=False, return_keys=True)
    if given_cache and runner.teacher_cache is not None:  # it may hold another run's entries: keys must mean the same
        teacher_cache.bind(cache_context(
            teacher, data.x_train, data.y_train,
            views={"augment": augment, "n_views": batches.n_views, "pool_seed": config.seed if pool else None,
                   "pad": batches.pad, "flip": batches.flip},
            asked={"method": method, "output": config.jacobian_output, "source": config.jacobian_source,
                   "amp": config.amp, "device": str(dev)}))
    total_steps = config.steps or config.epochs * len(batches)
    n_epochs = math.ceil(total_steps / len(batches)) if total_steps else 0
    params = [p for p in student.parameters() if p.requires_grad]
    fused = dev.type == "cuda"
    optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay,
                                nesterov=config.momentum > 0, **({"fused": True} if fused else {}))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(config.schedule, s, total_steps))

    history: list[dict] = []
    start_epoch, step, elapsed = 0, 0, 0.0
    if checkpoint is not None and Path(checkpoint).exists():
        state = load_checkpoint(checkpoint, map_location=dev)
        if state.get("config") != config.to_dict():
            raise CheckpointError(f"checkpoint {checkpoint} belongs to a different config; "
                                  "delete it or choose another checkpoint path")
        student.load_state_dict(state["student"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, step, elapsed = state["epoch"], state["step"], state["wall_time_s"]
        history = list(state["history"])

    every = config.eval_every or max(1, n_epochs // 20)
    probe_cosine = teacher is not None and runner.matches_logits
    sums: dict[str, float] = {}
    correct = seen = 0
    desc = desc or f"{method} (seed {config.seed}) on {data.name}"
    bar = progress_mod.bar(total=total_steps, initial=step, desc=desc, unit="step", progress=progress)
    t0 = time.perf_counter()
    try:
        for epoch in range(start_epoch, n_epochs):
            student.train()
            batches.set_epoch(epoch)
            for x, y, keys in batches:
                if step >= total_steps:
                    break
                if config.train_sigma:  # Gaussian input-noise augmentation (a robust teacher); seeded by (seed, step)
                    x = add_noise(x, config.train_sigma, seed=config.seed * 1_000_003 + step + 1)
                with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=config.amp):
                    logits, terms = runner.loss(x, y, step, keys=keys)
                for name, value in terms.items():
                    if not torch.isfinite(value):
                        raise NonFiniteLossError(
                            f"loss term {name!r} became {float(value.detach())} at epoch {epoch}, step {step} "
                            f"(method {method!r}); lower the learning rate (now {config.lr:g}) or the weight "
                            f"of {name!r}")
                loss = sum(terms.values())
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                step += 1
                n = y.shape[0]
                for name, value in terms.items():
                    sums[name] = sums.get(name, 0.0) + float(value.detach()) * n
                sums["loss"] = sums.get("loss", 0.0) + float(loss.detach()) * n
                correct += int((logits.detach().argmax(1) == y).sum())
                seen += n
                bar.update(1)
                if not bar.disable:
                    bar.set_postfix(loss=f"{float(loss.detach()):.3f}", refresh=False)
            last = epoch + 1 == n_epochs
            if (epoch + 1) % every and not last:
                continue
            # One history row per `every` epochs: loss terms and training accuracy averaged since the last row.
            row = {"epoch": epoch + 1, "step": step, **{f"loss/{k}": v / max(seen, 1) for k, v in sums.items()},
                   "train_acc": correct / max(seen, 1), "lr": optimizer.param_groups[0]["lr"]}
            sums, correct, seen = {}, 0, 0
            if data.x_val.shape[0]:
                row["val_acc"] = evaluate(student, data.x_val, data.y_val)["acc"]
            if probe_cosine:
                row.update(_jacobian_cosines(student, teacher, x, data.x_val[:JACOBIAN_PROBE]))
            history.append(row)
            if callback is not None:
                callback(row)
            if checkpoint is not None and (len(history) % checkpoint_every == 0 or last):
                save_checkpoint(checkpoint, {"config": config.to_dict(), "epoch": epoch + 1, "step": step,
                                             "student": student.state_dict(), "optimizer": optimizer.state_dict(),
                                             "scheduler": scheduler.state_dict(), "history": history,
                                             "wall_time_s": elapsed + time.perf_counter() - t0})
    except BaseException:
        bar.close()
        raise
    elapsed += time.perf_counter() - t0
    metrics = {"test_acc": evaluate(student, data.x_test, data.y_test)["acc"],
               "train_acc": evaluate(student, data.x_train, data.y_train)["acc"], "steps": step}
    if data.x_val.shape[0]:
        metrics["val_acc"] = evaluate(student, data.x_val, data.y_val)["acc"]
    val = f", val acc {100 * metrics['val_acc']:.1f}%" if "val_acc" in metrics else ""
    progress_mod.done(bar, f"{desc}: {step} steps in {elapsed:.1f} s, train acc {100 * metrics['train_acc']:.1f}%{val}",
                      progress=progress)
    return Result(config=config, metrics=metrics, history=history, wall_time_s=elapsed, device=str(dev), model=student)
