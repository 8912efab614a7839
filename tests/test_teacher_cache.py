"""The teacher cache (jkt_lab.teacher_cache): the same training with and without it, and the
input keys (Batches(return_keys=True), the augmented-view pool) it relies on."""
import pytest
import torch

from jkt_lab.config import Config
from jkt_lab.data import Batches, load
from jkt_lab.models import build_model
from jkt_lab.teacher_cache import TeacherCache
from jkt_lab.train import fit


@pytest.fixture(scope="module")
def data():
    return load("shapes", n_train=400, per_class=6, n_test=50, seed=0)


def _train(data, method, cache, **changes):
    torch.manual_seed(0)
    teacher = build_model("tiny", data.num_classes, width=8, seed=1)
    student = build_model("tiny", data.num_classes, width=4, seed=2)
    config = Config(method=method, student="tiny", steps=40, batch_size=16, eval_every=1, **changes)
    return fit(student, method, data, teacher=teacher, config=config, device="cpu", progress=False,
               teacher_cache=cache)


@pytest.mark.parametrize("method,changes", [
    ("kd", {"augment_views": 3}),
    ("kd+jacobian", {"augment_views": 3}),
    ("kd+jacobian", {"augment_views": 3, "jacobian_output": "label", "jacobian_kind": "squared"}),
    ("activations+jacobian", {"augment_views": 2, "jacobian_output": "all"}),
    ("kd+jacobian", {}),  # fresh augmentation every epoch: inputs repeat less, still some hits
    ("kd+jacobian_norm", {"augment_views": 3, "jacobian_output": "random"}),  # cached teacher logits, drawn projections
])
def test_same_loss_sequence_with_and_without_the_cache(data, method, changes):
    cache = TeacherCache()
    without = _train(data, method, False, **changes)
    with_cache = _train(data, method, cache, **changes)
    stats = cache.stats()
    assert stats["hits"] > 0 and stats["misses"] > 0 and stats["entries"] == stats["misses"]
    assert len(without.history) == len(with_cache.history) >= 5
    for a, b in zip(without.history, with_cache.history):
        for term in (k for k in a if k.startswith("loss/")):
            assert b[term] == pytest.approx(a[term], rel=1e-5, abs=1e-6), term
    assert with_cache.metrics["test_acc"] == pytest.approx(without.metrics["test_acc"], abs=1 / 50 + 1e-9)


def test_random_projections_and_training_noise_are_never_cached(data):
    cache = TeacherCache()
    _train(data, "kd+jacobian", cache, augment_views=2, jacobian_output="random")
    _train(data, "kd", cache, augment_views=2, train_sigma=0.05)
    assert cache.stats()["hits"] == cache.stats()["misses"] == 0


def test_cache_budget_bounds_memory_and_keeps_values():
    calls = []

    def compute(pos):
        calls.append(pos.tolist())
        return (pos.float()[:, None] * torch.ones(1, 4),)

    small = TeacherCache(max_bytes=2 * 4 * 4)  # room for two rows of four float32
    keys = torch.tensor([10, 11, 12])
    out, = small.get(keys, compute)
    assert out[:, 0].tolist() == [0.0, 1.0, 2.0] and small.stats()["entries"] == 2 and small.bytes == 32
    out, = small.get(torch.tensor([12, 10]), compute)  # 12 did not fit: computed again, at its position 0
    assert calls[-1] == [0] and out[:, 0].tolist() == [0.0, 0.0]
    assert small.stats()["hits"] == 1 and small.stats()["misses"] == 4
    with pytest.raises(TypeError, match="keys"):
        small.get(torch.tensor([0.5]), compute)
    with pytest.raises(ValueError, match="max_bytes"):
        TeacherCache(max_bytes=-1)


def test_keys_name_equal_inputs_and_the_view_pool_repeats_them():
    x = torch.rand(12, 3, 8, 8)
    y = torch.arange(12) % 3
    for views in (None, 2):
        batches = Batches(x, y, 5, augment=True, pad=2, seed=3, views=views, return_keys=True)
        seen = {}
        for _ in range(6):
            for xb, _, keys in batches:
                for img, k in zip(xb, keys.tolist()):
                    if k in seen:
                        assert torch.equal(seen[k], img)
                    seen[k] = img
        assert all(k // batches.n_views < 12 for k in seen)
        if views:
            assert batches.n_views == 2 and len(seen) <= 24
    plain = Batches(x, y, 5, augment=False, return_keys=True)
    assert sorted(k for _, _, keys in plain for k in keys.tolist()) == list(range(12))
    # the pool does not change what fresh augmentation draws
    a = [xb for xb, _ in Batches(x, y, 5, augment=True, pad=2, seed=3)]
    b = [xb for xb, _, _ in Batches(x, y, 5, augment=True, pad=2, seed=3, return_keys=True)]
    assert all(torch.equal(p, q) for p, q in zip(a, b))


def test_bad_views_and_cache_arguments(data):
    x, y = torch.rand(4, 3, 8, 8), torch.arange(4)
    with pytest.raises(ValueError, match="views"):
        Batches(x, y, 2, augment=True, views=0)
    with pytest.raises(ValueError, match="augment=True"):
        Batches(x, y, 2, views=3)
    with pytest.raises(ValueError, match="augment_views"):
        Config(augment_views=0)
    assert "augment_views" not in Config().to_dict() and Config(augment_views=4).to_dict()["augment_views"] == 4
    with pytest.raises(TypeError, match="teacher_cache"):
        _train(data, "kd", "yes")
