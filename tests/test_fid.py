"""FID and IFE (method.md §4.2, §4.3): the Fréchet distance against closed forms, FID and IFE with a stand-in
feature network on the embedded digits, the plain-torch FID Inception with random weights under pytorch-fid's key
set, and ``load_inception``'s errors.

The tests' default dtype is float64 (conftest); the Inception stays float32 (``load_inception`` casts it, and its
``forward`` casts the float64 test images to the weights' dtype), so its features come back float32.
"""

import fractions

import numpy as np
import pytest
import torch

from aef_hpc.data import load_digits_images
from aef_hpc.errors import ConfigError, DataError
from aef_hpc.evaluate import fid as fid_module
from aef_hpc.evaluate.fid import feature_statistics, features, fid, frechet_distance, inception_feature_error
from aef_hpc.evaluate.inception import FIDInceptionV3, InceptionE, load_inception

# ---------------------------------------------------------------------------------------------------------------
# Fréchet distance


def _rotation(rng, n):
    q, r = np.linalg.qr(rng.normal(size=(n, n)))
    return q * np.sign(np.diag(r))


def _spd(rng, n):
    a = rng.normal(size=(n, n))
    return a @ a.T / n + 0.1 * np.eye(n)


def test_frechet_diagonal_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    s1, s2 = rng.uniform(0.1, 3.0, 6), rng.uniform(0.1, 3.0, 6)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-10)


def test_frechet_commuting_covariances_closed_form():
    rng = np.random.default_rng(1)
    q = _rotation(rng, 7)
    l1, l2 = rng.uniform(0.05, 4.0, 7), rng.uniform(0.05, 4.0, 7)
    mu1, mu2 = rng.normal(size=7), rng.normal(size=7)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(l1 + l2 - 2 * np.sqrt(l1 * l2))
    d = frechet_distance(mu1, q @ np.diag(l1) @ q.T, mu2, q @ np.diag(l2) @ q.T)
    assert d == pytest.approx(expected, rel=1e-9)


def test_frechet_trace_term_with_equal_means():
    """Equal means, Σ₂ = 4Σ₁: d² = tr(Σ₁ + 4Σ₁ − 2·2Σ₁) = tr Σ₁; zero if the trace term were dropped."""
    rng = np.random.default_rng(2)
    sigma, mu = _spd(rng, 9), rng.normal(size=9)
    assert frechet_distance(mu, sigma, mu, 4 * sigma) == pytest.approx(np.trace(sigma), rel=1e-9)


def test_frechet_non_commuting_matches_symmetric_form():
    """tr (Σ₁Σ₂)^{1/2} = tr (Σ₁^{1/2} Σ₂ Σ₁^{1/2})^{1/2}, the latter from symmetric eigendecompositions only."""
    rng = np.random.default_rng(3)
    s1, s2 = _spd(rng, 12), _spd(rng, 12)
    mu1, mu2 = rng.normal(size=12), rng.normal(size=12)
    w, v = np.linalg.eigh(s1)
    root1 = v @ np.diag(np.sqrt(w)) @ v.T
    tr_covmean = np.sqrt(np.linalg.eigvalsh(root1 @ s2 @ root1)).sum()
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr_covmean
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)


def test_frechet_identical_inputs_give_zero():
    rng = np.random.default_rng(4)
    sigma, mu = _spd(rng, 32), rng.normal(size=32)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-9


def test_frechet_adds_eps_when_the_root_is_not_finite(monkeypatch):
    calls = []
    real_sqrtm = fid_module.linalg.sqrtm

    def sqrtm(a):
        calls.append(a)
        return np.full_like(a, np.nan) if len(calls) == 1 else real_sqrtm(a)

    monkeypatch.setattr(fid_module.linalg, "sqrtm", sqrtm)
    s1, s2, eps = np.array([1.0, 2.0]), np.array([3.0, 0.5]), 1e-2
    expected = np.sum(s1 + s2 - 2 * np.sqrt((s1 + eps) * (s2 + eps)))
    assert frechet_distance(np.zeros(2), np.diag(s1), np.zeros(2), np.diag(s2), eps=eps) == pytest.approx(expected)
    assert len(calls) == 2


def test_frechet_rejects_a_complex_root_and_bad_shapes():
    with pytest.raises(DataError, match="imaginary"):
        frechet_distance(np.zeros(2), np.diag([-1.0, 1.0]), np.zeros(2), np.eye(2))
    with pytest.raises(DataError, match="shapes"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


def test_feature_statistics_are_float64_mean_and_cov():
    f = torch.randn(50, 4, dtype=torch.float32)
    mu, sigma = feature_statistics(f)
    assert mu.dtype == sigma.dtype == np.float64 and sigma.shape == (4, 4)
    np.testing.assert_allclose(mu, f.double().mean(0).numpy(), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(f.double().numpy(), rowvar=False), rtol=1e-12)
    with pytest.raises(DataError, match="N >= 2"):
        feature_statistics(f[:1])
    with pytest.raises(DataError, match="non-finite"):
        feature_statistics(torch.cat([f, torch.full((1, 4), float("nan"))]))


# ---------------------------------------------------------------------------------------------------------------
# FID and IFE with a stand-in feature network: a fixed random linear map of the flattened pixels


@pytest.fixture
def digits():
    images, levels, _ = load_digits_images()
    return images.double() / (levels - 1)


@pytest.fixture
def linear_features():
    w = torch.randn(64, 16, generator=torch.Generator().manual_seed(7), dtype=torch.float64) / 8
    return (lambda x: x.flatten(1) @ w), w


def test_features_batches_without_grad(digits, linear_features):
    fn, _ = linear_features
    grad_seen = []

    def recording(x):
        grad_seen.append(torch.is_grad_enabled())
        return fn(x)

    whole = features(recording, digits, batch_size=5000)
    assert whole.shape == (len(digits), 16) and whole.dtype == torch.float64
    torch.testing.assert_close(features(recording, digits, batch_size=97), whole)
    torch.testing.assert_close(features(recording, list(digits.split(300))), whole)
    assert grad_seen and not any(grad_seen)
    with pytest.raises(DataError, match="not \\[B, F\\]"):
        features(lambda x: x, digits[:4])


def test_fid_with_a_stand_in_network(digits, linear_features):
    fn, w = linear_features
    real, other = digits[:800], digits[800:1600]
    assert abs(fid(fn, real, real, batch_size=128)) < 1e-9
    held_out = fid(fn, real, other, batch_size=128)
    # A constant shift c moves every feature by c·Wᵀ1 and leaves the covariance alone: FID = ‖c·Wᵀ1‖².
    shifted = [fid(fn, real, real + c, batch_size=128) for c in (0.1, 0.2)]
    for c, value in zip((0.1, 0.2), shifted, strict=True):
        assert value == pytest.approx((c * w.sum(0)).pow(2).sum().item(), rel=1e-8)
    assert 0 < held_out < shifted[0] < shifted[1]
    noisy = [fid(fn, real, real + s * torch.randn_like(real)) for s in (0.05, 0.3)]
    assert 0 < noisy[0] < noisy[1]


def test_inception_feature_error_with_a_stand_in_network(digits, linear_features):
    fn, w = linear_features
    clean = digits[:300]
    assert inception_feature_error(fn, clean, clean, batch_size=64, device="cpu") == 0
    expected = (0.1 * w.sum(0)).pow(2).mean().item()  # mean over images (all equal) and the 16 feature dims
    assert inception_feature_error(fn, clean + 0.1, clean, batch_size=64, device="cpu") == pytest.approx(expected)
    with pytest.raises(DataError):
        inception_feature_error(fn, clean[:10], clean, batch_size=64, device="cpu")


# ---------------------------------------------------------------------------------------------------------------
# The FID Inception with random weights

# BasicConv2d layers (conv.weight + bn.{weight,bias,running_mean,running_var} = 5 keys each):
# stem 5, InceptionA 7 × 3, InceptionB 4, InceptionC 10 × 4, InceptionD 6, InceptionE 9 × 2 = 94.
N_CONVS = 5 + 7 * 3 + 4 + 10 * 4 + 6 + 9 * 2
# pytorch-fid's file: those 470 keys plus fc.weight and fc.bias (1008 classes; built with aux_logits=False).
N_FILE_KEYS = 5 * N_CONVS + 2
# Trunk parameters: torchvision's inception_v3 has 27,161,264, less AuxLogits (3,326,696) and fc (2048·1000 + 1000).
N_TRUNK_PARAMS = 27_161_264 - 3_326_696 - 2_049_000


def _random_fid_state() -> dict:
    """A state dict with pytorch-fid's exact key set: He-normal convolutions, random BN statistics, fc 1008×2048."""
    gen = torch.Generator().manual_seed(0)
    net = FIDInceptionV3()
    state = {}
    for key, ref in net.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue
        shape, f32 = ref.shape, dict(dtype=torch.float32)
        if key.endswith("conv.weight"):
            value = torch.randn(shape, generator=gen, **f32) * (2 / shape[1:].numel()) ** 0.5
        elif key.endswith("running_var") or key.endswith("bn.weight"):
            value = 0.5 + torch.rand(shape, generator=gen, **f32)
        else:  # bn.bias, running_mean
            value = 0.1 * torch.randn(shape, generator=gen, **f32)
        state[key] = value
    state["fc.weight"] = 0.01 * torch.randn(1008, 2048, generator=gen, dtype=torch.float32)
    state["fc.bias"] = torch.zeros(1008, dtype=torch.float32)
    return state


@pytest.fixture(scope="module")
def fid_weights(tmp_path_factory):
    state = _random_fid_state()
    path = tmp_path_factory.mktemp("fid") / "pt_inception-random.pth"
    torch.save(state, path)
    return path, state


@pytest.fixture(scope="module")
def inception(fid_weights):
    return load_inception(fid_weights[0])


def test_inception_key_set_matches_pytorch_fid(fid_weights):
    _, state = fid_weights
    net = FIDInceptionV3()
    own = [k for k in net.state_dict() if not k.endswith("num_batches_tracked")]
    assert N_CONVS == 94 and len(own) == 470 and len(state) == N_FILE_KEYS == 472
    assert sum(isinstance(m, torch.nn.Conv2d) for m in net.modules()) == N_CONVS
    assert sum(p.numel() for p in net.parameters()) == N_TRUNK_PARAMS == 21_785_568
    assert set(state) == set(own) | {"fc.weight", "fc.bias"}
    assert net.Mixed_7c.max_pool and not net.Mixed_7b.max_pool  # FIDInceptionE_2 vs FIDInceptionE_1
    shapes = {
        "Conv2d_1a_3x3.conv.weight": [32, 3, 3, 3],
        "Conv2d_1a_3x3.bn.running_mean": [32],
        "Conv2d_4a_3x3.bn.running_var": [192],
        "Mixed_5b.branch1x1.conv.weight": [64, 192, 1, 1],
        "Mixed_5b.branch_pool.conv.weight": [32, 192, 1, 1],
        "Mixed_6a.branch3x3.conv.weight": [384, 288, 3, 3],
        "Mixed_6e.branch7x7dbl_5.conv.weight": [192, 192, 1, 7],
        "Mixed_7a.branch3x3_2.conv.weight": [320, 192, 3, 3],
        "Mixed_7b.branch3x3dbl_3b.conv.weight": [384, 384, 3, 1],
        "Mixed_7c.branch_pool.conv.weight": [192, 2048, 1, 1],
        "fc.weight": [1008, 2048],
        "fc.bias": [1008],
    }
    for key, shape in shapes.items():
        assert list(state[key].shape) == shape, key


def test_inception_features(inception, fid_weights):
    _, state = fid_weights
    assert not inception.training and not any(p.requires_grad for p in inception.parameters())
    assert inception.Conv2d_1a_3x3.conv.weight.dtype == torch.float32
    key = "Mixed_7c.branch_pool.bn.running_var"
    torch.testing.assert_close(inception.state_dict()[key], state[key])
    gray, color = torch.rand(2, 1, 8, 8), torch.rand(2, 3, 32, 32)  # float64 inputs, cast to float32 inside
    with torch.no_grad():
        f_gray, f_color, f_tiled = inception(gray), inception(color), inception(gray[:1].repeat(1, 3, 1, 1))
    for f in (f_gray, f_color):
        assert f.shape == (2, 2048) and f.dtype == torch.float32
        assert torch.isfinite(f).all() and (f >= 0).all()  # a mean of ReLU outputs
        assert (f[0] - f[1]).abs().max() > 1e-3 * f.abs().max() > 0  # different images, different features
    torch.testing.assert_close(f_gray[:1], f_tiled)  # grayscale is tiled to 3 channels
    with pytest.raises(DataError):
        inception(torch.rand(2, 2, 8, 8))


@pytest.mark.parametrize("max_pool", [False, True])
def test_inception_pool_branches_follow_the_fid_patches(max_pool):
    """Average pools ignore the padding (count_include_pad=False); Mixed_7c's pool branch is a 3×3 max pool."""
    block = InceptionE(8, max_pool=max_pool).eval()
    x = torch.randn(2, 8, 5, 5)
    if max_pool:
        pooled = torch.nn.functional.max_pool2d(x, 3, stride=1, padding=1)
    else:
        ones = torch.nn.functional.avg_pool2d(torch.ones_like(x), 3, stride=1, padding=1)  # 4/9 at corners
        pooled = torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1) / ones
    with torch.no_grad():
        torch.testing.assert_close(block(x)[:, -192:], block.branch_pool(pooled))


# ---------------------------------------------------------------------------------------------------------------
# load_inception's errors: one line naming eval.fid_weights


def _config_error(path) -> str:
    with pytest.raises(ConfigError) as info:
        load_inception(path)
    message = str(info.value)
    assert "eval.fid_weights" in message and "\n" not in message
    return message


def test_load_inception_errors(tmp_path):
    assert "not set" in _config_error(None)
    assert "no such file" in _config_error(tmp_path / "missing.pth")
    assert str(tmp_path / "missing.pth") in _config_error(tmp_path / "missing.pth")
    assert "not a file" in _config_error(tmp_path)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a torch file\n" * 4)
    assert "cannot be loaded" in _config_error(garbage)
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"Conv2d_1a_3x3.conv.weight": fractions.Fraction(1, 3)}, unsafe)  # refused by weights_only=True
    assert "cannot be loaded" in _config_error(unsafe)
    a_list = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], a_list)
    assert "not a state dict" in _config_error(a_list)
    wrong = tmp_path / "wrong_shape.pth"
    torch.save({"Conv2d_1a_3x3.conv.weight": torch.zeros(32, 1, 3, 3)}, wrong)
    assert "'Conv2d_1a_3x3.conv.weight' has shape [32, 1, 3, 3]" in _config_error(wrong)


def test_load_inception_key_checks(tmp_path, fid_weights):
    _, state = fid_weights

    def save(name, **changes):
        path = tmp_path / name
        torch.save({k: v for k, v in {**state, **changes}.items() if v is not None}, path)
        return path

    assert "missing key 'Mixed_6b.branch7x7_2.bn.running_var'" in _config_error(
        save("missing.pth", **{"Mixed_6b.branch7x7_2.bn.running_var": None})
    )
    assert "unexpected key 'Mixed_8a.conv.weight'" in _config_error(
        save("extra.pth", **{"Mixed_8a.conv.weight": torch.zeros(1)})
    )
    assert "torchvision" in _config_error(save("imagenet.pth", **{"fc.weight": torch.zeros(1000, 2048)}))
    extras = {
        "AuxLogits.fc.weight": torch.zeros(1008, 768),
        "Mixed_5b.branch1x1.bn.num_batches_tracked": torch.tensor(3),
    }
    net = load_inception(save("extras.pth", **extras))
    torch.testing.assert_close(net.Mixed_5b.branch1x1.conv.weight, state["Mixed_5b.branch1x1.conv.weight"])
