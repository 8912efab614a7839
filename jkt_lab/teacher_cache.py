"""The teacher is a constant: its outputs on an input, computed once, serve every later step
that sees the same input again.

During distillation the teacher is frozen and in eval mode (no batch statistics), so its logits
and its Jacobians of the chosen outputs (Section 3) are a function of the input alone. A few-shot
training set is small and its inputs repeat: the same image with the same crop and flip
(``Batches(return_keys=True)`` numbers each distinct input; ``views=K`` makes them repeat more).
:class:`TeacherCache` keeps the teacher's per-example outputs by that key, within a memory
budget, and computes only the inputs it has not seen. The cached values are the ones the
teacher would compute again, so training with the cache follows the same loss sequence as
without it (tested to a relative 1e-5; bitwise on the development CPU, where the teacher runs on
sub-batches of at least :data:`MIN_ROWS` examples: below that, CPU convolutions take other
kernels that round differently).

A key names an input only within one setting: the teacher's weights, the training set, the
augmentation that numbers the views, and what is asked of the teacher (logits, or the Jacobian
of which output). :func:`cache_context` fingerprints these, and :meth:`TeacherCache.bind` drops
every entry when a cache kept across runs is used in another setting. The cache lives in memory
for the run (``fit`` makes one per run unless given one). There is no disk cache: within a run
each input is computed at most once, and runs share few inputs, since the few-shot subset and
the pool of views are drawn from the run's seed: only the runs of one seed and size with the
same matched output (a selection grid's weights) could reuse another's entries.
"""
from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from ._checks import check_int

__all__ = ["TeacherCache", "DEFAULT_MAX_BYTES", "MIN_ROWS", "TeacherCacheFull", "cache_context", "tensor_fingerprint"]

DEFAULT_MAX_BYTES = 1 << 30  # 1 GiB: about 80,000 CIFAR-sized top-1 Jacobians with their logits
MIN_ROWS = 8  # the fewest examples the teacher is run on (see TeacherCache.get)


class TeacherCacheFull(UserWarning):
    """The teacher cache reached its memory budget: later inputs are computed every time."""


def tensor_fingerprint(*tensors: torch.Tensor) -> str:
    """sha256 of the tensors' dtypes, shapes and bytes (on the CPU), in order."""
    h = hashlib.sha256()
    for t in tensors:
        shape = t.shape
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(f"{t.dtype}{tuple(shape)};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def cache_context(teacher: nn.Module, x: torch.Tensor, y: torch.Tensor, views: Mapping, asked: Mapping) -> dict:
    """What a key means: the teacher's weights and buffers (sha256), the training set ``(x, y)``
    (sha256), the numbering of augmented views (``views``: e.g. the pool size and its seed) and
    what is asked of the teacher (``asked``: e.g. the method, the matched output, the device)."""
    state = teacher.state_dict()
    return {"teacher": tensor_fingerprint(*(state[k] for k in sorted(state))) + ":" + ",".join(sorted(state)),
            "data": tensor_fingerprint(x, y), "views": dict(views), "asked": dict(asked)}


class TeacherCache:
    """Per-example teacher outputs by input key, at most ``max_bytes`` of them (later inputs are
    computed every time, and a :class:`TeacherCacheFull` warning says so once). ``hits`` and
    ``misses`` count examples served from and computed for the cache; ``invalidations`` the
    times :meth:`bind` dropped the entries of another setting."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES):
        self.max_bytes = check_int(max_bytes, "max_bytes", minimum=0)
        self._rows: dict[int, tuple[torch.Tensor, ...]] = {}
        self.bytes = self.hits = self.misses = self.invalidations = 0
        self.context: dict | None = None
        self.full = False

    def __len__(self) -> int:
        return len(self._rows)

    def clear(self) -> None:
        """Drop every entry (the counters stay)."""
        self._rows.clear()
        self.bytes = 0
        self.full = False

    def bind(self, context: Mapping) -> bool:
        """Serve the setting ``context`` (:func:`cache_context`) from now on: entries made in
        another setting are dropped, since a key names a different input or output there.
        Returns True when the entries were kept."""
        context = dict(context)
        keep = self.context is None and not self._rows or self.context == context
        if not keep:
            self.clear()
            self.invalidations += 1
        self.context = context
        return keep

    def get(self, keys: torch.Tensor, compute: Callable[[torch.Tensor], Sequence[torch.Tensor]]) -> tuple[torch.Tensor, ...]:
        """The teacher's outputs for a batch whose inputs have ``keys`` (one integer per example).

        ``compute(positions)`` returns the outputs (tensors with the batch dimension first) for
        the examples at ``positions`` of the batch; it is called once, for the keys not cached.
        """
        if not isinstance(keys, torch.Tensor) or keys.dim() != 1 or keys.is_floating_point():
            raise TypeError(f"keys must be a 1-d integer tensor (one key per example), got {keys!r:.80}")
        batch = keys.tolist()
        missing = [i for i, k in enumerate(batch) if k not in self._rows]
        fresh: dict[int, tuple[torch.Tensor, ...]] = {}
        if missing:
            # At least MIN_ROWS rows per teacher call (padded with inputs of this batch that are
            # cached): on the CPU, convolutions of 1 to 4 examples take other kernels whose
            # results differ in the last bits from the same examples' in a larger batch.
            todo = set(missing)
            pad = [i for i in range(len(batch)) if i not in todo][:max(0, MIN_ROWS - len(missing))]
            out = tuple(t.detach() for t in compute(torch.tensor(missing + pad, device=keys.device)))
            for j, i in enumerate(missing):
                row = tuple(t[j].clone() for t in out)  # a copy: a view would keep the whole batch alive
                fresh[i] = row
                size = sum(t.numel() * t.element_size() for t in row)
                if self.bytes + size <= self.max_bytes:
                    self._rows[batch[i]] = row
                    self.bytes += size
                elif not self.full:
                    self.full = True
                    warnings.warn(
                        f"teacher cache full: {len(self._rows)} inputs in {self.bytes / 2**20:.1f} MiB reached "
                        f"max_bytes={self.max_bytes} ({self.max_bytes / 2**20:.1f} MiB); inputs not cached are "
                        f"computed every time they come (the losses are the same, the steps slower). Give fit a "
                        f"TeacherCache(max_bytes=...) with more room, or draw augmentation from a smaller pool of "
                        f"views (Config.augment_views)", TeacherCacheFull, stacklevel=3)
        self.misses += len(missing)
        self.hits += len(batch) - len(missing)
        rows = [fresh[i] if i in fresh else self._rows[k] for i, k in enumerate(batch)]
        return tuple(torch.stack(parts) for parts in zip(*rows))

    def stats(self) -> dict:
        """``{"hits", "misses", "hit_rate", "entries", "bytes", "full", "invalidations"}`` so far."""
        seen = self.hits + self.misses
        return {"hits": self.hits, "misses": self.misses, "hit_rate": self.hits / seen if seen else 0.0,
                "entries": len(self._rows), "bytes": self.bytes, "full": self.full,
                "invalidations": self.invalidations}
