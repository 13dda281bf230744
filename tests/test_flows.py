"""Every bijection against the autograd Jacobian in float64: round trip, log-det, inverse log-det = -J."""

import io

import pytest
import torch
from helpers import assert_bijection, randomize

from aef_hpc.errors import DataError, ModelError
from aef_hpc.flows import (
    ActNorm,
    AffineCoupling,
    Composite,
    Identity,
    Inverse,
    LogitPreprocess,
    MaskedAffineAutoregressive,
    ReversePermutation,
    build_flow,
)


def vectors(b=3, d=5):
    return torch.randn(b, d)


def initialized_actnorm(channels, x):
    norm = ActNorm(channels)
    norm.arm()
    norm(x)  # data-dependent init
    randomize(norm, 0.2)
    return norm.eval()


CASES = {
    "logit": (lambda: LogitPreprocess(0.05), lambda: torch.rand(3, 1, 2, 2)),
    "logit-tiny-alpha": (lambda: LogitPreprocess(1e-6), lambda: 0.1 + 0.8 * torch.rand(2, 2, 1, 3)),
    "actnorm-channels": (lambda: initialized_actnorm(2, torch.randn(4, 2, 2, 2)), lambda: torch.randn(3, 2, 2, 2)),
    "actnorm-scalar": (lambda: initialized_actnorm(1, torch.randn(4, 5)), lambda: vectors()),
    "reverse": (lambda: ReversePermutation(), lambda: vectors()),
    "made-affine": (lambda: randomize(MaskedAffineAutoregressive(5, hidden=16)), lambda: vectors()),
    "made-affine-d1": (lambda: randomize(MaskedAffineAutoregressive(1, hidden=4)), lambda: vectors(d=1)),
    "coupling-even": (lambda: randomize(AffineCoupling(4, hidden=8, parity=0)), lambda: vectors(d=4)),
    "coupling-odd-d": (lambda: randomize(AffineCoupling(5, hidden=8, parity=1)), lambda: vectors(d=5)),
    "maf": (lambda: randomize(build_flow("maf", 4, hidden=16, num_layers=2)), lambda: vectors(d=4)),
    "iaf": (lambda: randomize(build_flow("iaf", 4, hidden=16, num_layers=2)), lambda: vectors(d=4)),
    "maf-paper-size": (lambda: randomize(build_flow("maf", 3), 0.05), lambda: vectors(d=3)),
    "composite": (
        lambda: Composite(ReversePermutation(), randomize(AffineCoupling(4, hidden=8)), Identity()),
        lambda: vectors(d=4),
    ),
    "inverse": (lambda: Inverse(randomize(AffineCoupling(4, hidden=8))), lambda: vectors(d=4)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bijection_contract(name):
    make_module, make_input = CASES[name]
    module = make_module().eval()
    assert_bijection(module, make_input())


@pytest.mark.parametrize("name", ["made-affine", "coupling-even", "maf", "iaf"])
def test_every_parameter_gets_a_gradient(name):
    module = CASES[name][0]().train()
    y, logdet = module(CASES[name][1]())
    (y.square().sum() + logdet.sum()).backward()
    for pname, p in module.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname


def test_made_is_autoregressive():
    layer = randomize(MaskedAffineAutoregressive(6, hidden=12))
    jac = torch.autograd.functional.jacobian(lambda v: layer(v[None])[0][0], torch.randn(6))
    assert torch.all(jac.triu(1) == 0), "output i must not depend on inputs >= i except itself"
    assert torch.all(jac.diagonal() > 0)


def test_maf_default_size_matches_spec():
    flow = build_flow("maf", 4)
    made_layers = [m for m in flow.parts if isinstance(m, MaskedAffineAutoregressive)]
    assert len(made_layers) == 4
    assert made_layers[0].made.initial.out_features == 256
    assert len(made_layers[0].made.blocks) == 2
    kinds = [type(m).__name__ for m in flow.parts]
    assert kinds[:3] == ["ReversePermutation", "MaskedAffineAutoregressive", "ActNorm"]


def test_coupling_log_scale_is_bounded():
    layer = AffineCoupling(4, hidden=8, clamp=1.5)
    with torch.no_grad():
        layer.net[-1].bias.fill_(100.0)
    _, logdet = layer(vectors(d=4))
    assert torch.all(logdet <= 2 * 1.5 + 1e-12), "two free features, each |s| < clamp"


def test_actnorm_data_dependent_init_and_state_roundtrip():
    x = 3.0 + 2.0 * torch.randn(64, 3, 4, 4)
    norm = ActNorm(3)
    y, _ = norm(x)
    assert not bool(norm.initialized) and torch.equal(y, x / (1 + 1e-5)), "the identity until initialised"
    norm.arm()
    y, _ = norm(x)
    assert bool(norm.initialized)
    torch.testing.assert_close(y.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-6, rtol=0)
    torch.testing.assert_close(y.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-4, rtol=0)  # unbiased, as nflows
    buffer = io.BytesIO()
    torch.save(norm.state_dict(), buffer)
    buffer.seek(0)
    restored = ActNorm(3)
    restored.load_state_dict(torch.load(buffer))
    assert bool(restored.initialized)
    x2 = torch.randn(5, 3, 4, 4)
    restored.train()  # training mode alone never re-initialises
    torch.testing.assert_close(restored(x2)[0], norm(x2)[0])


def test_logit_log_det_formula():
    """D log(1 - 2 alpha) + sum softplus(u) + softplus(-u) (method.md §1.1)."""
    x = torch.rand(2, 1, 3, 3)
    u, logdet = LogitPreprocess(0.05)(x)
    expected = 9 * torch.log(torch.tensor(0.9)) + (
        torch.nn.functional.softplus(u) + torch.nn.functional.softplus(-u)
    ).sum((1, 2, 3))
    torch.testing.assert_close(logdet, expected)


@pytest.mark.parametrize(
    "bad", [torch.tensor([[[[1.5, 0.2]]]]), torch.tensor([[[[-0.1, 0.2]]]]), torch.tensor([[[[float("nan"), 0.2]]]])]
)
def test_logit_rejects_values_outside_unit_interval(bad):
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        LogitPreprocess(0.05)(bad)


def test_unknown_flow_and_bad_alpha():
    with pytest.raises(ModelError, match="unknown flow 'realnvp'"):
        build_flow("realnvp", 3)
    with pytest.raises(DataError, match="alpha=0.5"):
        LogitPreprocess(0.5)


def test_residual_made_computes_the_nflows_function_by_hand():
    """Fixed weights, one residual block, d=2, hidden 2: the outputs computed by hand (nflows' ResidualMADE:
    initial -> x + W2 relu(W1 relu(x)) -> final, no activation before the final layer)."""
    from aef_hpc.flows import ResidualMADE

    made = ResidualMADE(2, hidden=2, num_blocks=1, outputs_per_feature=1)
    with torch.no_grad():
        for layer in (made.initial, made.blocks[0].first, made.blocks[0].second, made.final):
            layer.weight.fill_(0.0)
            layer.bias.fill_(0.0)
        made.initial.weight.copy_(torch.tensor([[2.0, 0.0], [-3.0, 0.0]]))  # hidden degrees 1, 1 see x1 only
        made.initial.bias.copy_(torch.tensor([0.5, 0.25]))
        made.blocks[0].first.weight.copy_(torch.tensor([[1.0, 1.0], [0.0, 1.0]]))
        made.blocks[0].second.weight.copy_(torch.tensor([[0.5, 0.0], [0.0, -1.0]]))
        made.final.weight.copy_(torch.tensor([[7.0, 7.0], [1.0, 1.0]]))  # output 1 masked off, output 2 sees h
        made.final.bias.copy_(torch.tensor([0.1, 0.2]))
    x = torch.tensor([[1.0, 5.0]])
    h0 = torch.tensor([2.0 * 1 + 0.5, -3.0 * 1 + 0.25])  # [2.5, -2.75]
    r = torch.relu(h0)  # [2.5, 0]
    t = torch.relu(torch.tensor([r[0] + r[1], r[1]]))  # [2.5, 0]
    h = h0 + torch.tensor([0.5 * t[0], -1.0 * t[1]])  # [3.75, -2.75]: negative, kept (no ReLU before final)
    want = torch.tensor([0.1, 0.2 + h[0] + h[1]])  # output 1 depends on nothing (degree 1), output 2 on h
    torch.testing.assert_close(made(x).reshape(-1), want)


@pytest.mark.parametrize("features,hidden,blocks", [(3, 8, 2), (5, 16, 1), (1, 4, 2), (2, 6, 3)])
def test_residual_made_equals_nflows_on_identical_weights(features, hidden, blocks):
    """An independent implementation: nflows' MADE (use_residual_blocks=True, the reference code's) with our
    weights gives the same autoregressive parameters, masks included, in float64."""
    from nflows.transforms.made import MADE

    from aef_hpc.flows import ResidualMADE

    ours = randomize(ResidualMADE(features, hidden, blocks, outputs_per_feature=2), 0.5)
    theirs = MADE(features, hidden, num_blocks=blocks, output_multiplier=2, use_residual_blocks=True).double()
    pairs = [(ours.initial, theirs.initial_layer), (ours.final, theirs.final_layer)]
    for mine, block in zip(ours.blocks, theirs.blocks, strict=True):
        pairs += [(mine.first, block.linear_layers[0]), (mine.second, block.linear_layers[1])]
    with torch.no_grad():
        for mine, other in pairs:
            torch.testing.assert_close(mine.mask, other.mask.to(mine.mask), msg="connectivity masks")
            other.weight.copy_(mine.weight)
            other.bias.copy_(mine.bias)
    x = torch.randn(7, features)
    torch.testing.assert_close(ours(x).reshape(7, -1), theirs(x), rtol=1e-12, atol=1e-12)
