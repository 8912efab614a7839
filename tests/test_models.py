"""Tests for jkt_lab.models: shapes, taps, seeding, normalisation, double backward, heads."""
import urllib.error

import pytest
import torch

from jkt_lab import models as M
from jkt_lab.models import MODELS, MultiHead, TapModel, build_model, count_parameters, replace_head

# small widths keep the file fast; default widths are checked once for parameter counts
SMALL = {"tiny": {"width": 4}, "vgg4": {"width": 4}, "vgg9": {"width": 4}, "wrn": {"width": 1, "depth": 10},
         "resnet18": {}, "resnet34": {}}
TAPS = {
    "tiny": ("block1", "block2", "block3"),
    "vgg4": ("block1", "block2", "block3"),
    "vgg9": ("block1", "block2", "block3", "block4"),
    "wrn": ("group1", "group2", "group3"),
    "resnet18": ("layer1", "layer2", "layer3", "layer4"),
    "resnet34": ("layer1", "layer2", "layer3", "layer4"),
}


@pytest.fixture(scope="module")
def built():
    return {name: build_model(name, 10, seed=0, **SMALL[name]) for name in MODELS}


def test_registry_lists_all_models():
    assert set(MODELS) == set(TAPS)


@pytest.mark.parametrize("name", MODELS)
def test_forward_and_features_32x32(built, name):
    model = built[name].eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        logits = model(x)
        logits2, feats = model.forward_features(x)
    assert isinstance(model, TapModel)
    assert logits.shape == (2, 10) and logits.dtype == torch.float32
    torch.testing.assert_close(logits, logits2)
    assert model.feature_taps == TAPS[name]
    assert tuple(feats) == TAPS[name]  # dict in depth order
    spatial = [f.shape[-1] for f in feats.values()]
    assert all(f.dim() == 4 and f.shape[0] == 2 for f in feats.values())
    assert spatial == sorted(spatial, reverse=True)  # deeper taps are never larger
    assert model.num_classes == 10
    assert model.mean.shape == (1, 3, 1, 1) and model.std.shape == (1, 3, 1, 1)


@pytest.mark.parametrize("name", ["tiny", "vgg4", "vgg9", "wrn"])
def test_8x8_single_channel(name):
    model = build_model(name, 10, in_channels=1, seed=0, **SMALL[name]).eval()
    with torch.no_grad():
        logits, feats = model.forward_features(torch.rand(3, 1, 8, 8))
    assert logits.shape == (3, 10)
    assert tuple(feats) == TAPS[name]


def test_64x64_inputs():
    for name in ("tiny", "vgg4", "vgg9"):
        model = build_model(name, 5, seed=0, **SMALL[name]).eval()
        with torch.no_grad():
            assert model(torch.rand(1, 3, 64, 64)).shape == (1, 5)


def test_vgg_tap_shapes_and_layer_counts():
    model = build_model("vgg9", 10, width=4, seed=0)
    _, feats = model.forward_features(torch.rand(2, 3, 32, 32))
    assert [tuple(f.shape[1:]) for f in feats.values()] == [(4, 32, 32), (8, 16, 16), (16, 8, 8), (32, 4, 4)]
    weight_layers = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert len(weight_layers) == 9
    student = build_model("vgg4", 10, width=4, seed=0)
    assert len([m for m in student.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]) == 4


def test_wrn_name_parsing_and_shape():
    model = build_model("wrn-10-2", 7, seed=0)
    assert (model.depth, model.width) == (10, 2)
    _, feats = model.forward_features(torch.rand(2, 3, 32, 32))
    assert [f.shape[1] for f in feats.values()] == [32, 64, 128]
    assert [f.shape[-1] for f in feats.values()] == [32, 16, 8]
    assert build_model("WRN-16-1", 3).spec["depth"] == 16
    with pytest.raises(ValueError, match="depth"):
        build_model("wrn-16-2", 3, depth=22)
    with pytest.raises(ValueError, match="6n\\+4"):
        build_model("wrn", 3, depth=12)


def test_default_parameter_counts_teacher_bigger_than_student():
    counts = {name: count_parameters(build_model(name, 10)) for name in ("tiny", "vgg4", "vgg9")}
    assert counts["vgg9"] > 10 * counts["vgg4"]
    assert counts["vgg4"] > counts["tiny"]
    assert 1_000_000 < counts["vgg9"] < 5_000_000
    assert count_parameters(build_model("vgg4", 10, width=64)) > counts["vgg4"]


def test_same_seed_same_weights_and_global_rng_untouched():
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a = build_model("vgg4", 10, width=8, seed=7)
    after = torch.rand(3)
    torch.testing.assert_close(before, after)  # building with a seed does not consume global RNG
    b = build_model("vgg4", 10, width=8, seed=7)
    c = build_model("vgg4", 10, width=8, seed=8)
    for (na, pa), (_, pb), (_, pc) in zip(a.state_dict().items(), b.state_dict().items(), c.state_dict().items()):
        assert torch.equal(pa, pb), na
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters()))


def test_seeded_resnet_is_deterministic():
    a = build_model("resnet18", 4, seed=1)
    b = build_model("resnet18", 4, seed=1)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_normalisation_is_first_operation():
    mean, std = (0.2, 0.3, 0.4), (0.5, 0.25, 0.1)
    model = build_model("tiny", 10, width=4, mean=mean, std=std, seed=0).eval()
    x = torch.rand(4, 3, 16, 16)
    z = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = model.head(model._body(z)[0])
        torch.testing.assert_close(model(x), expected)
        assert not torch.allclose(model(x), model.head(model._body(x)[0]))
    # defaults: ImageNet stats for 3-channel resnets, 0.5/0.5 otherwise; scalars broadcast
    r = build_model("resnet18", 2)
    torch.testing.assert_close(r.mean.flatten(), torch.tensor(M.IMAGENET_MEAN))
    torch.testing.assert_close(build_model("vgg4", 2, width=2).std.flatten(), torch.full((3,), 0.5))
    torch.testing.assert_close(build_model("tiny", 2, width=2, in_channels=1, mean=0.1).mean.flatten(),
                               torch.tensor([0.1]))


@pytest.mark.parametrize("name", MODELS)
def test_double_backward_in_train_mode(name):
    """Jacobian matching differentiates an input gradient: parameters must receive its gradient."""
    model = build_model(name, 5, seed=0, **SMALL[name]).train()
    x = torch.rand(4, 3, 32, 32, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 3])
    logits = model(x)
    (jac,) = torch.autograd.grad(logits.gather(1, labels[:, None]).sum(), x, create_graph=True)
    assert jac.shape == x.shape and jac.requires_grad
    jac.pow(2).sum().backward()
    weights = [(n, p) for n, p in model.named_parameters() if n.endswith("weight")]
    assert weights
    for n, p in weights:
        assert p.grad is not None, f"{n} got no gradient from the Jacobian term"
        assert torch.isfinite(p.grad).all(), n
        assert p.grad.abs().sum() > 0, f"{n} got an all-zero gradient from the Jacobian term"


def test_feature_taps_support_double_backward():
    """The attention-Jacobian loss differentiates a tap's maximum with respect to the input."""
    model = build_model("vgg4", 3, width=4, seed=0).train()
    x = torch.rand(2, 3, 16, 16, requires_grad=True)
    _, feats = model.forward_features(x)
    att = feats["block2"].pow(2).mean(1).flatten(1).amax(1).sum()
    (jac,) = torch.autograd.grad(att, x, create_graph=True)
    jac.pow(2).sum().backward()
    assert model.stages[0][0].weight.grad.abs().sum() > 0


def test_resnet_adapter_structure():
    model = build_model("resnet18", 4, seed=0)
    assert model.head.out_features == 4 and model.head.in_features == 512
    assert not hasattr(model, "fc")
    gray = build_model("resnet34", 3, in_channels=1, seed=0).eval()
    with torch.no_grad():
        logits, feats = gray.forward_features(torch.rand(2, 1, 32, 32))
    assert logits.shape == (2, 3)
    assert [f.shape[1] for f in feats.values()] == [64, 128, 256, 512]


def test_pretrained_failure_is_clear(monkeypatch):
    import torchvision

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.models, "resnet18", offline)
    with pytest.raises(RuntimeError, match="network connection"):
        build_model("resnet18", 10, pretrained=True)


def test_replace_head():
    model = build_model("vgg4", 10, width=4, seed=0)
    body_before = [p.clone() for p in model.stages.parameters()]
    out = replace_head(model, 3, seed=5)
    assert out is model and model.num_classes == 3 and model(torch.rand(2, 3, 8, 8)).shape == (2, 3)
    assert all(torch.equal(a, b) for a, b in zip(body_before, model.stages.parameters()))
    other = replace_head(build_model("vgg4", 10, width=4, seed=0), 3, seed=5)
    assert torch.equal(other.head.weight, model.head.weight)
    assert M.head_parameters(model) == list(model.head.parameters())


def test_multihead():
    backbone = build_model("tiny", 10, width=4, seed=0).eval()
    x = torch.rand(3, 3, 16, 16)
    with torch.no_grad():
        old_expected = backbone(x)
    model = MultiHead(backbone, 4, seed=0).eval()
    assert isinstance(model, TapModel)
    assert model.num_classes == 4 and model.old_num_classes == 10
    assert model.feature_taps == backbone.feature_taps
    assert model.old_head is backbone.head
    with torch.no_grad():
        new, old, feats = model.forward_heads(x)
        torch.testing.assert_close(old, old_expected)
        torch.testing.assert_close(model(x), new)
        logits, feats2 = model.forward_features(x)
    assert new.shape == (3, 4) and old.shape == (3, 10)
    torch.testing.assert_close(logits, new)
    assert tuple(feats) == backbone.feature_taps
    assert model.mean is backbone.mean
    # parameters: backbone (incl. old head) + new head, each once
    assert count_parameters(model) == count_parameters(backbone) + 4 * backbone.embedding_dim + 4
    with pytest.raises(TypeError, match="backbone"):
        MultiHead(torch.nn.Linear(2, 2), 3)
    with pytest.raises(ValueError, match="num_new_classes"):
        MultiHead(backbone, 0)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"name": "vgg16"}, ValueError, "tiny.*vgg4.*vgg9.*wrn.*resnet18"),
        ({"name": 3}, TypeError, "name"),
        ({"num_classes": 0}, ValueError, "num_classes"),
        ({"num_classes": 2.5}, TypeError, "num_classes"),
        ({"in_channels": 0}, ValueError, "in_channels"),
        ({"mean": (0.5, 0.5)}, ValueError, "mean.*in_channels=3"),
        ({"std": (0.5, 0.0, 0.5)}, ValueError, "std.*> 0"),
        ({"std": "abc"}, TypeError, "std"),
        ({"mean": float("nan")}, ValueError, "mean.*finite"),
        ({"width": 0}, ValueError, "width"),
        ({"depth": 10}, ValueError, "depth.*wrn"),
        ({"pretrained": True}, ValueError, "pretrained"),
        ({"pretrained": "yes"}, TypeError, "pretrained"),
        ({"seed": -1}, ValueError, "seed"),
        ({"name": "resnet18", "width": 4}, ValueError, "width"),
        ({"name": "resnet18", "pretrained": True, "in_channels": 1}, ValueError, "in_channels"),
    ],
)
def test_bad_arguments(kwargs, exc, match):
    args = {"name": "vgg4", "num_classes": 10, **kwargs}
    with pytest.raises(exc, match=match):
        build_model(args.pop("name"), args.pop("num_classes"), **args)


def test_bad_inputs_name_x():
    model = build_model("tiny", 10, width=4, seed=0)
    with pytest.raises(ValueError, match="x must have 3 channel"):
        model(torch.rand(2, 1, 8, 8))
    with pytest.raises(ValueError, match=r"x must be a batch of images \(N, C, H, W\)"):
        model(torch.rand(3, 8, 8))
    with pytest.raises(TypeError, match="x must be floating point"):
        model(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        model.forward_features([[0.0]])
    with pytest.raises(TypeError, match="model"):
        replace_head(torch.nn.Linear(2, 2), 3)
    with pytest.raises(TypeError, match="model"):
        count_parameters("vgg")


def test_works_with_torch_func_in_eval_mode():
    """Exact all-output Jacobians go through torch.func (eval mode): the input check must allow it."""
    model = build_model("tiny", 3, width=4, seed=0).eval()
    x = torch.rand(2, 3, 8, 8)

    def one(xi):
        return model(xi.unsqueeze(0)).squeeze(0)

    jac = torch.func.vmap(torch.func.jacrev(one))(x)
    assert jac.shape == (2, 3, 3, 8, 8)
    (ref,) = torch.autograd.grad(model(x.requires_grad_())[:, 1].sum(), x)
    torch.testing.assert_close(jac[:, 1], ref)
