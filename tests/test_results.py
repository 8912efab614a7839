"""Tests for jkt_lab.results: config hashing, the append-only store (incl. SIGKILL mid-write), tables."""
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import jkt_lab.results as results_module
from jkt_lab.results import (
    ResultStore,
    ResultStoreWarning,
    config_hash,
    flatten,
    lookup,
    make_record,
    table,
    to_markdown,
)

# --------------------------------------------------------------------------- config_hash


def test_config_hash_is_stable_and_order_independent():
    a = {"method": "jacobian", "sigma": 0.1, "per_class": 5, "seeds": [0, 1], "opt": {"lr": 0.01, "wd": 5e-4}}
    b = {"opt": {"wd": 5e-4, "lr": 0.01}, "seeds": [0, 1], "per_class": 5, "sigma": 0.1, "method": "jacobian"}
    h = config_hash(a)
    assert h == config_hash(b)
    assert len(h) == 16 and int(h, 16) >= 0
    # a pinned value: the hash must not change between versions (stored files depend on it)
    assert config_hash({"a": 1, "b": [1.5, "x"], "c": None}) == config_hash({"c": None, "b": [1.5, "x"], "a": 1})
    import hashlib

    expected = hashlib.sha256(b'{"a":1,"b":[1.5,"x"],"c":null}').hexdigest()[:16]
    assert config_hash({"a": 1, "b": [1.5, "x"], "c": None}) == expected


def test_config_hash_is_sensitive():
    base = {"method": "jacobian", "sigma": 0.1, "seed": 0}
    hashes = {
        config_hash(base),
        config_hash({**base, "sigma": 0.1000001}),
        config_hash({**base, "seed": 1}),
        config_hash({**base, "method": "activation"}),
        config_hash({**base, "extra": None}),
        config_hash({**base, "seed": 0.0}),  # 0 and 0.0 are different settings
    }
    assert len(hashes) == 6


def test_config_hash_converts_numpy_torch_paths():
    plain = {"sigma": 0.5, "n": 3, "path": "/tmp/x", "shape": [1, 2]}
    converted = {"sigma": np.float64(0.5), "n": torch.tensor(3), "path": Path("/tmp/x"), "shape": (1, 2)}
    assert config_hash(plain) == config_hash(converted)


def test_config_hash_bad_args():
    with pytest.raises(TypeError, match="config must be a mapping"):
        config_hash([("a", 1)])
    with pytest.raises(TypeError, match="config.*keys must be str"):
        config_hash({("a", 1): 2})
    with pytest.raises(TypeError, match=r"config\['f'\].*JSON-serialisable"):
        config_hash({"f": object()})


# --------------------------------------------------------------------------- store basics


def test_append_and_read_round_trip(tmp_path):
    store = ResultStore(tmp_path / "deep" / "dir" / "runs.jsonl")
    assert not store.path.exists() and len(store) == 0 and store.records() == []
    config = {"method": "kd", "seed": np.int64(2), "sigma": np.float32(0.25)}
    record = {
        "config": config,
        "metrics": {"test_acc": np.float32(0.5), "loss": torch.tensor(1.25), "nan_metric": float("nan")},
        "history": {"loss": np.array([3.0, 2.0, 1.0]), "acc": torch.tensor([[0.1, 0.2]])},
        "out_dir": Path("/tmp/run"),
        "flags": (True, np.bool_(False)),
    }
    stored = store.append(record)
    assert stored["key"] == config_hash(config)
    assert stored["created"].endswith("+00:00")  # ISO 8601, UTC
    [back] = store.records()
    assert back == stored
    assert back["config"] == {"method": "kd", "seed": 2, "sigma": 0.25}
    assert back["metrics"] == {"test_acc": 0.5, "loss": 1.25, "nan_metric": None}  # NaN stored as null
    assert back["history"] == {"loss": [3.0, 2.0, 1.0], "acc": [[pytest.approx(0.1), pytest.approx(0.2)]]}
    assert back["out_dir"] == "/tmp/run" and back["flags"] == [True, False]
    raw = store.path.read_text()
    assert raw.count("\n") == 1 and raw.endswith("\n")
    assert "NaN" not in raw
    assert list(store) == [stored]


def test_done_get_contains_keys(tmp_path):
    store = ResultStore(str(tmp_path / "r.jsonl"))
    c1, c2 = {"method": "kd", "seed": 0}, {"method": "kd", "seed": 1}
    assert not store.done(c1) and store.get(c1) is None and c1 not in store
    store.append({"config": c1, "metrics": {"acc": 0.1}})
    store.append({"config": c2, "metrics": {"acc": 0.2}})
    store.append({"config": {"seed": 0, "method": "kd"}, "metrics": {"acc": 0.3}})  # re-run of c1
    assert store.done(c1) and store.done(c2) and not store.done({"method": "kd", "seed": 2})
    assert store.get(c1)["metrics"]["acc"] == 0.3  # latest record wins
    assert store.get(config_hash(c2))["metrics"]["acc"] == 0.2
    assert config_hash(c1) in store and c2 in store
    assert store.keys() == {config_hash(c1), config_hash(c2)}
    with pytest.warns(ResultStoreWarning, match="left out 1 earlier record"):
        assert len(store) == 2  # reading keeps one record per key: the latest, as get does
        assert [r["metrics"]["acc"] for r in store.records()] == [0.3, 0.2]
    assert len(store.records(unique=False)) == 3
    store.get(c1)["metrics"]["acc"] = 99  # get returns a copy
    assert store.get(c1)["metrics"]["acc"] == 0.3
    # an explicit key is kept
    store.append({"config": {"x": 1}, "key": "custom"})
    assert "custom" in store and store.get("custom")["config"] == {"x": 1}


def test_append_bad_args(tmp_path):
    store = ResultStore(tmp_path / "r.jsonl")
    with pytest.raises(ValueError, match="config"):
        store.append({"metrics": {}})
    with pytest.raises(TypeError, match="record must be a mapping"):
        store.append([1, 2])
    with pytest.raises(TypeError, match=r"record\['config'\] must be a mapping"):
        store.append({"config": 3})
    with pytest.raises(TypeError, match=r"record\['metrics'\]\['f'\]"):
        store.append({"config": {}, "metrics": {"f": object()}})
    with pytest.raises(TypeError, match="path"):
        ResultStore(3)
    with pytest.raises(TypeError, match="key_or_config"):
        store.get(3)
    assert not store.path.exists()  # nothing half-written by refused records


def test_truncated_last_line_is_skipped_and_next_append_starts_a_new_line(tmp_path):
    store = ResultStore(tmp_path / "r.jsonl")
    for seed in range(3):
        store.append({"config": {"seed": seed}, "metrics": {"acc": seed / 10}})
    full = json.dumps({"key": "k", "config": {"seed": 9}, "history": list(range(100))})
    with open(store.path, "a") as f:
        f.write(full[: len(full) // 2])  # a writer killed half-way through its line
    with pytest.warns(ResultStoreWarning, match="line 4 .*incomplete last line"):
        recs = store.records()
    assert [r["config"]["seed"] for r in recs] == [0, 1, 2]

    store.append({"config": {"seed": 3}, "metrics": {"acc": 0.3}})
    lines = store.path.read_bytes().split(b"\n")
    assert lines[3] == full[: len(full) // 2].encode() and lines[4].startswith(b'{"key"') and lines[5] == b""
    with pytest.warns(ResultStoreWarning, match="line 4 .*corrupt line"):
        recs = store.records()
    assert [r["config"]["seed"] for r in recs] == [0, 1, 2, 3]
    assert recs[-1]["metrics"] == {"acc": 0.3}


def test_corrupt_middle_lines_are_skipped_with_line_numbers(tmp_path):
    path = tmp_path / "r.jsonl"
    store = ResultStore(path)
    store.append({"config": {"i": 0}})
    with open(path, "ab") as f:
        f.write(b"not json\n")
        f.write(b"[1, 2]\n")  # valid JSON but not a record
        f.write(b"\n")  # blank lines are ignored silently
        f.write('{"config": {"i": "\u00e9'.encode("utf-8")[:-1] + b"\n")  # cut inside a UTF-8 character
    store.append({"config": {"i": 1}})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        recs = store.records()
    assert [r["config"]["i"] for r in recs] == [0, 1]
    messages = [str(w.message) for w in caught if issubclass(w.category, ResultStoreWarning)]
    assert len(messages) == 3
    assert all("corrupt line" in m for m in messages)
    assert [m.split("skipped ")[1].split(" (")[0] for m in messages] == ["line 2", "line 3", "line 5"]


def test_index_cache_sees_new_appends(tmp_path):
    store = ResultStore(tmp_path / "r.jsonl")
    other = ResultStore(tmp_path / "r.jsonl")  # a second handle, like a second process
    store.append({"config": {"a": 1}})
    assert other.done({"a": 1})
    store.append({"config": {"a": 2}})
    assert other.done({"a": 2}) and len(other.keys()) == 2


# --------------------------------------------------------------------------- SIGKILL mid-write

_WRITER = textwrap.dedent(
    """
    import importlib.util, sys
    spec = importlib.util.spec_from_file_location("results_under_test", sys.argv[1])
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    store = mod.ResultStore(sys.argv[2])
    i = 0
    while True:
        payload = [i + k * 0.25 for k in range(int(sys.argv[3]))]
        store.append({"config": {"i": i}, "metrics": {"i": i, "n": len(payload)}, "history": {"loss": payload}})
        i += 1
    """
)
_PAYLOAD = 12_000  # ~100 KB of JSON per record


@pytest.mark.parametrize("kill_after_bytes", [150_000, 700_000, 1_600_000])
def test_sigkill_mid_append_leaves_only_complete_records(tmp_path, kill_after_bytes):
    path = tmp_path / "runs.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, results_module.__file__, str(path), str(_PAYLOAD)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if path.exists() and path.stat().st_size >= kill_after_bytes:
                break
            if proc.poll() is not None:
                pytest.fail(f"writer exited early: {proc.stderr.read().decode()}")
            time.sleep(0.002)
        else:
            pytest.fail("writer did not reach the target size in time")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL

    raw = path.read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResultStoreWarning)  # a torn last line is allowed
        recs = ResultStore(path).records()
    complete_lines = raw.count(b"\n")
    assert len(recs) == complete_lines >= 1
    assert [r["config"]["i"] for r in recs] == list(range(len(recs)))  # no gaps, no duplicates
    for r in recs:
        i = r["config"]["i"]
        loss = r["history"]["loss"]
        assert len(loss) == _PAYLOAD and r["metrics"] == {"i": i, "n": _PAYLOAD}
        assert loss[0] == i and loss[-1] == i + (_PAYLOAD - 1) * 0.25

    store = ResultStore(path)
    store.append({"config": {"i": "after"}, "metrics": {"ok": True}})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResultStoreWarning)
        after = store.records()
    assert len(after) == len(recs) + 1
    assert after[-1]["config"] == {"i": "after"} and store.done({"i": "after"})


_TORN_WRITER = textwrap.dedent(
    """
    import importlib.util, os, signal, sys
    spec = importlib.util.spec_from_file_location("results_under_test", sys.argv[1])
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    store = mod.ResultStore(sys.argv[2])
    kill_at, fraction = int(sys.argv[4]), float(sys.argv[5])
    real_write, calls = os.write, [0]

    def dying_write(fd, data):
        calls[0] += 1
        if calls[0] == kill_at:  # the kernel has taken part of the line, then the process dies
            real_write(fd, data[: int(len(data) * fraction)])
            os.kill(os.getpid(), signal.SIGKILL)
        return real_write(fd, data)

    os.write = dying_write
    for i in range(10**6):
        payload = [i + k * 0.25 for k in range(int(sys.argv[3]))]
        store.append({"config": {"i": i}, "metrics": {"i": i, "n": len(payload)}, "history": {"loss": payload}})
    """
)


@pytest.mark.parametrize("kill_at, fraction", [(1, 0.5), (3, 0.01), (4, 0.999)])
def test_process_killed_inside_write_leaves_a_torn_line_that_is_skipped(tmp_path, kill_at, fraction):
    """Timed kills mostly land between writes; here the process dies inside its own write."""
    path = tmp_path / "runs.jsonl"
    proc = subprocess.run(
        [sys.executable, "-c", _TORN_WRITER, results_module.__file__, str(path), str(_PAYLOAD), str(kill_at),
         str(fraction)], capture_output=True, timeout=60,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    raw = path.read_bytes()
    assert not raw.endswith(b"\n") and raw.count(b"\n") == kill_at - 1
    store = ResultStore(path)
    with pytest.warns(ResultStoreWarning, match=f"line {kill_at} .*incomplete last line"):
        recs = store.records()
    assert [r["config"]["i"] for r in recs] == list(range(kill_at - 1))
    assert all(len(r["history"]["loss"]) == _PAYLOAD for r in recs)
    store.append({"config": {"i": "after"}})
    with pytest.warns(ResultStoreWarning, match=f"line {kill_at} .*corrupt line"):
        after = store.records()
    assert [r["config"]["i"] for r in after] == [*range(kill_at - 1), "after"]


# --------------------------------------------------------------------------- make_record


def test_make_record():
    rec = make_record({"method": "kd"}, {"acc": np.float64(0.9)}, history={"loss": [1.0, 0.5]},
                      wall_time_s=12.5, device=torch.device("cpu"), extra={"note": "x"})
    assert rec["config"] == {"method": "kd"} and rec["metrics"] == {"acc": 0.9}
    assert rec["history"] == {"loss": [1.0, 0.5]} and rec["wall_time_s"] == 12.5
    assert rec["device"] == "cpu" and rec["extra"] == {"note": "x"}
    assert set(rec["versions"]) == {"python", "torch", "torchvision", "numpy", "jkt_lab"}
    assert rec["versions"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert all(isinstance(v, str) and v for v in rec["versions"].values())
    assert isinstance(rec["host"], str)
    json.dumps(rec, allow_nan=False)
    assert make_record({}, {})["device"] == "unknown"
    with pytest.raises(TypeError, match="metrics"):
        make_record({}, [1])
    with pytest.raises(ValueError, match="wall_time_s"):
        make_record({}, {}, wall_time_s=-1)
    with pytest.raises(TypeError, match="config"):
        make_record(None, {})


# --------------------------------------------------------------------------- tables


def _runs():
    out = []
    accs = {("kd", 5): [0.50, 0.60, 0.70], ("jacobian", 5): [0.60, 0.64], ("kd", 10): [0.80]}
    for (method, per_class), values in accs.items():
        for seed, acc in enumerate(values):
            out.append({"key": f"{method}{per_class}{seed}",
                        "config": {"method": method, "per_class": per_class, "seed": seed, "student": "vgg4"},
                        "metrics": {"test_acc": acc}})
    return out


def test_flatten_and_lookup():
    rec = {"config": {"method": "kd", "opt": {"lr": 0.1}}, "metrics": {"a.b": 1}, "empty": {}}
    assert flatten(rec) == {"config.method": "kd", "config.opt.lr": 0.1, "metrics.a.b": 1, "empty": {}}
    assert lookup(rec, "config.opt.lr") == 0.1
    assert lookup(rec, "metrics.a.b") == 1  # a key with a dot in it
    assert lookup(rec, "config.nope") is None and lookup(rec, "config.method.x", "d") == "d"


def test_table_plain_rows():
    rows = table(_runs(), ["config.method", "config.seed", "metrics.test_acc", "metrics.missing"])
    assert len(rows) == 6
    assert rows[0] == {"config.method": "kd", "config.seed": 0, "metrics.test_acc": 0.5, "metrics.missing": None}


def test_table_grouping_mean_std_by_hand():
    rows = table(_runs(), ["config.method", "config.per_class", "config.student", "config.seed"],
                 group_by=["config.method", "config.per_class"], metric="metrics.test_acc")
    assert [(r["config.method"], r["config.per_class"]) for r in rows] == [("kd", 5), ("jacobian", 5), ("kd", 10)]
    kd5, jac5, kd10 = rows
    # kd, 5: values 0.5, 0.6, 0.7 -> mean 0.6, sample std sqrt(((-.1)^2 + 0 + .1^2) / 2) = 0.1
    assert kd5["metrics.test_acc.mean"] == pytest.approx(0.6)
    assert kd5["metrics.test_acc.std"] == pytest.approx(0.1)
    assert kd5["n"] == 3
    # jacobian, 5: 0.60, 0.64 -> mean 0.62, std sqrt((0.02^2 * 2) / 1) = 0.0282843
    assert jac5["metrics.test_acc.mean"] == pytest.approx(0.62)
    assert jac5["metrics.test_acc.std"] == pytest.approx(math.sqrt(2) * 0.02)
    assert jac5["n"] == 2
    assert kd10["metrics.test_acc.mean"] == pytest.approx(0.8) and kd10["metrics.test_acc.std"] is None
    assert kd10["n"] == 1
    # constant columns are kept, varying ones (seed) become None
    assert kd5["config.student"] == "vgg4" and kd5["config.seed"] is None and kd10["config.seed"] == 0


def test_table_from_store_and_missing_metric(tmp_path):
    store = ResultStore(tmp_path / "r.jsonl")
    for r in _runs():
        store.append(r)
    store.append({"config": {"method": "kd", "per_class": 5, "seed": 9}, "metrics": {"test_acc": float("nan")}})
    rows = table(store, [], group_by=["config.method", "config.per_class"], metric="metrics.test_acc")
    assert rows[0]["n"] == 3 and rows[0]["metrics.test_acc.mean"] == pytest.approx(0.6)  # null not counted


def test_table_bad_args():
    with pytest.raises(TypeError, match="columns"):
        table(_runs(), "config.method")
    with pytest.raises(ValueError, match="group_by and metric"):
        table(_runs(), ["config.method"], group_by=["config.method"])
    with pytest.raises(TypeError, match="records"):
        table({"config": {}}, ["config"])
    with pytest.raises(TypeError, match=r"records\[0\]"):
        table([1], ["a"])


def test_to_markdown():
    rows = table(_runs()[:3], [], group_by=["config.method"], metric="metrics.test_acc")
    md = to_markdown(rows)
    assert md == (
        "| config.method | metrics.test_acc.mean | metrics.test_acc.std | n |\n"
        "|---|---:|---:|---:|\n"
        "| kd | 0.60 | 0.10 | 3 |\n"
    )
    md = to_markdown([{"a": "x|y", "b": None, "c": 1.23456}, {"a": "z", "b": True, "c": 2}],
                     columns=["a", "c", "b"], floatfmt=".3f")
    assert md.splitlines() == ["| a | c | b |", "|---|---:|---|", "| x\\|y | 1.235 |  |", "| z | 2 | True |"]
    assert to_markdown([], columns=["a"]) == "| a |\n|---|\n"
    assert to_markdown([]) == ""
    with pytest.raises(ValueError, match="floatfmt"):
        to_markdown([{"a": 1.0}], floatfmt="q")
    with pytest.raises(TypeError, match="rows"):
        to_markdown({"a": 1})
