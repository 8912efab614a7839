"""What a grid of runs will cost here, measured before running it (``jkt-lab robustness
--estimate``, ``jkt-lab reproduce --estimate``): step costs, history rows and each run's fixed
part, timed on this machine with the runs' real data and models, on two clocks (wall and CPU).
"""
from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence

from .config import Config
from .experiments import build_student, load_data, measure
from .models import build_model
from .results import ResultStore
from .train import evaluate, fit, resolve_device

__all__ = ["estimate_cost"]


def _time(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process, all threads) of ``fn()``."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def _history_rows(config: Config, n_train: int) -> int:
    """How many history rows ``fit`` makes for ``config`` on ``n_train`` images: one every
    ``eval_every`` epochs (default: about 20 a run) and one at the end."""
    per_epoch = math.ceil(n_train / min(config.batch_size, n_train))
    n_epochs = math.ceil(config.steps / per_epoch) if config.steps else config.epochs
    every = config.eval_every or max(1, n_epochs // 20)
    return sum(1 for e in range(1, n_epochs + 1) if e % every == 0 or e == n_epochs)


def estimate_cost(configs: Sequence[Config], *, store: ResultStore | None = None, device="cpu",
                  steps: tuple[int, int] = (3, 13), val_noise_sigmas: Sequence[float] = (), log=print) -> dict:
    """Measured cost of running ``configs`` here (seconds), for planning a grid.

    Three measured parts, each with untrained models on the run's real data (the cost does not
    depend on the weights): a training step, for each distinct step (method, Jacobian output,
    noise samples, models, batch size): ``fit`` runs ``steps[0]`` and ``steps[1]`` steps and the
    difference over the extra steps is the step's cost, free of fixed costs; a history row
    (validation accuracy and the Jacobian-cosine probes, made about 20 times a run unless
    ``eval_every`` says otherwise): ``fit`` on a one-batch training set with and without a row
    every epoch; and a run's fixed part (:func:`measure` on the test and validation images, the
    final evaluations; ``val_noise_sigmas`` as the runs measure them), once per model pair. Runs
    already in ``store`` cost nothing.

    Two clocks: wall time (what the grid takes here at the current load) and the process's CPU
    time over all its threads. On a machine shared with other jobs the wall time grows with the
    load; the CPU time hardly does, and on an otherwise idle machine the wall time is at most the
    CPU time (threads only add parallelism), so ``cpu_s`` is an upper bound of the grid's wall
    time on a quiet machine with the same cores. Returns ``{"wall_s", "cpu_s", "runs", "per_run":
    [(config, wall, cpu)], "by_step": {label: (wall, cpu) s a step}, "row": {models: (wall, cpu) s
    a row}, "overhead": {models: (wall, cpu) s a run}}``.
    """
    dev = resolve_device(device)
    todo = [c for c in configs if store is None or not store.done(c.to_dict())]
    step_cost: dict[tuple, tuple[float, float]] = {}
    row_cost: dict[tuple, tuple[float, float]] = {}
    overhead: dict[tuple, tuple[float, float]] = {}
    n_train: dict[tuple, int] = {}
    wall = cpu = 0.0
    per_run: list[tuple[Config, float, float]] = []
    for c in todo:
        models = (c.dataset, c.n_train, c.n_test, c.student, c.student_width, c.teacher, c.teacher_width)
        kind = (*models, c.method, c.jacobian_output, c.n_samples, c.batch_size)
        if kind not in step_cost or models not in overhead or (c.dataset, c.n_train, c.per_class) not in n_train:
            data = load_data(c, per_class=c.per_class)
            n_train[(c.dataset, c.n_train, c.per_class)] = len(data.y_train)
            teacher = build_model(c.teacher, data.num_classes, in_channels=data.input_shape[0], mean=data.mean,
                                  std=data.std, width=c.teacher_width, seed=0).eval()
            student = build_student(c, data, teacher)

        def train(n, every, d=None, c=c, student=student, teacher=teacher, data=data):
            return _time(lambda: fit(student, c.method, d or data, teacher=teacher, device=dev, progress=False,
                                     config=c.replace(steps=n, eval_every=every)))
        if kind not in step_cost:
            short, long_ = train(steps[0], 10 ** 6), train(steps[1], 10 ** 6)
            step_cost[kind] = tuple(max(b - a, 0.0) / (steps[1] - steps[0]) for a, b in zip(short, long_))
            log(f"  {c.method} ({c.jacobian_output}, n_samples {c.n_samples}), {c.student}-{c.student_width} student, "
                f"{c.teacher}-{c.teacher_width} teacher, batch {c.batch_size}: {1000 * step_cost[kind][0]:.0f} ms "
                f"wall, {1000 * step_cost[kind][1]:.0f} ms CPU a step")
        if models not in overhead:
            one_batch = dataclasses.replace(data, x_train=data.x_train[:c.batch_size], y_train=data.y_train[:c.batch_size],
                                            mask_train=None)
            plain, rows = train(steps[0], 10 ** 6, one_batch), train(steps[0], 1, one_batch)
            row_cost[models] = tuple(max(b - a, 0.0) / steps[0] for a, b in zip(plain, rows))

            def once(c=c, student=student, teacher=teacher):  # what a run does besides its steps and rows
                full = load_data(c, per_class=c.per_class).to(dev)
                measure(student.to(dev), full, teacher.to(dev), val_noise_sigmas=tuple(val_noise_sigmas))
                for x, y in ((full.x_test, full.y_test), (full.x_val, full.y_val), (full.x_train, full.y_train)):
                    evaluate(student, x, y)
            overhead[models] = _time(once)
            log(f"  a history row {1000 * row_cost[models][1]:.0f} ms CPU, a run's fixed part "
                f"{overhead[models][1]:.1f} s CPU ({c.student}-{c.student_width} / {c.teacher}-{c.teacher_width})")
        n_steps = c.steps or c.epochs * math.ceil(n_train[(c.dataset, c.n_train, c.per_class)] / c.batch_size)
        n_rows = _history_rows(c, n_train[(c.dataset, c.n_train, c.per_class)])
        run_wall, run_cpu = (step_cost[kind][i] * n_steps + row_cost[models][i] * n_rows + overhead[models][i]
                             for i in (0, 1))
        wall, cpu = wall + run_wall, cpu + run_cpu
        per_run.append((c, run_wall, run_cpu))
    label = lambda k: f"{k[3]}-{k[4]} student, {k[5]}-{k[6]} teacher on {k[0]}"  # noqa: E731
    return {"wall_s": wall, "cpu_s": cpu, "runs": len(todo), "per_run": per_run,
            "by_step": {f"{k[7]} ({k[8]}, n_samples {k[9]}, batch {k[10]}), {label(k)}": v for k, v in step_cost.items()},
            "row": {label(k): v for k, v in row_cost.items()}, "overhead": {label(k): v for k, v in overhead.items()}}
