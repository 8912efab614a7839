"""Cost of a Jacobian-matching training step, as ratios to a plain KD step measured in the same run.

    python benchmarks/step_cost.py                 # GPU if present, else a small CPU setting
    python benchmarks/step_cost.py --device cpu --batch 32 --width-scale 0.25
    python benchmarks/step_cost.py --out benchmarks/results/h100.json

Pair: paper-style VGG teacher (vgg9) and student (vgg4) on CIFAR-sized inputs (3x32x32),
10 classes. Each step is the method's loss, backward and an SGD step; the steps are timed in
rounds (one of each per round), the time is the median of ``--steps`` rounds after ``--warmup``
(CUDA synchronised) and each ratio the median of the per-round ratios. Each Jacobian step is timed twice:
the per-example training Jacobian (``jkt_lab.jacobian.jacobian_forward``: BatchNorm statistics
held in a second pass) and the batch-mixed one the package used before issue 9 (one pass, the
gradient of the summed batch); ``ratio_to_batch_mixed`` is their ratio in the same run. A second
table times the exact all-output Jacobian (k = 100 outputs) through torch.func against a loop
over outputs.
See benchmarks/README.md for measured tables.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from jkt_lab import methods
from jkt_lab.config import Config
from jkt_lab.jacobian import input_jacobian, output_jacobian, projections
from jkt_lab.methods import make_method
from jkt_lab.models import build_model
from jkt_lab.results import to_markdown
from jkt_lab.train import resolve_device

STEPS = [  # (label, method, config changes, Jacobian path: "per-example" or "batch-mixed")
    ("kd", "kd", {}, None),
    ("kd + normalised top-1 Jacobian", "kd+jacobian", {"jacobian_output": "top1"}, "per-example"),
    ("kd + normalised top-1 Jacobian", "kd+jacobian", {"jacobian_output": "top1"}, "batch-mixed"),
    ("kd + random-projection Jacobian", "kd+jacobian", {"jacobian_output": "random"}, "per-example"),
    ("kd + random-projection Jacobian", "kd+jacobian", {"jacobian_output": "random"}, "batch-mixed"),
    ("kd + exact 10-output Jacobian", "kd+jacobian", {"jacobian_output": "all"}, "per-example"),
    ("kd + exact 10-output Jacobian", "kd+jacobian", {"jacobian_output": "all"}, "batch-mixed"),
    ("noise distillation, 4 samples", "noise", {"n_samples": 4, "sigma": 0.05}, None),
]


def batch_mixed_jacobians(student, teacher, x, output="top1", *, labels=None, generator=None, create_graph=False,
                          teacher_outputs=None):
    """The training Jacobian before issue 9 (the baseline the per-example path is timed against):
    one forward pass on x and the gradient of the summed batch, which with train-mode BatchNorm
    mixes every example into every row (the student's; the teacher is in eval mode, so its rows
    and ``teacher_outputs`` from the teacher cache are its own either way)."""
    xg = x.detach().requires_grad_(True)
    if teacher_outputs is None:
        t_logits = teacher(xg)
        v = projections(t_logits.detach(), output, labels=labels, generator=generator)
        j_t = output_jacobian(t_logits, xg, v)
    else:
        j_t, t_logits = teacher_outputs
        v = projections(t_logits, output, labels=labels)
    s_logits = student(xg)
    return output_jacobian(s_logits, xg, v, create_graph=create_graph), j_t, s_logits, t_logits.detach()


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


def step_costs(device, batch: int, width_scale: float, warmup: int, steps: int, amp: bool = False) -> list[dict]:
    """Time every step of :data:`STEPS` in rounds (one step of each per round, in turn), so that
    every row sees the same machine load (the project's CPUs are shared); medians over rounds,
    and each ratio is the median of the per-round ratios."""
    w_t, w_s = max(4, int(64 * width_scale)), max(4, int(32 * width_scale))
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, 32, 32, generator=gen).to(device)
    y = torch.randint(0, 10, (batch,), generator=gen).to(device)
    teacher = build_model("vgg9", 10, width=w_t, seed=0).to(device).eval()
    runs = [_step_fn(name, changes, path, teacher, w_s, x, y, device, amp) for _, name, changes, path in STEPS]
    times = [[] for _ in STEPS]
    for r in range(warmup + steps):
        for fn, t in zip(runs, times):
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            if r >= warmup:
                t.append(time.perf_counter() - t0)
    rows = []
    for i, (label, _, _, path) in enumerate(STEPS):
        row = {"step": label, "jacobian": path or "", "median_ms": 1000 * statistics.median(times[i]),
               "ratio_to_kd": statistics.median(a / b for a, b in zip(times[i], times[0])),
               "ratio_to_batch_mixed": None}
        if path == "per-example" and i + 1 < len(STEPS) and STEPS[i + 1][3] == "batch-mixed":
            row["ratio_to_batch_mixed"] = statistics.median(a / b for a, b in zip(times[i], times[i + 1]))
        rows.append(row)
        mixed = "" if row["ratio_to_batch_mixed"] is None else f"   x{row['ratio_to_batch_mixed']:5.2f} of batch-mixed"
        print(f"  {label:34s} {path or '':12s} {row['median_ms']:9.2f} ms   x{row['ratio_to_kd']:5.2f} of kd{mixed}",
              flush=True)
    return rows


def _step_fn(name, changes, path, teacher, width, x, y, device, amp):
    """One training step (loss, backward, SGD) of a fresh vgg4 student with ``name``'s loss."""
    student = build_model("vgg4", 10, width=width, seed=1).to(device).train()
    method = make_method(name, student, teacher, Config(method=name, amp=amp, **changes))
    opt = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9)
    counter = iter(range(10**9))

    def one_step():
        with _jacobian_path(path), torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
            _, terms = method.loss(x, y, next(counter))
        loss = sum(terms.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return one_step


@contextmanager
def _jacobian_path(path):
    """Swap the methods' Jacobian function for the pre-fix one while timing a "batch-mixed" row."""
    if path != "batch-mixed":
        yield
        return
    saved = methods.matched_jacobians
    methods.matched_jacobians = batch_mixed_jacobians
    try:
        yield
    finally:
        methods.matched_jacobians = saved


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
    p.add_argument("--batch", type=int, default=None, help="default: 128 on GPU, 32 on CPU")
    p.add_argument("--width-scale", type=float, default=None, help="model widths x this (default 1 on GPU, 0.25 on CPU)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 30 GPU / 5 CPU)")
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--jacobian-batch", type=int, default=None, help="batch of the all-output Jacobian timing")
    p.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out", default=None, help="write the tables as JSON here (and .md beside it)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    gpu = device.type == "cuda"
    batch = args.batch or (128 if gpu else 32)
    scale = args.width_scale or (1.0 if gpu else 0.25)
    steps = args.steps or (30 if gpu else 5)
    warmup = args.warmup if args.warmup is not None else (10 if gpu else 2)
    jbatch = args.jacobian_batch or (64 if gpu else 8)
    card = torch.cuda.get_device_name(device) if gpu else platform.processor() or "cpu"
    print(f"device: {device} ({card}), torch {torch.__version__}, batch {batch}, width x{scale}, "
          f"median of {steps} steps after {warmup}")
    print("training step cost (vgg9 teacher -> vgg4 student, 10 classes):")
    step_rows = step_costs(device, batch, scale, warmup, steps, amp=args.amp)
    print(f"exact all-output Jacobian, k = 100, batch {jbatch}:")
    jac_rows = jacobian_costs(device, jbatch, scale, max(1, warmup // 2), max(3, steps // 3))
    print()
    print(to_markdown(step_rows, floatfmt=".2f"))
    print()
    print(to_markdown(jac_rows, floatfmt=".2f"))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        meta = {"device": str(device), "card": card, "torch": torch.__version__, "batch": batch,
                "width_scale": scale, "steps": steps, "warmup": warmup, "amp": args.amp,
                "jacobian_batch": jbatch, "threads": torch.get_num_threads()}
        out.write_text(json.dumps({"meta": meta, "steps": step_rows, "jacobian": jac_rows}, indent=1))
        out.with_suffix(".md").write_text(f"{meta}\n\n{to_markdown(step_rows)}\n\n{to_markdown(jac_rows)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
