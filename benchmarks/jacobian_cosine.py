"""What limits the teacher-student Jacobian cosine that Jacobian matching reaches (issue 9)?

    python benchmarks/jacobian_cosine.py                     # CPU, a few minutes per run on 2 busy cores
    python benchmarks/jacobian_cosine.py --out benchmarks/results/jacobian_cosine_cpu.json

Setting: the shapes sweep (``results/specs/shapes_few_shot.yaml``: tiny-32 teacher, tiny-16
student, 5 images per class, batch = the 50 images, lr 0.05) with ``kd+jacobian``, seed 0, one
factor changed at a time:

* the Jacobian path: per-example (batch statistics held, the package now) or batch-mixed (the
  gradient of the summed batch through train-mode BatchNorm, before issue 9);
* the weight ``jacobian_weight`` (1, 10) and matching alone (no ce, no kd);
* the step budget (300, 1200);
* max-pool switching: the same nets with average pooling in place of max pooling (teacher
  retrained; its cache lives in its own folder), where the Jacobian does not switch between the
  pooled inputs.

Reported per run: the cosine the loss sees (train mode, from the final ``loss/jacobian`` row:
``1 - loss / (2 jacobian_weight)``), the eval-mode cosine on the last training batch and on 64
validation images (the history's ``jacobian_cosine/train`` and ``/val``), the test-set saliency
cosine (256 test images, as the results store records it) and test accuracy.
"""
from __future__ import annotations

import argparse
import json
import sys
from contextlib import contextmanager
from pathlib import Path

import torch.nn.functional as F

from jkt_lab import models
from jkt_lab.experiments import build_student, get_teacher, load_data, load_spec, runs_dir
from jkt_lab.results import to_markdown
from jkt_lab.saliency import saliency_cosine
from jkt_lab.train import fit

from step_cost import _jacobian_path

SPEC = Path(__file__).resolve().parents[1] / "results" / "specs" / "shapes_few_shot.yaml"

VARIANTS = [  # (label, method, config changes, Jacobian path, pooling)
    ("kd (no matching)", "kd", {}, "per-example", "max"),
    ("kd+jacobian, batch-mixed", "kd+jacobian", {}, "batch-mixed", "max"),
    ("kd+jacobian", "kd+jacobian", {}, "per-example", "max"),
    ("kd+jacobian, weight 10", "kd+jacobian", {"jacobian_weight": 10.0}, "per-example", "max"),
    ("kd+jacobian, 1200 steps", "kd+jacobian", {"steps": 1200}, "per-example", "max"),
    ("kd+jacobian, weight 10, 1200 steps", "kd+jacobian", {"jacobian_weight": 10.0, "steps": 1200},
     "per-example", "max"),
    ("matching alone", "kd+jacobian", {"ce_weight": 0.0, "kd_weight": 0.0}, "per-example", "max"),
    ("matching alone, 1200 steps", "kd+jacobian", {"ce_weight": 0.0, "kd_weight": 0.0, "steps": 1200},
     "per-example", "max"),
    ("kd (no matching), avg-pool", "kd", {}, "per-example", "avg"),
    ("kd+jacobian, avg-pool", "kd+jacobian", {}, "per-example", "avg"),
    ("kd+jacobian, batch-mixed, avg-pool", "kd+jacobian", {}, "batch-mixed", "avg"),
    ("matching alone, avg-pool", "kd+jacobian", {"ce_weight": 0.0, "kd_weight": 0.0}, "per-example", "avg"),
]


class _AvgPoolFunctional:
    """``torch.nn.functional`` with ``max_pool2d`` replaced by ``avg_pool2d`` (for TinyNet)."""

    def __getattr__(self, name):
        return F.avg_pool2d if name == "max_pool2d" else getattr(F, name)


@contextmanager
def pooling(kind: str):
    if kind == "max":
        yield
        return
    saved = models.F
    models.F = _AvgPoolFunctional()
    try:
        yield
    finally:
        models.F = saved


def run_variant(label, method, changes, path, pool, base, progress) -> dict:
    config = base.replace(method=method, per_class=5, seed=0, **changes)
    with pooling(pool):
        teacher, tinfo = get_teacher(config, progress=progress, device="cpu",
                                     root=runs_dir() / ("avgpool" if pool == "avg" else ""))
        data = load_data(config, per_class=config.per_class)
        student = build_student(config, data, teacher)
        with _jacobian_path(path):
            result = fit(student, method, data, teacher=teacher, config=config, device="cpu", progress=progress)
        last = result.history[-1]
        row = {"variant": label, "steps": config.steps, "jacobian_weight": config.jacobian_weight,
               "loss_cosine (train mode)": None,
               "cosine/train (eval)": last["jacobian_cosine/train"], "cosine/val (eval)": last["jacobian_cosine/val"],
               "cosine/test": saliency_cosine(student, teacher, data.x_test[:256]),
               "test_acc": result.metrics["test_acc"], "teacher_test_acc": tinfo["metrics"]["test_acc"]}
        if "loss/jacobian" in last and config.jacobian_weight:
            row["loss_cosine (train mode)"] = 1 - last["loss/jacobian"] / (2 * config.jacobian_weight)
        row["history"] = [{k: h[k] for k in ("step", "jacobian_cosine/train", "jacobian_cosine/val")}
                          for h in result.history]
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="*", help="run only these variants (labels)")
    p.add_argument("--out", default=None, help="JSON file of the rows (rows already there are kept, not rerun)")
    p.add_argument("--progress", action="store_true")
    args = p.parse_args(argv)
    base = load_spec(SPEC)[0]
    out = Path(args.out) if args.out else None
    rows = json.loads(out.read_text()) if out and out.exists() else []
    done = {r["variant"] for r in rows}
    for label, method, changes, path, pool in VARIANTS:
        if (args.only and label not in args.only) or label in done:
            continue
        print(f"{label} ...", flush=True)
        rows.append(run_variant(label, method, changes, path, pool, base, args.progress))
        if out:
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_name(out.name + ".tmp")          # after every run: a kill loses one run at most
            tmp.write_text(json.dumps(rows, indent=1))
            tmp.replace(out)
    order = [v[0] for v in VARIANTS]
    table = sorted((r for r in rows if r["variant"] in order), key=lambda r: order.index(r["variant"]))
    print(to_markdown([{k: v for k, v in r.items() if k != "history"} for r in table], floatfmt=".3f"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
