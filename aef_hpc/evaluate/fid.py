"""Fréchet Inception Distance and Inception Feature Error (method.md §4.2 and §4.3).

Every function takes the feature network as ``feature_fn`` (images → ``[B, F]``): the FID Inception of
``aef_hpc.evaluate.inception`` in real runs, any small stand-in in tests. The statistics and the Fréchet distance
follow pytorch-fid (numpy float64, ``np.cov``, ``scipy.linalg.sqrtm``). Images are not clamped, as in the reference.
"""

import warnings
from collections.abc import Callable, Iterable

import numpy as np
import torch
from scipy import linalg

from ..errors import DataError

__all__ = ["feature_statistics", "features", "fid", "frechet_distance", "inception_feature_error"]

FeatureFn = Callable[[torch.Tensor], torch.Tensor]


def features(
    feature_fn: FeatureFn, batches_or_tensor: torch.Tensor | Iterable[torch.Tensor], batch_size: int = 64, device="cpu"
) -> torch.Tensor:
    """F = [f(x_1); …; f(x_N)] ∈ R^{N×F} (float64, CPU) under no_grad, over a tensor in slices or given batches."""
    if torch.is_tensor(batches_or_tensor):
        if batch_size < 1:
            raise DataError(f"features: batch_size must be >= 1, got {batch_size}")
        batches = batches_or_tensor.split(batch_size)
    else:
        batches = batches_or_tensor
    out = []
    with torch.no_grad():
        for batch in batches:
            f = feature_fn(batch.to(device))
            if f.dim() != 2 or f.shape[0] != batch.shape[0]:
                raise DataError(f"features: feature network gave {list(f.shape)} for {len(batch)} images, not [B, F]")
            out.append(f.detach().to("cpu", torch.float64))
    if not out:
        raise DataError("features: no images given")
    return torch.cat(out)


def feature_statistics(features: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """μ = mean_i f_i, Σ = Σ_i (f_i − μ)(f_i − μ)ᵀ / (N − 1) of features ``[N, F]`` (float64, np.cov rowvar=False)."""
    f = features.detach().cpu().double().numpy() if torch.is_tensor(features) else np.asarray(features, np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise DataError(f"feature_statistics needs features [N >= 2, F], got shape {list(f.shape)}")
    if not np.isfinite(f).all():
        raise DataError(f"feature_statistics: {int((~np.isfinite(f)).any(axis=1).sum())} rows hold non-finite features")
    return f.mean(axis=0), np.atleast_2d(np.cov(f, rowvar=False))


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """d² = ‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2 (Σ₁Σ₂)^{1/2}), with scipy's sqrtm as in pytorch-fid.

    If the square root is not finite, ``eps``·I is added to both covariances. A complex root whose diagonal (the
    only part the trace uses) has an imaginary part above 1e-3 raises ``DataError``; otherwise its real part is used.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise DataError(
            f"frechet_distance: shapes mu {mu1.shape} / {mu2.shape}, sigma {sigma1.shape} / {sigma2.shape} do not match"
        )
    with warnings.catch_warnings():  # a singular product is expected (2048 samples of 2048 features)
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(sigma1 @ sigma2)
        if not np.isfinite(covmean).all():
            offset = eps * np.eye(sigma1.shape[0])
            covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if np.abs(np.diagonal(covmean).imag).max() > 1e-3:
            raise DataError(
                f"frechet_distance: sqrt(sigma1 sigma2) has an imaginary part up to {np.abs(covmean.imag).max():.3g} "
                "(covariances not positive semi-definite?)"
            )
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def fid(feature_fn: FeatureFn, real, fake, batch_size: int = 64, device="cpu") -> float:
    """FID = d²(N(μ_fake, Σ_fake), N(μ_real, Σ_real)) on the features of ``real`` [N,C,H,W], ``fake`` [M,C,H,W]."""
    mu_real, sigma_real = feature_statistics(features(feature_fn, real, batch_size, device))
    mu_fake, sigma_fake = feature_statistics(features(feature_fn, fake, batch_size, device))
    return frechet_distance(mu_fake, sigma_fake, mu_real, sigma_real)


def inception_feature_error(feature_fn: FeatureFn, recon, clean, batch_size: int = 64, device="cpu") -> float:
    """IFE = 1/(N·F) Σ_i Σ_k (f(recon_i)_k − f(clean_i)_k)², the mean squared feature error of paired images."""
    f_recon = features(feature_fn, recon, batch_size, device)
    f_clean = features(feature_fn, clean, batch_size, device)
    if f_recon.shape != f_clean.shape:
        raise DataError(f"inception_feature_error: {list(f_recon.shape)} vs {list(f_clean.shape)} features")
    return (f_recon - f_clean).pow(2).mean().item()
