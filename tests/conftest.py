"""Fixtures shared by the tests that train at toy size (test_engine, test_robustness)."""
import pytest
import torch

from jkt_lab.data import load


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """Teachers, students, decoded data and datasets of the test in its own folder; two threads."""
    monkeypatch.setenv("JKT_LAB_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("JKT_LAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("JKT_LAB_DATA", str(tmp_path / "data"))
    torch.set_num_threads(2)


@pytest.fixture(scope="module")
def data():
    """The embedded shapes dataset at the size of :data:`tiny_runs.TINY`."""
    return load("shapes", n_train=300, n_test=100)
