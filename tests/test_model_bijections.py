"""The whole AEF maps against the autograd Jacobian in float64.

Partition: x -> (z0, shell deviations) is a bijection of R^D; expanded: (x, w) -> (z0, deviations) is a
bijection of R^(D+d), checked at the deterministic expansion point w = W vec(y) + b.
"""

import pytest
import torch
from helpers import jacobian_logdet, randomize

from aef_hpc import build_model
from aef_hpc.models import standard_normal_log_prob

FLOWS = dict(prior_flow="maf", posterior_flow="maf", flow_hidden=8, flow_layers=2)
SETUPS = {
    "mlp-1x2x2": dict(image_shape=(1, 2, 2), latent_dim=2, architecture="mlp", hidden=8),
    "small-1x4x4": dict(image_shape=(1, 4, 4), latent_dim=3, architecture="small", hidden_channels=4),
    "mlp-2x2x2-dependent": dict(
        image_shape=(2, 2, 2), latent_dim=3, architecture="mlp", hidden=8, decoder_variance="dependent"
    ),
}


def make(name, setup, **extra):
    torch.manual_seed(1)
    model = build_model(name, alpha=0.05, **SETUPS[setup], **FLOWS, **extra)
    x = 0.05 + 0.9 * torch.rand(2, *SETUPS[setup]["image_shape"])
    model.initialize(x)  # data-dependent ActNorm init
    return randomize(model, 0.1).eval(), 0.05 + 0.9 * torch.rand(2, *SETUPS[setup]["image_shape"])


@pytest.mark.parametrize("setup", sorted(SETUPS))
@pytest.mark.parametrize("name", ["aef-center", "aef-corner", "aef-checkerboard"])
def test_partition_map_log_det_and_inverse(name, setup):
    model, x = make(name, setup)
    x_before = x.clone()
    z0, deviations, log_prob = model.embed(x)
    shell = ~model.mask.flatten()

    def fmap(v):
        emb = model.embed(v)
        return torch.cat([emb.z0, emb.deviations.flatten(1)[:, shell]], dim=1)

    logdet = log_prob - standard_normal_log_prob(z0) - standard_normal_log_prob(deviations.flatten(1)[:, shell])
    torch.testing.assert_close(logdet, jacobian_logdet(fmap, x), atol=1e-6, rtol=1e-6)
    dev_before = deviations.clone()
    x_back = model.decode(z0, deviations)
    torch.testing.assert_close(x_back, x, atol=1e-7, rtol=1e-6)
    assert torch.equal(x, x_before) and torch.equal(deviations, dev_before), "inputs must not be mutated"
    torch.testing.assert_close(model.log_prob(x), log_prob)


@pytest.mark.parametrize("setup", sorted(SETUPS))
def test_expanded_joint_map_at_the_expansion_point(setup):
    model, x = make("aef-linear", setup)
    y, _ = model.preprocess(x)
    w = model.expansion_point(y).detach()
    emb = model.embed(x, w)
    torch.testing.assert_close(emb.log_prob, model.embed(x).log_prob)
    d = model.latent_dim

    def fmap(v):
        v_x, v_w = v[:, :-d].reshape(-1, *model.image_shape), v[:, -d:]
        out = model.embed(v_x, v_w)
        return torch.cat([out.z0, out.deviations.flatten(1)], dim=1)

    logdet = emb.log_prob - standard_normal_log_prob(emb.z0) - standard_normal_log_prob(emb.deviations)
    joint = torch.cat([x.flatten(1), w], dim=1)
    torch.testing.assert_close(logdet, jacobian_logdet(fmap, joint), atol=1e-6, rtol=1e-6)
    x_back, w_back = model.invert(emb.z0, emb.deviations)
    torch.testing.assert_close(x_back, x, atol=1e-7, rtol=1e-6)
    torch.testing.assert_close(w_back, w, atol=1e-7, rtol=1e-6)
    assert torch.allclose(model.loss(x), -emb.log_prob)


def test_partition_deviations_are_zero_on_the_core():
    model, x = make("aef-center", "small-1x4x4")
    deviations = model.embed(x).deviations
    assert torch.all(deviations[:, model.mask] == 0)
    assert torch.all(deviations[:, ~model.mask] != 0)


@pytest.mark.parametrize("name", ["aef-linear", "aef-center", "vae"])
def test_the_decoders_own_outputs_re_enter(name):
    """Decoding is unclamped (method.md §1.1.4: up to alpha / (1 - 2 alpha) outside [0, 1]); such pixels are
    embedded, scored and (AEF-linear) inverted, the round trip staying in the preprocessed space."""
    model, _ = make(name, "mlp-1x2x2")
    u = torch.linspace(-9.0, 9.0, 12).reshape(3, 1, 2, 2)  # logits of s in (1e-4, 1 - 1e-4)
    x = (torch.sigmoid(u) - 0.05) / 0.9
    assert (x < 0).any() and (x > 1).any(), "pixels beyond [0, 1], as the decoder gives them"
    assert torch.isfinite(model.loss(x)).all()
    decoded = model.decode(torch.randn(5, 2))
    assert torch.isfinite(model.loss(decoded)).all(), "decode's output is accepted as input"
    if name == "aef-linear":
        emb = model.embed(x)
        x_back, _ = model.invert(emb.z0, emb.deviations)
        torch.testing.assert_close(x_back, x, atol=1e-9, rtol=1e-6)
