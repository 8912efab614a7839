"""Sweeps on a Ray cluster (jkt_lab.cluster), for real: a local Ray started by the test, no mocks."""
import importlib.util
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml
from test_engine import TINY

from jkt_lab import cli
from jkt_lab.config import Config
from jkt_lab.experiments import teacher_files
from jkt_lab.results import ResultStore, config_hash

needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                               reason="Ray is not installed (the cluster extra: pip install -e '.[cluster]')")
ROOT = Path(__file__).resolve().parents[1]


def _spec(path: Path, *blocks: dict) -> str:
    path.write_text(yaml.safe_dump({"sweeps": list(blocks)}))
    return str(path)


def _env(tmp_path: Path, runs: Path) -> dict:
    return {"JKT_LAB_RUNS": str(runs), "JKT_LAB_CACHE": str(tmp_path / "cache"),
            "JKT_LAB_DATA": str(tmp_path / "no_data")}


def _assert_close(a, b, where):
    if isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            _assert_close(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, float) or isinstance(b, float):
        assert math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-6), f"{where}: {a} != {b}"
    else:
        assert a == b, where


@pytest.fixture(scope="module")
def ray_workers(tmp_path_factory):
    """A local Ray with 2 CPUs, started once for these tests; its workers have their own runs
    directory (returned), so a teacher reaches them only as weights. Ray workers take their
    environment from ``runtime_env`` (or the process at ``ray.init``), not from later monkeypatching."""
    import ray

    base = tmp_path_factory.mktemp("ray")
    for attempt in (1, 2):
        try:
            ray.init(num_cpus=2, include_dashboard=False,
                     runtime_env={"env_vars": _env(base, base / "worker_runs")})
            break
        except Exception:  # ray-project/ray#65983: on a loaded machine the raylet can give up on its agent
            ray.shutdown()
            if attempt == 2:
                raise
    yield base / "worker_runs"
    ray.shutdown()


def test_ray_is_not_imported_by_the_package_or_a_serial_sweep(tmp_path):
    spec = _spec(tmp_path / "one.yaml", {"base": TINY, "grid": {"method": ["ce"]}})
    store = str(tmp_path / "serial.jsonl")
    code = (
        "import sys\n"
        "import jkt_lab, jkt_lab.cli, jkt_lab.experiments, jkt_lab.reproduce, jkt_lab.cluster\n"
        f"assert jkt_lab.cli.main(['sweep', {spec!r}, '--store', {store!r}, '--device', 'cpu', '--no-progress']) == 0\n"
        "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))\n"
        "sys.modules['ray'] = None  # as if the cluster extra were not installed\n"
        f"assert jkt_lab.cli.main(['sweep', {spec!r}, '--store', {store!r}, '--executor', 'ray']) == 0  # nothing to run\n"
        f"assert jkt_lab.cli.main(['sweep', {spec!r}, '--store', {store + '2'!r}, '--executor', 'ray']) == 2\n")
    env = {**os.environ, **_env(tmp_path, tmp_path / "runs"), "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "\n[]\n" in out.stdout
    assert "error: the ray executor needs Ray: pip install -e \".[cluster]\"" in out.stderr
    assert len(ResultStore(store)) == 1
    # --address belongs to the ray executor
    assert cli.main(["sweep", spec, "--store", store, "--address", "auto"]) == 2


@needs_ray
def test_ray_sweep_gives_the_serial_records_ships_teachers_and_reports_missing_data(tmp_path, monkeypatch, capsys,
                                                                                    ray_workers):
    driver_runs, worker_runs = tmp_path / "driver_runs", ray_workers
    env = _env(tmp_path, driver_runs)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    shapes = {"base": TINY, "grid": {"method": ["ce", "kd+jacobian"]}}
    serial, on_ray = tmp_path / "serial.jsonl", tmp_path / "ray.jsonl"
    assert cli.main(["sweep", _spec(tmp_path / "shapes.yaml", shapes), "--store", str(serial), "--device", "cpu",
                     "--no-progress"]) == 0
    # the same runs; one more with a teacher nobody has trained yet; one on a dataset no worker has
    spec = _spec(tmp_path / "more.yaml", shapes, {"base": {**TINY, "teacher_seed": 1}, "grid": {"method": ["kd"]}},
                 {"base": {**TINY, "dataset": "indoor67"}, "grid": {"method": ["ce"]}})
    capsys.readouterr()
    code = cli.main(["sweep", spec, "--store", str(on_ray), "--executor", "ray", "--device", "cpu", "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 1, out + err

    # the same records as the serial sweep, plus the second teacher's student
    serial_records = {r["key"]: r for r in ResultStore(serial)}
    ray_records = {r["key"]: r for r in ResultStore(on_ray)}
    assert len(ResultStore(on_ray)) == 3 and set(serial_records) < set(ray_records)
    for key, r in serial_records.items():
        _assert_close(r["metrics"], ray_records[key]["metrics"], f"{r['config']['method']}.metrics")
        assert r["extra"]["teacher_key"] == ray_records[key]["extra"]["teacher_key"]

    nodes = set(re.findall(r"done on node (\S+)", out))
    assert len(nodes) == 1 and len(re.findall(r"done on node", out)) == 3, out

    # teacher 0 (already trained by the driver) went out as weights: the worker's copy is the driver's
    t0 = Config(**TINY, method="kd")
    key0, weights0, meta0 = teacher_files(t0, driver_runs)
    _, wweights0, wmeta0 = teacher_files(t0, worker_runs)
    assert json.loads(wmeta0.read_text()) == json.loads(meta0.read_text())  # same wall time and history: not retrained
    a, b = torch.load(weights0, weights_only=True), torch.load(wweights0, weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert f"teacher {key0}" not in out
    # teacher 1 was trained once, on a worker, before its student, and the driver keeps a copy
    key1, weights1, meta1 = teacher_files(t0.replace(teacher_seed=1), driver_runs)
    assert len(re.findall(rf"teacher {key1} .* trained on node {re.escape(next(iter(nodes)))}", out)) == 1, out
    assert weights1.exists() and meta1.exists() and (worker_runs / "teachers" / f"{key1}.pt").exists()
    student1 = config_hash(t0.replace(teacher_seed=1).to_dict())[:8]
    order = [line for line in out.splitlines() if f"teacher {key1}" in line or f"[{student1}]: done" in line]
    assert len(order) == 2 and order[0].startswith("teacher"), out

    # the worker without the data failed with the dataset's error and its address; the rest went on
    assert re.search(rf"FAILED ce indoor67 .* on node {re.escape(next(iter(nodes)))}: DataNotFoundError: indoor67", err), err
    assert "1 failed" in err and "indoor67" in err.split("1 failed", 1)[1]


def _running_tasks(root_pid: int, name: str) -> list[int]:
    """Process ids of Ray workers below ``root_pid`` now running task ``name`` (Ray sets their title)."""
    parents, titles = {}, {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            parents[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            titles[int(d.name)] = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue

    def below(pid):
        while pid > 1:
            pid = parents.get(pid, 0)
            if pid == root_pid:
                return True
        return False

    return [pid for pid, title in titles.items() if title.startswith(f"ray::{name}") and below(pid)]


@needs_ray
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds Ray's worker processes in /proc (Linux)")
def test_a_killed_worker_loses_no_finished_run_and_a_rerun_runs_nothing(tmp_path, monkeypatch, capsys, ray_workers):
    for k, v in _env(tmp_path, tmp_path / "runs").items():
        monkeypatch.setenv(k, v)
    spec = _spec(tmp_path / "seeds.yaml", {"base": {**TINY, "steps": 20}, "grid": {"method": ["ce"], "seed": [0, 1, 2, 3, 4]}})
    store = tmp_path / "ray.jsonl"
    command = ["sweep", spec, "--store", str(store), "--executor", "ray", "--device", "cpu", "--no-progress"]
    exit_code = []
    driver = threading.Thread(target=lambda: exit_code.append(cli.main(command)))
    driver.start()
    killed, finished_before = None, b""
    deadline = time.monotonic() + 240
    while killed is None and driver.is_alive() and time.monotonic() < deadline:
        if store.exists() and ResultStore(store).records():
            for pid in _running_tasks(os.getpid(), "_run_task"):
                finished_before = store.read_bytes()
                os.kill(pid, signal.SIGKILL)  # a worker dies in the middle of a run
                killed = pid
                break
        time.sleep(0.05)
    driver.join(timeout=240)
    out, err = capsys.readouterr()
    assert killed is not None, out + err
    assert exit_code == [0], out + err  # Ray ran the killed worker's run again
    # every finished run is kept as written, each run is there once
    assert finished_before and store.read_bytes().startswith(finished_before)
    keys = [r["key"] for r in ResultStore(store)]
    assert len(keys) == 5 and len(set(keys)) == 5
    # a rerun after completion runs nothing
    assert cli.main(command) == 0
    assert "5 runs, 5 already done, 0 to run on Ray" in capsys.readouterr().out
    assert len(ResultStore(store)) == 5
