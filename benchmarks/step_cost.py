"""Cost of a training step of each method, side by side in one run: ratios to ce and to an uncached kd step.

    OMP_NUM_THREADS=1 python benchmarks/step_cost.py --device cpu --threads 1   # the CPU scale
    python benchmarks/step_cost.py --device cuda                                # the GPU scale
    python benchmarks/step_cost.py --device cpu --out benchmarks/results/cpu_2core.json

Pair: the VGG-9 teacher and VGG-4 student of ``jkt-lab reproduce`` on CIFAR-sized inputs
(3x32x32, 10 classes): on the CPU its CPU scale (teacher width 32, student width 16, batch 64),
on a GPU its GPU scale (widths 64 and 32, batch 128); ``--width-scale`` and ``--batch`` change
them. A step is the method's loss (``jkt_lab.methods``), backward and an SGD step. "cached"
rows serve the teacher's outputs from a :class:`~jkt_lab.teacher_cache.TeacherCache` that has
seen the batch (the steady state of a run whose inputs repeat: a pool of views); the others
run the teacher every step. The Jacobian rows are Section 3's matching of one output per
example (top-1, normalised loss; ``jkt_lab.jacobian.jacobian_forward``: BatchNorm statistics
held in a second pass), and random projections (never cached: drawn anew each step).
"Jacobian pass with native ReLU/pooling" runs the held pass without the constant-mask forms
(``jkt_lab.jacobian._with_constant_masks``). The models' weights are in the memory format
``fit`` uses (``jkt_lab.train.memory_format_for``: channels-last on the CPU); the
"contiguous (NCHW)" rows keep the default format.

The steps are timed in rounds (one of each per round, in turn, so that every row sees the
same machine load: the project's CPUs are shared); the time is the median over ``--steps``
rounds after ``--warmup`` (CUDA synchronised) and each ratio the median of the per-round
ratios. ``s per run`` is 300 steps (the CPU scale's budget) at the median time, without the
teacher's work to fill the cache (the last row: the teacher's logits and top-1 Jacobian for
one batch; a run fills it once per distinct input). A second table times the exact
all-output Jacobian (k = 100 outputs) through torch.func against a loop over outputs.
See benchmarks/README.md for measured tables.
"""
from __future__ import annotations

import argparse
import copy
import importlib
import json
import platform
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from jkt_lab.config import Config
from jkt_lab.jacobian import input_jacobian, teacher_jacobian
from jkt_lab.methods import make_method
from jkt_lab.models import build_model
from jkt_lab.results import to_markdown
from jkt_lab.teacher_cache import TeacherCache
from jkt_lab.train import memory_format_for, resolve_device

jacobian_module = importlib.import_module("jkt_lab.jacobian")

RUN_STEPS = 300  # the CPU scale's step budget (jkt_lab.reproduce.SCALES["cpu"])

# (label, method, config changes, options): options "cached", "native" (no constant masks), "contiguous"
STEPS = [
    ("ce", "ce", {}, ()),
    ("kd", "kd", {}, ()),
    ("kd, cached", "kd", {}, ("cached",)),
    ("kd + top-1 Jacobian", "kd+jacobian", {}, ()),
    ("kd + top-1 Jacobian, cached", "kd+jacobian", {}, ("cached",)),
    ("kd + top-1 Jacobian, cached, Jacobian pass with native ReLU/pooling", "kd+jacobian", {}, ("cached", "native")),
    ("kd + top-1 Jacobian, cached, contiguous (NCHW) weights", "kd+jacobian", {}, ("cached", "contiguous")),
    ("kd, contiguous (NCHW) weights", "kd", {}, ("contiguous",)),
    ("ce, contiguous (NCHW) weights", "ce", {}, ("contiguous",)),
    ("kd + random-projection Jacobian", "kd+jacobian", {"jacobian_output": "random"}, ()),
]
KD, CE, TOP1 = 1, 0, 3  # rows the ratios refer to


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _median_time(fn, device, warmup: int, steps: int) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@contextmanager
def _native_jacobian_pass(on: bool):
    """The held pass without constant-mask forms (the package before issue 22), for one row."""
    if not on:
        yield
        return
    saved = jacobian_module._with_constant_masks
    jacobian_module._with_constant_masks = lambda module: None
    try:
        yield
    finally:
        jacobian_module._with_constant_masks = saved


def _step_fn(name, changes, options, teacher, width, x, y, device, amp):
    """One training step (loss, backward, SGD) of a fresh vgg4 student with ``name``'s loss."""
    fmt = torch.contiguous_format if "contiguous" in options else memory_format_for(device)  # what fit uses
    student = build_model("vgg4", 10, width=width, seed=1).to(device, memory_format=fmt).train()
    teacher = copy.deepcopy(teacher).to(memory_format=fmt)
    cache = TeacherCache() if "cached" in options else None
    method = make_method(name, student, teacher if name != "ce" else None, Config(method=name, amp=amp, **changes),
                         teacher_cache=cache)
    assert ("cached" in options) == (method.teacher_cache is not None), name
    keys = torch.arange(x.shape[0], device=device)
    opt = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9)
    counter = iter(range(10**9))

    def one_step():
        with _native_jacobian_pass("native" in options), \
                torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
            _, terms = method.loss(x, y, next(counter), keys=keys)
        loss = sum(terms.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return one_step


def step_costs(device, batch: int, width_scale: float, warmup: int, steps: int, amp: bool = False) -> list[dict]:
    """Time every step of :data:`STEPS` in rounds (one step of each per round, in turn), so that
    every row sees the same machine load; medians over rounds, and each ratio is the median of
    the per-round ratios. The last row is the teacher's work to fill the cache for one batch."""
    w_t, w_s = max(4, int(64 * width_scale)), max(4, int(32 * width_scale))
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, 32, 32, generator=gen).to(device)
    y = torch.randint(0, 10, (batch,), generator=gen).to(device)
    teacher = build_model("vgg9", 10, width=w_t, seed=0).to(device, memory_format=memory_format_for(device)).eval()
    fns = [_step_fn(name, changes, options, teacher, w_s, x, y, device, amp) for _, name, changes, options in STEPS]

    def fill():
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
            teacher_jacobian(teacher, x)
    labels = [label for label, *_ in STEPS] + ["teacher's outputs for one batch (cache fill, top-1 Jacobian)"]
    fns.append(fill)
    times = [[] for _ in fns]
    for r in range(warmup + steps):
        for fn, t in zip(fns, times):
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            if r >= warmup:
                t.append(time.perf_counter() - t0)

    def ratio(i, j):
        return statistics.median(a / b for a, b in zip(times[i], times[j]))
    rows = []
    for i, label in enumerate(labels):
        ms = 1000 * statistics.median(times[i])
        row = {"step": label, "ms per step": ms, "ratio to kd": ratio(i, KD), "ratio to ce": ratio(i, CE),
               "ratio to top-1 uncached": ratio(i, TOP1) if i < len(STEPS) and STEPS[i][1] == "kd+jacobian" else None,
               f"s per {RUN_STEPS}-step run": ms * RUN_STEPS / 1000 if i < len(STEPS) else None}
        rows.append(row)
        print(f"  {label:70s} {ms:9.2f} ms   x{row['ratio to kd']:5.2f} of kd   x{row['ratio to ce']:5.2f} of ce",
              flush=True)
    return rows


def jacobian_costs(device, batch: int, width_scale: float, warmup: int, steps: int, k: int = 100) -> list[dict]:
    model = build_model("vgg4", k, width=max(4, int(32 * width_scale)), seed=0).to(device).eval()
    x = torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(0)).to(device)
    ref = input_jacobian(model, x, method="loop")
    fast = input_jacobian(model, x, method="vmap")
    err = float((fast - ref).norm() / ref.norm())
    t_loop = _median_time(lambda: input_jacobian(model, x, method="loop"), device, warmup, steps)
    t_vmap = _median_time(lambda: input_jacobian(model, x, method="vmap"), device, warmup, steps)
    rows = [{"jacobian": f"loop over {k} outputs", "median_ms": 1000 * t_loop, "speedup": 1.0},
            {"jacobian": f"torch.func vmap ({k} outputs)", "median_ms": 1000 * t_vmap, "speedup": t_loop / t_vmap}]
    print(f"  loop {1000 * t_loop:.1f} ms, vmap {1000 * t_vmap:.1f} ms: x{t_loop / t_vmap:.2f} "
          f"(relative difference {err:.1e})", flush=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--batch", type=int, default=None, help="default: 128 on GPU, 64 on CPU")
    p.add_argument("--width-scale", type=float, default=None,
                   help="widths x this of (teacher 64, student 32) (default 1 on GPU, 0.5 on CPU)")
    p.add_argument("--steps", type=int, default=None, help="timed rounds (default 30 GPU / 10 CPU)")
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--jacobian-batch", type=int, default=None, help="batch of the all-output Jacobian timing")
    p.add_argument("--no-jacobian-table", action="store_true", help="skip the all-output Jacobian table")
    p.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out", default=None, help="write the tables as JSON here (and .md beside it)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    gpu = device.type == "cuda"
    batch = args.batch or (128 if gpu else 64)
    scale = args.width_scale or (1.0 if gpu else 0.5)
    steps = args.steps or (30 if gpu else 10)
    warmup = args.warmup if args.warmup is not None else (10 if gpu else 2)
    jbatch = args.jacobian_batch or (64 if gpu else 8)
    card = torch.cuda.get_device_name(device) if gpu else platform.processor() or platform.machine() or "cpu"
    print(f"device: {device} ({card}), torch {torch.__version__}, {torch.get_num_threads()} thread(s), batch {batch}, "
          f"vgg9 width {max(4, int(64 * scale))} -> vgg4 width {max(4, int(32 * scale))}, "
          f"median of {steps} rounds after {warmup}")
    t0 = time.perf_counter()
    step_rows = step_costs(device, batch, scale, warmup, steps, amp=args.amp)
    jac_rows = []
    if not args.no_jacobian_table:
        print(f"exact all-output Jacobian, k = 100, batch {jbatch}:")
        jac_rows = jacobian_costs(device, jbatch, scale, max(1, warmup // 2), max(3, steps // 3))
    print()
    print(to_markdown(step_rows, floatfmt=".2f"))
    if jac_rows:
        print()
        print(to_markdown(jac_rows, floatfmt=".2f"))
    print(f"\n({time.perf_counter() - t0:.0f} s)")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        meta = {"device": str(device), "card": card, "torch": torch.__version__, "batch": batch,
                "width_scale": scale, "steps": steps, "warmup": warmup, "amp": args.amp,
                "jacobian_batch": jbatch, "threads": torch.get_num_threads()}
        out.write_text(json.dumps({"meta": meta, "steps": step_rows, "jacobian": jac_rows}, indent=1))
        out.with_suffix(".md").write_text(f"{meta}\n\n{to_markdown(step_rows, floatfmt='.2f')}\n\n"
                                          f"{to_markdown(jac_rows, floatfmt='.2f') if jac_rows else ''}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
