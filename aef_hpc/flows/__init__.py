"""Bijections in the density direction: ``forward(x) -> (y, logdet)``, ``inverse(y) -> (x, -logdet)``."""

from .actnorm import ActNorm
from .autoregressive import MaskedAffineAutoregressive, build_flow, masked_autoregressive_stack
from .base import Bijection, Composite, Identity, Inverse
from .coupling import AffineCoupling
from .logit import LogitPreprocess
from .made import ResidualMADE
from .permutation import ReversePermutation

__all__ = [
    "ActNorm",
    "AffineCoupling",
    "Bijection",
    "Composite",
    "Identity",
    "Inverse",
    "LogitPreprocess",
    "MaskedAffineAutoregressive",
    "ResidualMADE",
    "ReversePermutation",
    "build_flow",
    "masked_autoregressive_stack",
]
