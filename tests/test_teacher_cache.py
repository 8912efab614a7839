"""The teacher cache (jkt_lab.teacher_cache): the same training with and without it, and the
input keys (Batches(return_keys=True), the augmented-view pool) it relies on."""
import pytest
import torch

from jkt_lab.config import Config
from jkt_lab.data import Batches, load
from jkt_lab.methods import METHODS, make_method
from jkt_lab.models import MultiHead, build_model
from jkt_lab.teacher_cache import TeacherCache, TeacherCacheFull, cache_context
from jkt_lab.train import fit


@pytest.fixture(scope="module")
def data():
    return load("shapes", n_train=400, per_class=6, n_test=50, seed=0)


def _train(data, method, cache, teacher_seed=1, **changes):
    torch.manual_seed(0)
    teacher = build_model("tiny", data.num_classes if method != "lwf" else 3, width=8, seed=teacher_seed)
    student = build_model("tiny", data.num_classes, width=4, seed=2)
    if method == "lwf":  # a new head on a copy of the teacher (its old head is what lwf distils)
        student = MultiHead(build_model("tiny", 3, width=8, seed=teacher_seed), data.num_classes, seed=2)
    config = Config(method=method, student="tiny", steps=40, batch_size=16, eval_every=1, **changes)
    return fit(student, method, data, teacher=teacher, config=config, device="cpu", progress=False,
               teacher_cache=cache)


def _same_losses(a, b, rel=1e-5):
    assert len(a.history) == len(b.history) >= 5
    for ra, rb in zip(a.history, b.history):
        terms = [k for k in ra if k.startswith("loss/")]
        assert terms and set(terms) == {k for k in rb if k.startswith("loss/")}
        for term in terms:
            assert rb[term] == pytest.approx(ra[term], rel=rel, abs=rel / 10), term


CACHED = [
    ("kd", {"augment_views": 3}),
    ("activations", {"augment_views": 3}),
    ("kd+jacobian", {"augment_views": 3}),
    ("kd+jacobian", {"augment_views": 3, "jacobian_output": "label", "jacobian_kind": "squared"}),
    ("kd+jacobian", {"augment_views": 2, "jacobian_output": "all", "jacobian_kind": "cosine"}),
    ("activations+jacobian", {"augment_views": 2, "jacobian_output": "all"}),
    ("kd+jacobian", {}),  # fresh augmentation every epoch: inputs repeat less, still some hits
    ("kd+jacobian_norm", {"augment_views": 3}),
    ("kd+jacobian_norm", {"augment_views": 3, "jacobian_output": "random"}),  # cached teacher logits, drawn projections
    ("lwf", {"augment_views": 3}),
]


def test_every_method_that_asks_the_teacher_for_a_function_of_the_input_is_cached(data):
    teacher = build_model("tiny", data.num_classes, width=8, seed=1)
    student = build_model("tiny", data.num_classes, width=4, seed=2)
    tested = {m for m, _ in CACHED}
    for name in METHODS:
        if name == "lwf":
            continue
        try:
            runner = make_method(name, student, teacher, Config(method=name), teacher_cache=TeacherCache())
        except ValueError:
            continue
        assert (runner.teacher_cache is not None) == (name in tested), name
    assert not make_method("kd+jacobian", student, teacher, Config(jacobian_output="random"),
                           teacher_cache=TeacherCache()).teacher_cache


@pytest.mark.parametrize("method,changes", CACHED)
def test_same_loss_sequence_with_and_without_the_cache(data, method, changes):
    cache = TeacherCache()
    without = _train(data, method, False, **changes)
    with_cache = _train(data, method, cache, **changes)
    stats = cache.stats()
    assert stats["hits"] > 0 and stats["misses"] > 0 and stats["entries"] == stats["misses"]
    _same_losses(without, with_cache)
    assert with_cache.metrics["test_acc"] == pytest.approx(without.metrics["test_acc"], abs=1 / 50 + 1e-9)


def test_a_cache_kept_across_runs_is_dropped_when_teacher_data_or_views_change(data):
    cache = TeacherCache()
    first = _train(data, "kd+jacobian", cache, augment_views=3)
    entries = cache.stats()["entries"]
    again = _train(data, "kd+jacobian", cache, augment_views=3)         # same setting: every input cached
    assert cache.stats()["invalidations"] == 0 and cache.stats()["entries"] == entries
    assert cache.stats()["misses"] == entries
    _same_losses(first, again)
    other_data = load("shapes", n_train=400, per_class=6, n_test=50, seed=1)
    for data_b, teacher_seed, changes in [
            (data, 3, {"augment_views": 3}),                             # another teacher
            (other_data, 1, {"augment_views": 3}),                       # another training set
            (data, 1, {"augment_views": 3, "seed": 1}),                  # the pool drawn from another seed
            (data, 1, {"augment_views": 4}),                             # another pool size
            (data, 1, {"augment_views": 4, "jacobian_source": "untrained"}),  # another network's Jacobian
            (data, 1, {"augment_views": 3, "jacobian_output": "label"}),  # another matched output
            (data, 1, {"augment_views": 3, "method": "kd"})]:            # logits only
        method = changes.pop("method", "kd+jacobian")
        before = cache.stats()["invalidations"]
        shared = _train(data_b, method, cache, teacher_seed=teacher_seed, **changes)
        assert cache.stats()["invalidations"] == before + 1, changes
        # what a cache of this setting alone gives (the same teacher computations, so equal to
        # rounding; a stale entry would change the losses by far more)
        _same_losses(_train(data_b, method, TeacherCache(), teacher_seed=teacher_seed, **changes), shared, rel=1e-9)


def test_context_names_teacher_data_views_and_what_is_asked(data):
    teacher = build_model("tiny", data.num_classes, width=8, seed=1)
    base = cache_context(teacher, data.x_train, data.y_train, {"pool": 3}, {"output": "top1"})
    assert base == cache_context(build_model("tiny", data.num_classes, width=8, seed=1), data.x_train.clone(),
                                 data.y_train.clone(), {"pool": 3}, {"output": "top1"})
    y = data.y_train.clone()
    y[0] = (y[0] + 1) % data.num_classes
    x = data.x_train.clone()
    x[3, 0, 0, 0] += 1e-3
    for other in [cache_context(build_model("tiny", data.num_classes, width=8, seed=2), data.x_train, data.y_train,
                                {"pool": 3}, {"output": "top1"}),
                  cache_context(teacher, x, data.y_train, {"pool": 3}, {"output": "top1"}),
                  cache_context(teacher, data.x_train, y, {"pool": 3}, {"output": "top1"}),
                  cache_context(teacher, data.x_train, data.y_train, {"pool": 4}, {"output": "top1"}),
                  cache_context(teacher, data.x_train, data.y_train, {"pool": 3}, {"output": "label"})]:
        assert other != base
    teacher.block1[1].running_mean += 1  # buffers are part of the teacher
    assert cache_context(teacher, data.x_train, data.y_train, {"pool": 3}, {"output": "top1"}) != base


def test_a_full_cache_says_so_once_and_keeps_the_losses(data):
    small = TeacherCache(max_bytes=50 * 4 * 3 * 16 * 16)  # about 50 top-1 Jacobians of the shapes images
    with pytest.warns(TeacherCacheFull, match="teacher cache full.*max_bytes") as caught:
        limited = _train(data, "kd+jacobian", small, augment_views=3)
    assert len([w for w in caught if issubclass(w.category, TeacherCacheFull)]) == 1
    assert small.stats()["full"] and small.bytes <= small.max_bytes and small.stats()["entries"] > 0
    _same_losses(_train(data, "kd+jacobian", False, augment_views=3), limited)


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
    assert calls[-1] == [0, 1] and out[:, 0].tolist() == [0.0, 0.0]  # with the cached input at 1 (MIN_ROWS)
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
