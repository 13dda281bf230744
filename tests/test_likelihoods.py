"""Normalisation and importance sampling: densities integrate to 1, estimates do not depend on chunking."""

import math

import pytest
import torch
from helpers import randomize

from aef_hpc import bits_per_dim, build_model
from aef_hpc.errors import ModelError
from aef_hpc.models import select_proposal_std


def unit_square_grid(n):
    """Midpoints of an n×n grid over [0,1]², as 1×1×2 images."""
    g = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    return torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 1, 1, 2)


def two_pixel_model(name, **kw):
    torch.manual_seed(1)
    return build_model(name, (1, 1, 2), 1, architecture="mlp", hidden=16, alpha=1e-6, **kw).eval()


@pytest.mark.parametrize("name", ["aef-center", "aef-corner"])
def test_partition_density_integrates_to_one(name):
    model = randomize(two_pixel_model(name, prior_flow="maf", posterior_flow="maf", flow_hidden=8, flow_layers=2), 0.2)
    n = 300
    with torch.no_grad():
        mass = model.log_prob(unit_square_grid(n)).exp().sum().item() / n**2
    assert abs(mass - 1) < 0.02, mass


@pytest.mark.parametrize("name", ["aef-linear", "vae", "iwae"])
def test_importance_sampled_density_integrates_to_one(name):
    model = randomize(two_pixel_model(name), 0.2)
    n = 80
    with torch.no_grad():
        log_p = model.marginal_log_prob(unit_square_grid(n), 256, 256, torch.Generator().manual_seed(0))
    mass = log_p.exp().sum().item() / n**2
    assert abs(mass - 1) < 0.05, mass


def test_elbo_integrates_to_at_most_one():
    model = randomize(two_pixel_model("vae"), 0.2)
    n, grid = 80, unit_square_grid(80)
    with torch.no_grad():
        elbo_mass = model.elbo(grid, 64, torch.Generator().manual_seed(0)).exp().sum().item() / n**2
        marginal_mass = (
            model.marginal_log_prob(grid, 256, 256, torch.Generator().manual_seed(0)).exp().sum().item() / n**2
        )
    assert elbo_mass <= 1.0 and elbo_mass < marginal_mass, (elbo_mass, marginal_mass)


@pytest.mark.parametrize("name", ["aef-linear", "vae", "iwae"])
def test_marginal_does_not_depend_on_chunk_size(name):
    model = randomize(
        build_model(name, (1, 2, 2), 2, architecture="mlp", hidden=8, prior_flow="maf", flow_hidden=8, flow_layers=1),
        0.2,
    ).eval()
    x = torch.rand(3, 1, 2, 2)
    values = [model.marginal_log_prob(x, 10, chunk, torch.Generator().manual_seed(7)) for chunk in (1, 3, 10, 64)]
    for v in values[1:]:
        torch.testing.assert_close(v, values[0])


def test_draws_per_pass_keep_a_cpu_pass_near_256_mnist_rows_and_follow_an_explicit_chunk_size():
    from aef_hpc.evaluate.likelihood import draws_per_chunk

    mnist, digits = 28 * 28, 8 * 8
    assert draws_per_chunk(None, 32, mnist, 128, "cpu") == 8  # 8 draws x 32 images = 256 rows of 28x28
    assert draws_per_chunk(None, 256, mnist, 128, "cpu") == 1  # eval.batch_size's default: one draw a pass
    assert draws_per_chunk(None, 256, digits, 1024, "cpu") == 12  # small images: wider passes (3,072 rows)
    assert draws_per_chunk(None, 1000, mnist, 128, "cpu") == 1  # never 0
    assert draws_per_chunk(None, 2, mnist, 16, "cpu") == 16  # never more than K
    assert draws_per_chunk(None, 32, mnist, 128, "cuda") == 32  # a GPU: wide passes
    assert draws_per_chunk(5, 32, mnist, 128, "cpu") == 5  # eval.chunk_size given: as it is


def test_partition_marginal_equals_log_prob():
    model = randomize(build_model("aef-corner", (1, 2, 2), 2, architecture="mlp", hidden=8), 0.2).eval()
    x = torch.rand(4, 1, 2, 2)
    torch.testing.assert_close(model.marginal_log_prob(x, 7, 2), model.log_prob(x))


def test_minus_log_k_is_included():
    model = randomize(build_model("aef-linear", (1, 2, 2), 2, architecture="mlp", hidden=8), 0.2).eval()
    x = torch.rand(2, 1, 2, 2)
    with_k = model.marginal_log_prob(x, 16, 4, torch.Generator().manual_seed(0))
    reference_bias = model.marginal_log_prob(x, 16, 4, torch.Generator().manual_seed(0), subtract_log_k=False)
    torch.testing.assert_close(reference_bias - with_k, torch.full_like(with_k, math.log(16)))


def test_vae_and_aef_have_no_exact_log_prob_where_none_exists():
    for name in ("aef-linear", "vae"):
        with pytest.raises(ModelError, match="no exact log-likelihood"):
            build_model(name, (1, 2, 2), 1, architecture="mlp").log_prob(torch.rand(1, 1, 2, 2))


def test_proposal_std_grid_search_picks_the_best_finite_std():
    model = randomize(two_pixel_model("aef-linear"), 0.2)
    batches = [torch.rand(16, 1, 1, 2) for _ in range(2)]
    best, scores = select_proposal_std(
        model, batches, stds=(10.0, 1.0, 0.1, 1e-3), num_samples=32, generator=torch.Generator().manual_seed(0)
    )
    assert best == max(scores, key=scores.get)
    assert float(model.proposal_std) == best
    with pytest.raises(ModelError, match="proposal_std=0"):
        model.marginal_log_prob(batches[0], 4, 4, proposal_std=0.0)


def test_bits_per_dim():
    assert bits_per_dim(0.0, 784) == 8.0
    assert bits_per_dim(0.0, 64, levels=17) == math.log2(17)
    assert bits_per_dim(784 * math.log(2), 784) == 9.0


def test_effective_sample_size_is_kishs_closed_form():
    """Equal weights give K, one dominant weight gives 1, m equal weights among negligible ones give m, and any
    weights give (sum w)^2 / sum w^2 computed directly."""
    from aef_hpc.models.base import effective_sample_size

    k = 16
    assert torch.allclose(effective_sample_size(torch.full((k, 3), -7.5)), torch.full((3,), float(k)), rtol=1e-12)
    dominant = torch.full((k, 2), -1e4)
    dominant[3] = 0.0
    assert torch.allclose(effective_sample_size(dominant), torch.ones(2), rtol=1e-12)
    some = torch.full((k, 1), -1e4)
    some[[1, 5, 9]] = 2.0
    assert torch.allclose(effective_sample_size(some), torch.tensor([3.0]), rtol=1e-12)
    log_w = torch.randn(k, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 3
    w = log_w.exp()
    assert torch.allclose(effective_sample_size(log_w), w.sum(0) ** 2 / (w**2).sum(0), rtol=1e-12)


@pytest.mark.parametrize("name", ["aef-linear", "vae"])
def test_importance_sampling_repeats_draw_new_samples(name):
    """Each of ``repeats`` estimates uses its own K draws: the mean of two repeats is not one repeat's value, and it
    equals the mean of the two estimates made from each repeat's keyed draws."""
    from aef_hpc.evaluate.likelihood import per_image_nll
    from aef_hpc.models.base import log_mean_exp
    from aef_hpc.noise import KeyedNoise

    model = randomize(two_pixel_model(name), 0.2)
    images = (torch.rand(6, 1, 1, 2, generator=torch.Generator().manual_seed(2)) * 255).round().to(torch.uint8)
    batches = [([f"img{i}" for i in range(6)], images)]
    one = per_image_nll(model, batches, 256, 8, 1, 8, 0, "cpu").nll
    two = per_image_nll(model, batches, 256, 8, 2, 8, 0, "cpu").nll
    assert not torch.equal(one, two), "the second repeat reused the first one's draws"
    from aef_hpc.data import dequantize_keyed, sample_id

    ids = torch.tensor([sample_id(f"img{i}") for i in range(6)])
    x = dequantize_keyed(images, 256, ids, 0)
    with torch.no_grad():
        per_repeat = [log_mean_exp(model.log_importance_weights(x, 8, 8, KeyedNoise(ids, 0, 1, r))) for r in (0, 1)]
    assert torch.allclose(two, -(per_repeat[0] + per_repeat[1]).double() / 2, rtol=1e-12)


@pytest.mark.parametrize("name", ["aef-center", "aef-linear", "vae"])
def test_evaluation_mode_moves_an_nll_by_float32_rounding_only_and_gives_the_model_back(name, float32_default):
    """On the CPU an evaluation runs the convolutions on channels-last weights (oneDNN is faster on them): each
    image's NLL equals the one of the model's own layout to float32 rounding (1.3e-6 per pixel term, FlagGems' base,
    times the 784 terms), and every weight is handed back in its own layout, values untouched."""
    from aef_hpc.evaluate.likelihood import per_image_nll, per_image_nll_as_is

    torch.manual_seed(3)
    model = build_model(name, (1, 28, 28), 4, "small", alpha=1e-6)
    images = torch.randint(0, 256, (6, 1, 28, 28), generator=torch.Generator().manual_seed(4), dtype=torch.uint8)
    with torch.no_grad():
        model.initialize((images + 0.5) / 256)  # ActNorm: data-dependent, NLLs of a few hundred nats
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = [([f"img{i}" for i in range(6)], images)]
    with torch.no_grad():
        own = per_image_nll_as_is(model, batches, 256, 8, 1, 8, 0, "cpu").nll
    fast = per_image_nll(model, batches, 256, 8, 1, 8, 0, "cpu").nll
    assert torch.isfinite(own).all() and 100 < own.abs().min() and own.abs().max() < 2000
    assert (fast - own).abs().max() <= 1.3e-6 * 28 * 28
    for key, value in model.state_dict().items():
        assert value.is_contiguous() and torch.equal(value, before[key]), key
    model.to(memory_format=torch.channels_last)  # a model kept channels-last by its user stays so, storage and all
    kept = [(p, p.data_ptr(), p.stride()) for p in model.parameters() if p.dim() == 4]
    assert (per_image_nll(model, batches, 256, 8, 1, 8, 0, "cpu").nll - own).abs().max() <= 1.3e-6 * 28 * 28
    assert kept and all(p.data_ptr() == ptr and p.stride() == stride for p, ptr, stride in kept)


def test_bf16_evaluation_on_a_cpu_without_bf16_instructions_warns_once(monkeypatch, float32_default):
    from aef_hpc.errors import AEFWarning
    from aef_hpc.evaluate import likelihood

    monkeypatch.setattr(likelihood, "bf16_is_fast", lambda device: False)
    model = two_pixel_model("vae").float()
    batches = [(["a", "b"], torch.tensor([[[[3, 200]]], [[[40, 7]]]], dtype=torch.uint8))]
    with pytest.warns(AEFWarning, match="eval.precision=bf16 on a CPU without bf16 instructions") as said:
        nll = likelihood.per_image_nll(model, batches, 256, 4, 1, 4, 0, "cpu", precision="bf16").nll
    assert len(said) == 1 and torch.isfinite(nll).all()
