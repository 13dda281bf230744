"""Encoder/decoder networks: shapes, block strings, decoder variances, and the shapes each one refuses."""

import pytest
import torch
import torch.nn.functional as F

from aef_hpc.errors import ModelError
from aef_hpc.nets import build_networks, decoder_block_string, encoder_block_string


def test_block_strings_match_the_reference_at_32_and_64():
    assert encoder_block_string(32) == "32x4,32d2,16x4,16d2,8x4,8d2,4x4,4d4,1x4"
    assert decoder_block_string(32) == "1x4,4m1,4x4,8m4,8x4,16m8,16x4,32m16,32x4"
    assert encoder_block_string(64) == "64x4,64d2,32x4,32d2,16x4,16d2,8x4,8d2,4x4,4d4,1x4"
    assert decoder_block_string(64) == "1x4,4m1,4x4,8m4,8x4,16m8,16x4,32m16,32x4,64m32,64x4"


@pytest.mark.parametrize("res,blocks", [(8, 14), (16, 19), (32, 24), (64, 29), (128, 34), (256, 39)])
def test_big_networks_build_for_every_power_of_two(res, blocks):
    enc, dec = build_networks("big", (3, res, res), 4, "independent")
    assert len(enc.blocks) == blocks and len(dec.blocks) == blocks
    assert not enc.blocks[-1].residual and enc.blocks[-1].convs[-1].out_channels == 8
    assert dec.raw_scale.mean().item() == 1.0, "big decoder's independent scale starts at s=1"


@pytest.mark.parametrize(
    "arch,shape",
    [
        ("small", (1, 8, 8)),
        ("small", (3, 12, 16)),
        ("big", (3, 8, 8)),
        ("big", (1, 16, 16)),
        ("mlp", (1, 1, 2)),
        ("mlp", (3, 5, 7)),
    ],
)
@pytest.mark.parametrize("variance", ["fixed", "independent", "dependent"])
def test_shapes_and_variances(arch, shape, variance):
    enc, dec = build_networks(arch, shape, 3, variance)
    y = torch.randn(2, *shape)
    mu, sigma = enc(y)
    assert mu.shape == sigma.shape == (2, 3) and torch.all(sigma > 0)
    mu_d, r_d = dec(torch.randn(2, 3))
    assert mu_d.shape == (2, *shape)
    assert torch.broadcast_shapes(mu_d.shape, r_d.shape) == mu_d.shape
    if variance == "fixed":
        assert r_d.dim() == 0, "one scalar, broadcast by the decoder layer"
        torch.testing.assert_close(F.softplus(r_d), torch.ones_like(r_d))
    if variance == "independent":
        assert r_d.shape == shape, "one scale per pixel, not expanded over the batch (the op reads it once)"
        assert any(p is dec.raw_scale for p in dec.parameters())
    if variance == "dependent":
        assert r_d.shape == mu_d.shape
    if variance == "dependent":
        assert not torch.equal(r_d[0], r_d[1])


def test_small_independent_scale_starts_at_zero():
    _, dec = build_networks("small", (1, 8, 8), 2, "independent")
    assert dec.raw_scale.abs().max().item() == 0.0


@pytest.mark.parametrize(
    "arch,shape,match",
    [
        ("big", (1, 28, 28), "square power-of-two"),
        ("big", (3, 32, 16), "square power-of-two"),
        ("big", (3, 4, 4), "square power-of-two"),
        ("big", (3, 512, 512), "square power-of-two"),
        ("small", (1, 6, 6), "divisible by 4"),
        ("resnet", (1, 8, 8), "unknown architecture 'resnet'"),
    ],
)
def test_refused_shapes(arch, shape, match):
    with pytest.raises(ModelError, match=match):
        build_networks(arch, shape, 2, "fixed")


def test_unknown_variance_and_option():
    with pytest.raises(ModelError, match="decoder_variance='learned'"):
        build_networks("mlp", (1, 2, 2), 1, "learned")
    with pytest.raises(ModelError, match="unknown option"):
        build_networks("mlp", (1, 2, 2), 1, "fixed", width=3)


def test_a_big_network_of_its_own_width_keeps_the_latent_heads_and_the_default_is_the_paper_s():
    """``width`` widens the blocks only: the encoder still ends at 2d (mu, sigma), the decoder starts from d (a 1x1
    conv d -> w) and ends at the image; no width is the paper's nets (width = d, no extra conv)."""
    paper_enc, paper_dec = build_networks("big", (1, 8, 8), 4, "independent")
    same_enc, same_dec = build_networks("big", (1, 8, 8), 4, "independent", width=4)
    count = lambda *nets: sum(p.numel() for net in nets for p in net.parameters())  # noqa: E731
    assert paper_dec.in_conv is None and count(paper_enc, paper_dec) == count(same_enc, same_dec)
    enc, dec = build_networks("big", (1, 8, 8), 4, "dependent", width=32)
    assert enc.in_conv.out_channels == 32 and dec.in_conv.in_channels == 4 and dec.in_conv.out_channels == 32
    mu, sigma = enc(torch.rand(3, 1, 8, 8))
    assert mu.shape == sigma.shape == (3, 4)
    mean, scale = dec(torch.randn(3, 4))
    assert mean.shape == scale.shape == (3, 1, 8, 8)
    assert count(enc, dec) > 30 * count(paper_enc, paper_dec)
    assert not build_networks("big", (1, 8, 8), 4, "independent", width=8)[0].blocks[-1].residual  # even at 2d
    with pytest.raises(ModelError, match="unknown option"):
        build_networks("small", (1, 8, 8), 4, "independent", width=32)
