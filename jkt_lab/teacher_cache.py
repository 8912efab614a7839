"""The teacher is a constant: its outputs on an input, computed once, serve every later step
that sees the same input again.

During distillation the teacher is frozen and in eval mode (no batch statistics), so its logits
and its Jacobians of the chosen outputs (Section 3) are a function of the input alone. A few-shot
training set is small and its inputs repeat: the same image with the same crop and flip
(``Batches(return_keys=True)`` numbers each distinct input; ``views=K`` makes them repeat more).
:class:`TeacherCache` keeps the teacher's per-example outputs by that key, within a memory
budget, and computes only the inputs it has not seen. The cached values are the ones the
teacher would compute again, so training with the cache follows the same loss sequence as
without it (tested; equal up to float rounding, as the teacher then runs on sub-batches).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ._checks import check_int

__all__ = ["TeacherCache", "DEFAULT_MAX_BYTES"]

DEFAULT_MAX_BYTES = 1 << 30  # 1 GiB: about 80,000 CIFAR-sized top-1 Jacobians with their logits


class TeacherCache:
    """Per-example teacher outputs by input key, at most ``max_bytes`` of them (later inputs are
    computed every time). ``hits`` and ``misses`` count examples served from and computed
    for the cache."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES):
        self.max_bytes = check_int(max_bytes, "max_bytes", minimum=0)
        self._rows: dict[int, tuple[torch.Tensor, ...]] = {}
        self.bytes = self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._rows)

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
            out = tuple(t.detach() for t in compute(torch.tensor(missing, device=keys.device)))
            for j, i in enumerate(missing):
                row = tuple(t[j].clone() for t in out)  # a copy: a view would keep the whole batch alive
                fresh[i] = row
                size = sum(t.numel() * t.element_size() for t in row)
                if self.bytes + size <= self.max_bytes:
                    self._rows[batch[i]] = row
                    self.bytes += size
        self.misses += len(missing)
        self.hits += len(batch) - len(missing)
        rows = [fresh[i] if i in fresh else self._rows[k] for i, k in enumerate(batch)]
        return tuple(torch.stack(parts) for parts in zip(*rows))

    def stats(self) -> dict:
        """``{"hits", "misses", "hit_rate", "entries", "bytes"}`` so far."""
        seen = self.hits + self.misses
        return {"hits": self.hits, "misses": self.misses, "hit_rate": self.hits / seen if seen else 0.0,
                "entries": len(self._rows), "bytes": self.bytes}
