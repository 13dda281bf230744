"""The affine-layer ops of ``aef_hpc.kernels`` against textbook formulas, with float64 gradchecks."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal

from aef_hpc import kernels

SHAPES = [(1, 1), (3, 7), (2, 3, 2, 2)]


@pytest.mark.parametrize("shape", SHAPES)
def test_decoder_layer_is_the_gaussian_log_likelihood(shape):
    y, mu, r = torch.randn(shape), torch.randn(shape), torch.randn(shape)
    mask = (torch.rand(shape[1:]) > 0.3).to(y.dtype)
    deviation, logp = kernels.decoder_layer(y, mu, r, mask, eps=1e-5)
    scale = F.softplus(r) + 1e-5
    expected = (Normal(mu, scale).log_prob(y) * mask).flatten(1).sum(1)
    torch.testing.assert_close(logp, expected)
    torch.testing.assert_close(deviation, (y - mu) / scale * mask)
    torch.testing.assert_close(kernels.decoder_layer_inverse(deviation, mu, r, 1e-5) * mask, y * mask)


def test_decoder_layer_gradients():
    args = [torch.randn(2, 5, requires_grad=True) for _ in range(3)]
    assert torch.autograd.gradcheck(lambda y, mu, r: kernels.decoder_layer(y, mu, r, None, 1e-5), args)


@pytest.mark.parametrize("shape", SHAPES)
def test_encoder_layer_roundtrip_and_logdet(shape):
    mu, sigma, core = torch.randn(shape), F.softplus(torch.randn(shape)), torch.randn(shape)
    z, logdet = kernels.encoder_layer(mu, sigma, core, 1e-5)
    back, inv = kernels.encoder_layer_inverse(mu, sigma, z, 1e-5)
    torch.testing.assert_close(back, core)
    torch.testing.assert_close(logdet, torch.log(sigma + 1e-5).flatten(1).sum(1))
    torch.testing.assert_close(inv, -logdet)


@pytest.mark.parametrize("shape", SHAPES)
def test_affine_coupling_op(shape):
    x, s_raw, t = torch.randn(shape), 3 * torch.randn(shape), torch.randn(shape)
    y, logdet = kernels.affine_coupling(x, s_raw, t, clamp=2.0)
    s = 2.0 * torch.tanh(s_raw / 2.0)
    assert s.abs().max() < 2.0
    torch.testing.assert_close(y, x * s.exp() + t)
    torch.testing.assert_close(logdet, s.flatten(1).sum(1))
    back, inv = kernels.affine_coupling_inverse(y, s_raw, t, clamp=2.0)
    torch.testing.assert_close(back, x)
    torch.testing.assert_close(inv, -logdet)
    args = [v.clone().requires_grad_() for v in (x, s_raw, t)]
    assert torch.autograd.gradcheck(lambda a, b, c: kernels.affine_coupling(a, b, c, 2.0), args)


def test_logit_op_roundtrip():
    x = torch.rand(2, 1, 3, 3)
    u, logdet = kernels.logit_preprocess(x, 0.05)
    back, inv = kernels.logit_preprocess_inverse(u, 0.05)
    torch.testing.assert_close(back, x)
    torch.testing.assert_close(inv, -logdet)
    assert (
        abs(
            kernels.logit_preprocess(torch.full((1, 3, 64, 64), 0.5), 0.05)[1].item()
            - (3 * 64 * 64 * (math.log(0.9) + 2 * math.log(2)))
        )
        < 1e-6
    )


def test_row_sums_accumulate_in_float32_for_bf16():
    y = torch.randn(2, 4099, dtype=torch.bfloat16)
    _, logp = kernels.decoder_layer(y, torch.zeros_like(y), torch.zeros_like(y), None, 1e-5)
    assert logp.dtype == torch.float32


def test_softplus_inverse():
    for sigma in (1e-3, 0.5, 1.0, 7.0):
        assert (
            abs(F.softplus(torch.tensor(kernels.softplus_inverse(sigma), dtype=torch.float64)).item() - sigma) < 1e-12
        )
