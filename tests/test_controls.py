"""The controls of the [science] claims: whose Jacobian kd+jacobian matches (teacher, an untrained
network of its architecture, another example's), and the selection that never reuses a final seed."""
import pytest
import torch

from jkt_lab import reproduce as rp
from jkt_lab.config import Config
from jkt_lab.jacobian import teacher_jacobian
from jkt_lab.losses import jacobian_loss
from jkt_lab.methods import _derangement, make_method, untrained_copy
from jkt_lab.models import build_model


def nets():
    torch.manual_seed(0)
    teacher = build_model("tiny", 10, width=8).eval()
    torch.manual_seed(1)
    student = build_model("tiny", 10, width=4)
    return teacher, student


def batch(n=6):
    g = torch.Generator().manual_seed(2)
    return torch.rand(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_derangement_moves_every_example():
    for n in (2, 3, 7, 64):
        for step in range(5):
            p = _derangement(n, torch.Generator().manual_seed(step))
            assert sorted(p.tolist()) == list(range(n)) and (p != torch.arange(n)).all()


def test_shuffled_source_matches_another_examples_teacher_jacobian():
    teacher, student = nets()
    student.eval()   # BatchNorm from running statistics: the Jacobian by hand below is then each example's own
    x, y = batch()
    config = Config(method="kd+jacobian", jacobian_source="shuffled", jacobian_weight=1.0, seed=3)
    method = make_method("kd+jacobian", student, teacher, config)
    _, terms = method.loss(x, y, step=4)
    plain = make_method("kd+jacobian", student, teacher, config.replace(jacobian_source=None))
    _, plain_terms = plain.loss(x, y, step=4)
    assert torch.allclose(terms["kd"], plain_terms["kd"]) and torch.allclose(terms["ce"], plain_terms["ce"])
    # by hand: the student's Jacobian of the teacher's top-1 output, against the teacher's row of example perm[i]
    j_t, t_logits, v = teacher_jacobian(teacher, x, "top1")
    xg = x.clone().requires_grad_(True)
    out = student(xg)
    (j_s,) = torch.autograd.grad((out * v[:, 0]).sum(), xg)
    perm = _derangement(len(x), method._generator(4))
    expected = jacobian_loss(j_s.unsqueeze(1), j_t[perm], "normalized")
    assert float(terms["jacobian"].detach()) == pytest.approx(float(expected), rel=1e-4)
    assert float(terms["jacobian"].detach()) != pytest.approx(float(plain_terms["jacobian"].detach()), rel=1e-3)


def test_untrained_source_is_a_fresh_network_of_the_teachers_architecture_and_trains_the_student():
    teacher, student = nets()
    fresh = untrained_copy(teacher, seed=5)
    assert type(fresh) is type(teacher) and fresh.state_dict().keys() == teacher.state_dict().keys()
    weights = [k for k, v in teacher.named_parameters() if v.dim() > 1]
    assert weights and all(not torch.equal(fresh.state_dict()[k], teacher.state_dict()[k]) for k in weights)
    assert torch.equal(fresh.mean, teacher.mean) and torch.equal(fresh.std, teacher.std)   # the same input scaling
    again = untrained_copy(teacher, seed=5)
    assert all(torch.equal(again.state_dict()[k], v) for k, v in fresh.state_dict().items())   # seeded
    x, y = batch()
    config = Config(method="kd+jacobian", jacobian_source="untrained", jacobian_weight=1.0, ce_weight=0.0, kd_weight=0.0)
    method = make_method("kd+jacobian", student, teacher, config)
    _, terms = method.loss(x, y)
    terms["jacobian"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    plain = make_method("kd+jacobian", student, teacher, config.replace(jacobian_source=None))
    assert float(plain.loss(x, y)[1]["jacobian"].detach()) != pytest.approx(float(terms["jacobian"].detach()), rel=1e-3)


def test_jacobian_source_keeps_old_hashes_and_refuses_random_projections():
    assert "jacobian_source" not in Config().to_dict()
    assert Config(jacobian_source="untrained").to_dict()["jacobian_source"] == "untrained"
    with pytest.raises(ValueError, match="jacobian_source"):
        Config(jacobian_source="nobody")
    with pytest.raises(ValueError, match="random"):
        Config(jacobian_source="shuffled", jacobian_output="random")


def test_selection_never_uses_a_final_seed_and_searches_the_step_budget():
    base = rp.base_config("cifar10", "cpu")
    configs = rp.selection_configs(base, scale="cpu")
    assert {c.seed for c in configs} == {rp.SELECT_SEED} and rp.SELECT_SEED not in rp.SEEDS
    kdj = [c for c in configs if c.extra["variant"] == "kd+jacobian"]
    assert {(c.jacobian_weight, c.steps) for c in kdj} == {(w, s) for w in (1.0, 10.0, 30.0, 100.0) for s in (300, 1000)}
    assert not any(c.extra["variant"] == "at+jacobian" for c in configs)   # searched once at is chosen
    second = rp.selection_configs(base, scale="cpu", chosen={"at": {"attention_weight": 5000.0, "val_acc": 0.5}})
    atj = [c for c in second if c.extra["variant"] == "at+jacobian"]
    assert atj and {c.attention_weight for c in atj} == {5000.0}


def test_chosen_settings_reach_the_final_runs():
    base = rp.base_config("cifar10", "cpu")
    chosen = {"kd (regularised)": {"weight_decay": 0.02, "label_smoothing": 0.1, "steps": 1000, "val_acc": 0.4},
              "at": {"attention_weight": 50.0, "val_acc": 0.6}, "at+jacobian": {"jacobian_weight": 1.0, "val_acc": 0.6}}
    dist = rp.distillation_configs(base, chosen, scale="cpu")
    reg = [c for c in dist if c.extra["variant"] == "kd (regularised)"]
    assert reg and all((c.weight_decay, c.label_smoothing, c.steps) == (0.02, 0.1, 1000) for c in reg)
    assert all(c.weight_decay == base.weight_decay for c in dist if c.extra["variant"] == "kd")
    transfer = rp.transfer_configs(base, chosen, scale="cpu")
    at = [c for c in transfer if c.method in ("at", "at+jacobian")]
    assert at and all(c.attention_weight == 50.0 for c in at)
