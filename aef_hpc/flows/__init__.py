"""Bijections in the density direction: ``forward(x) -> (y, logdet)``, ``inverse(y) -> (x, -logdet)``."""

from .actnorm import ActNorm
from .autoregressive import MaskedAffineAutoregressive, masked_autoregressive_stack
from .base import Bijection, Composite, Identity, Inverse
from .build import FLOWS, build_flow
from .coupling import AffineCoupling, coupling_stack
from .logit import LogitPreprocess
from .made import ResidualMADE
from .permutation import ReversePermutation

__all__ = [
    "ActNorm",
    "AffineCoupling",
    "Bijection",
    "Composite",
    "FLOWS",
    "Identity",
    "Inverse",
    "LogitPreprocess",
    "MaskedAffineAutoregressive",
    "ResidualMADE",
    "ReversePermutation",
    "build_flow",
    "coupling_stack",
    "masked_autoregressive_stack",
]
