"""Saliency on the object: ties count as misses; honest baselines (untrained networks, centre prior)."""
import pytest
import torch

from jkt_lab import saliency
from jkt_lab.data import load
from jkt_lab.models import build_model


@pytest.fixture(scope="module")
def data():
    return load("shapes", n_train=300, n_test=100)


def test_all_zero_map_scores_zero_and_the_mask_itself_scores_one(data):
    masks = data.mask_test[:50]
    zero = saliency.mask_overlap(torch.zeros(masks.shape), masks)
    assert zero["overlap"] == 0.0
    assert zero["chance"] == pytest.approx(float(masks.float().mean()))
    assert saliency.mask_overlap(masks.float(), masks)["overlap"] == 1.0
    assert saliency.mask_overlap(masks.float(), masks, fraction=0.01)["overlap"] == 0.0   # tie larger than k
    assert saliency.mask_overlap((~masks).float(), masks)["overlap"] == 0.0
    noise = torch.rand(masks.shape, generator=torch.Generator().manual_seed(0))
    ramp = masks.float() + noise * 1e-3                          # untied: the mask first, then the rest
    assert saliency.mask_overlap(ramp, masks)["overlap"] == 1.0
    assert abs(saliency.mask_overlap(noise, masks)["overlap"] - zero["chance"]) < 0.05


def test_ties_at_the_boundary_are_misses():
    masks = torch.zeros(1, 1, 4, dtype=torch.bool)
    masks[0, 0, :2] = True                                      # k = 2
    maps = torch.tensor([[[5.0, 1.0, 1.0, 0.0]]])               # top-2 = {5} + one of a tie of two 1s
    assert saliency.mask_overlap(maps, masks)["overlap"] == 0.5
    maps = torch.tensor([[[5.0, 3.0, 1.0, 0.0]]])
    assert saliency.mask_overlap(maps, masks)["overlap"] == 1.0


def test_centre_prior_is_a_centred_gaussian():
    prior = saliency.centre_prior(5, 7, sigma=0.5)
    assert prior.shape == (5, 7) and prior.argmax() == 2 * 7 + 3
    assert torch.allclose(prior, prior.flip(0)) and torch.allclose(prior, prior.flip(1))
    with pytest.raises(ValueError, match="sigma"):
        saliency.centre_prior(5, 5, sigma=0)


def test_overlap_baselines_are_computed_and_differ(data):
    model = build_model("tiny", 10, mean=data.mean, std=data.std, width=4, seed=7)
    x, masks = data.x_test[:40], data.mask_test[:40]
    out = saliency.overlap_baselines(model, x, masks, seeds=(0, 1, 2))
    assert set(out) == {"model", "untrained", "untrained_seeds", "centre_prior", "chance"}
    assert len(out["untrained_seeds"]) == 3 and len(set(out["untrained_seeds"])) > 1
    assert out["untrained"] == pytest.approx(sum(out["untrained_seeds"]) / 3)
    assert all(0 <= v <= 1 for v in [out["model"], out["untrained"], out["centre_prior"], out["chance"]])
    assert out["untrained"] != out["centre_prior"] and out["centre_prior"] != out["chance"]
    # the same untrained networks, built by name or by a builder
    by_name = saliency.overlap_baselines("tiny", x, masks, seeds=(0, 1, 2), num_classes=10, width=4,
                                         mean=data.mean, std=data.std)
    assert by_name["untrained_seeds"] == out["untrained_seeds"] and "model" not in by_name
    built = saliency.overlap_baselines(lambda s: build_model("tiny", 10, mean=data.mean, std=data.std, width=4, seed=s),
                                       x, masks, seeds=(1,))
    assert built["untrained_seeds"] == out["untrained_seeds"][1:2]
    with pytest.raises(ValueError, match="num_classes"):
        saliency.overlap_baselines("tiny", x, masks)
    with pytest.raises(ValueError, match="masks"):
        saliency.overlap_baselines(model, x, masks[:3])
