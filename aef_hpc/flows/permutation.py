"""Reverse permutation of the features of ``[B, d]`` vectors; log-det 0."""

from .base import Bijection, zero_logdet


class ReversePermutation(Bijection):
    """``y = x[:, ::-1]``, its own inverse."""

    def forward(self, x):
        return x.flip(1), zero_logdet(x)

    def inverse(self, y):
        return y.flip(1), zero_logdet(y)
