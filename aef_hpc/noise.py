"""Where every random number comes from, and the counter-based noise keyed by what it belongs to (floor 0): entry
``j`` of sample ``id`` under ``seeds`` is SplitMix64 of ``(seeds, id, j)``, computed with int64 torch ops on any
device. Whatever rank, worker, batch or position a sample lands on, it gets the same numbers.

Where every random number of a run comes from:

========================================  =============================================================
keyed by sample (any rank count agrees)   seeds (then the sample id)
========================================  =============================================================
training dequantization                   ``train.seed, epoch, 0`` (``dequantize_keyed``)
training denoising noise                  ``train.seed, epoch, 1`` (``keyed_normal``)
training posterior draws (VAE, IWAE)      ``train.seed, epoch, 2`` (``model_noise``)
validation and evaluation dequantization  ``eval.seed, 0``
validation posterior draws                ``eval.seed, 2`` (``model_noise``)
importance sampling, repeat ``r``         ``eval.seed, 1, r`` (``KeyedNoise``)
========================================  =============================================================

From a seeded ``torch.Generator``: the proposal-std search, sample grids, FID samples and denoising test noise
(one process, in stream order). From the global RNG (seeded by ``train.seed``): the initial weights and the
ActNorm initialisation pass (every rank takes rank 0's), and a bare ``model.loss(x)`` outside the loop.
"""

import hashlib
import math

import torch

_MASK = (1 << 64) - 1
_GAMMA = 0x9E3779B97F4A7C15  # SplitMix64's increment (the golden ratio)
_M1, _M2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def _signed(value: int) -> int:
    value &= _MASK
    return value - (1 << 64) if value >> 63 else value


def _mix_int(x: int) -> int:
    """SplitMix64's finaliser on a Python int (mod 2^64): the scalar reference of ``_mix``."""
    x &= _MASK
    x = ((x ^ (x >> 30)) * _M1) & _MASK
    x = ((x ^ (x >> 27)) * _M2) & _MASK
    return x ^ (x >> 31)


def _shr(x: torch.Tensor, n: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's ``>>`` is arithmetic)."""
    return (x >> n) & ((1 << (64 - n)) - 1)


def _mix(x: torch.Tensor) -> torch.Tensor:
    """SplitMix64's finaliser on int64 tensors; multiplication wraps mod 2^64 as on the scalar path."""
    x = (x ^ _shr(x, 30)) * _signed(_M1)
    x = (x ^ _shr(x, 27)) * _signed(_M2)
    return x ^ _shr(x, 31)


def sample_id(key: str) -> int:
    """A 63-bit id of a sample key (stable across processes and runs: not Python's salted ``hash``)."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little") >> 1


def _state(seeds) -> int:
    """The SplitMix64 state after absorbing ``seeds`` (as a signed int64)."""
    state = 0
    for seed in seeds:
        state = _mix_int(state + _GAMMA + int(seed))
    return _signed(state)


def _uniform(ids: torch.Tensor, shape, state: int | torch.Tensor) -> torch.Tensor:
    per_sample = math.prod(shape)
    base = _mix(ids.to(torch.int64) ^ state)
    counters = torch.arange(1, per_sample + 1, device=ids.device, dtype=torch.int64) * _signed(_GAMMA)
    bits = _shr(_mix(base[:, None] + counters), 40)
    return (bits.to(torch.get_default_dtype()) * 2.0**-24).reshape(len(ids), *shape)


def _box_muller(u1: torch.Tensor, u2: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(-2.0 * torch.log1p(-u1)) * torch.cos(2 * math.pi * u2)


def keyed_uniform(ids: torch.Tensor, shape, *seeds: int) -> torch.Tensor:
    """``U[0, 1)`` of shape ``[len(ids), *shape]`` in the default dtype (like ``torch.rand``): entry ``(b, j)`` is a
    hash of ``(seeds, ids[b], j)`` with 24 random bits (all that float32 holds in [0, 1))."""
    return _uniform(ids, shape, _state(seeds))


def keyed_normal(ids: torch.Tensor, shape, *seeds: int) -> torch.Tensor:
    """``N(0, 1)`` from two ``keyed_uniform`` streams (Box-Muller)."""
    return _box_muller(keyed_uniform(ids, shape, *seeds, 1), keyed_uniform(ids, shape, *seeds, 2))


def model_noise(ids: torch.Tensor, *seeds: int) -> "KeyedNoise":
    """The posterior draws of a stochastic objective (VAE, IWAE) for the samples ``ids``: stream 2 of ``seeds``
    (``train.seed, epoch`` in training, ``eval.seed`` in validation)."""
    return KeyedNoise(ids, *seeds, 2)


class KeyedNoise:
    """A stand-in for a ``torch.Generator`` in ``importance_log_weights`` and the VAE's objective: the draws of each
    image are keyed by ``(seeds, its id)``, so they do not depend on the batch, rank or worker it lands on. The
    seeds are absorbed here, into two int64 tensors: a compiled objective sees inputs, not constants that change
    every epoch (no recompilation)."""

    def __init__(self, ids: torch.Tensor, *seeds: int):
        self.ids = ids
        self.states = [torch.tensor(_state((*seeds, k)), dtype=torch.int64, device=ids.device) for k in (1, 2)]

    def normal(self, num_samples: int, shape) -> torch.Tensor:
        """``[num_samples, len(ids), *shape]`` standard normal draws (``keyed_normal`` of the seeds)."""
        full = (num_samples, *shape)
        return _box_muller(*(_uniform(self.ids, full, state) for state in self.states)).movedim(1, 0)
