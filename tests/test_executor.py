"""The process-pool executor: the same records as a serial run, written by the parent alone."""
import pytest

from jkt_lab.config import Config
from jkt_lab.executor import ProcessExecutor
from jkt_lab.experiments import run
from jkt_lab.results import ResultStore
from tiny_runs import TINY


@pytest.mark.slow
def test_processes_give_the_records_of_a_serial_run(isolated, tmp_path):
    import torch
    configs = [Config(**TINY, method=m, seed=1) for m in ("ce", "kd+jacobian")]
    torch.set_num_threads(1)        # the workers' thread count: float sums in the same order, so equal records
    serial = [run(c, device="cpu", progress=False) for c in configs]
    store = ResultStore(tmp_path / "pool.jsonl")
    ex = ProcessExecutor(2, device="cpu", progress=False)
    appended = ex.run(configs + configs[:1], store)          # a duplicate config is run once
    assert ex.summary() == 0 and len(appended) == 2 and len(store) == 2
    by_key = {r["key"]: r for r in store.records()}
    for r in serial:
        pooled = by_key[r["key"]]
        assert pooled["metrics"]["test_acc"] == r["metrics"]["test_acc"]
        assert pooled["history"][-1] == r["history"][-1]          # the same loss sequence, to the last row
    assert ex.run(configs, store) == []                           # resumable: nothing left to run


def test_processes_validate_their_arguments():
    with pytest.raises(ValueError, match="workers"):
        ProcessExecutor(0)
    with pytest.raises(ValueError, match="device"):
        ProcessExecutor(2, device="tpu")
