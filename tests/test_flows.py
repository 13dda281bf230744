"""Every bijection against the autograd Jacobian in float64: round trip, log-det, inverse log-det = -J."""

import copy
import io

import pytest
import torch
from aef_hpc.kernels import triton_launches, use_kernels
from helpers import assert_bijection, randomize

from aef_hpc import build_model
from aef_hpc.config import FLOW_KINDS, load_config
from aef_hpc.data import dequantize, load_digits_images
from aef_hpc.errors import ConfigError, DataError, ModelError
from aef_hpc.flows import (
    FLOWS,
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


def data_initialized(flow, x, scale=0.3):
    """Perturb every parameter (a coupling's last layer starts at zero), then set the ActNorms from ``x``."""
    randomize(flow, scale)
    for m in flow.modules():
        if isinstance(m, ActNorm):
            m.arm()
    flow(x)
    return flow


def realnvp(d, num_layers=3, num_blocks=2):
    return lambda: data_initialized(
        build_flow("realnvp", d, hidden=8, num_layers=num_layers, num_blocks=num_blocks), vectors(16, d)
    )


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
    "realnvp-d2": (realnvp(2), lambda: vectors(d=2)),
    "realnvp-d3": (realnvp(3, num_blocks=0), lambda: vectors(d=3)),
    "realnvp-d5": (realnvp(5, num_layers=4, num_blocks=1), lambda: vectors(d=5)),
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


@pytest.mark.parametrize("name", ["made-affine", "coupling-even", "maf", "iaf", "realnvp-d5"])
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


@pytest.mark.parametrize("parity", [0, 1])
def test_coupling_keeps_its_conditioning_half(parity):
    x = vectors(d=5)
    y, _ = randomize(AffineCoupling(5, hidden=8, parity=parity))(x)
    kept, changed = (slice(0, 2), slice(2, 5)) if parity == 0 else (slice(2, 5), slice(0, 2))
    assert torch.equal(y[:, kept], x[:, kept]) and not torch.allclose(y[:, changed], x[:, changed])


def test_realnvp_default_stack():
    flow = build_flow("realnvp", 5)
    assert [type(m).__name__ for m in flow.parts] == ["AffineCoupling", "ActNorm"] * 4
    couplings = flow.parts[::2]
    assert [c.parity for c in couplings] == [0, 1, 0, 1]
    widths = [m.out_features for m in couplings[0].net if isinstance(m, torch.nn.Linear)]
    assert widths == [256, 256, 2 * 3], "flow_blocks=2 hidden layers of flow_hidden units, then (s, t) of 3 features"
    assert len(build_flow("realnvp", 5, num_blocks=0).parts[0].net) == 1, "flow_blocks=0: an affine conditioner"


def test_realnvp_contract_under_the_triton_interpreter():
    make_module, make_input = CASES["realnvp-d3"]
    module = make_module().eval()
    before = sum(triton_launches.values())
    with use_kernels("triton"):
        assert_bijection(module, make_input())
    assert sum(triton_launches.values()) > before, "the coupling ran the Triton kernels"


ROLES = {"aef-linear": ("prior_flow", "core_flow"), "vae": ("prior_flow", "posterior_flow")}


@pytest.mark.parametrize("d", [2, 3, 5])
@pytest.mark.parametrize("name", sorted(ROLES))
def test_realnvp_in_every_model_role(name, d):
    flows = dict(prior_flow="realnvp", posterior_flow="realnvp", flow_hidden=8, flow_layers=2)
    model = build_model(name, (1, 4, 4), d, architecture="mlp", hidden=8, **flows)
    for role in ROLES[name]:
        randomize(getattr(model, role))
    model.initialize(0.05 + 0.9 * torch.rand(64, 1, 4, 4))  # each ActNorm from data, in the direction it runs
    for role in ROLES[name]:
        flow = getattr(model, role).eval()
        assert [type(m).__name__ for m in flow.parts] == ["AffineCoupling", "ActNorm"] * 2, role
        assert all(bool(m.initialized) for m in flow.parts[1::2]), role
        assert_bijection(flow, vectors(d=d))


@pytest.mark.parametrize("role", ["prior_flow", "posterior_flow"])
def test_realnvp_refuses_a_one_dimensional_latent(role):
    with pytest.raises(ModelError, match="the realnvp flow needs at least 2 features.*use maf or none"):
        build_model("aef-linear", (1, 8, 8), 1, **{role: "realnvp"})
    with pytest.raises(ModelError, match="affine coupling needs at least 2 features, got 1"):
        AffineCoupling(1)


def test_config_accepts_realnvp_and_names_the_key_of_an_unknown_flow():
    cfg = load_config(overrides=["model.prior_flow=realnvp", "model.posterior_flow=realnvp"])
    assert (cfg.model.prior_flow, cfg.model.posterior_flow) == ("realnvp", "realnvp")
    for key in ("model.prior_flow", "model.posterior_flow"):
        with pytest.raises(ConfigError) as err:
            load_config(overrides=[f"{key}=glow"])
        assert str(err.value) == f"{key}='glow' is unknown: choose one of none, maf, iaf, realnvp"
    assert FLOW_KINDS == tuple(FLOWS), "config.FLOW_KINDS must list exactly the kinds build_flow builds"


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
    with pytest.raises(ModelError, match="unknown flow 'glow': choose one of none, maf, iaf, realnvp$"):
        build_flow("glow", 3)
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


@pytest.mark.parametrize("name", sorted(ROLES))
def test_models_with_realnvp_flows_train(name, float32_default):
    """The loss falls on the digits, and the trained (non-identity) flows still give exact log-dets: the loss falls
    with a dropped or sign-flipped log-det too, so the Jacobian check at the trained weights is what catches that."""
    images, levels, _ = load_digits_images()
    torch.manual_seed(0)
    flows = dict(prior_flow="realnvp", posterior_flow="realnvp", flow_hidden=16, flow_layers=2)
    model = build_model(name, (1, 8, 8), 2, architecture="small", hidden_channels=8, **flows)
    gen = torch.Generator().manual_seed(0)
    model.initialize(dequantize(images[:128], levels, gen))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        x = dequantize(images[torch.randint(0, len(images), (64,), generator=gen)], levels, gen)
        loss = model.loss(x).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < losses[0] - 20.0, losses
    z = torch.randn(4, 2, dtype=torch.float64)
    for role in ROLES[name]:
        flow = copy.deepcopy(getattr(model, role)).double().eval()
        assert_bijection(flow, z)
        assert all(c(z)[1].abs().min() > 1e-4 for c in flow.parts[::2]), f"{role}: the couplings trained"
