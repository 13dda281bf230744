"""The cases ``bench kernels`` measures: each fused op with its operands, providers and the least traffic it needs.

A case makes its inputs as leaves needing gradients and one dense random gradient per output (``grad_output``
and the gradient of the row sums), made once and shared by every provider. A ``Runner`` gives one provider's
three modes: ``forward``; ``backward``, ``torch.autograd.backward(outputs, grads, retain_graph=True)`` on one
saved forward graph; and ``full``, a forward plus that backward. ``reset`` sets every leaf's ``.grad`` to None,
so no run accumulates into the gradients of the one before.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch

from aef_hpc.kernels import decoder_log_prob, use_kernels
from aef_hpc.kernels.affine_coupling import affine_coupling, affine_coupling_reference
from aef_hpc.kernels.decoder_layer import decoder_layer, decoder_layer_reference
from aef_hpc.kernels.encoder_layer import encoder_layer, encoder_layer_reference
from aef_hpc.kernels.logit import logit_preprocess, logit_preprocess_reference

PROVIDERS = ("triton", "eager", "compile")
MODES = ("forward", "backward", "full")
CLAMP, EPS, ALPHA = 2.0, 1e-5, 0.05


@dataclass(frozen=True)
class Case:
    """One op on one operand layout: ``make(batch, n, device, dtype)`` returns its inputs (not yet leaves);
    ``minimum`` is the full-size tensors (``[B, n]``) the forward and the backward must move at the least."""

    op: str
    case: str
    fused: Callable
    reference: Callable
    make: Callable
    minimum: tuple[int, int]


def _normal(batch, n, device, dtype, k=3):
    return [torch.randn(batch, n, device=device, dtype=dtype) for _ in range(k)]


def _positive_scale(batch, n, device, dtype):
    mu, sigma, core = _normal(batch, n, device, dtype)
    return [mu, sigma.abs() + 0.1, core]


def _unit(batch, n, device, dtype):
    return [torch.rand(batch, n, device=device, dtype=dtype)]


def _row_variance(batch, n, device, dtype):
    """``y, mu`` per sample and ``r`` one ``[n]`` row broadcast over the batch (the ``independent`` variance)."""
    return [*_normal(batch, n, device, dtype, 2), torch.randn(n, device=device, dtype=dtype)]


# Minimum traffic, in full-size tensors per direction: the forward reads each input once and writes each output it
# must; the backward reads what its gradients need, the incoming grad_output where the op has a full-size output,
# and writes each gradient once. A row sum ([B]) or a row broadcast over the batch ([n]) is ~0 per element. A
# gradient equal to grad_output itself needs no pass (as leaves here, autograd still stores a copy of it as
# ``.grad``: the eager count includes that copy, the Triton counter does not).
CASES = (
    # out = x e^s + t, s = c tanh(s_raw / c). Forward: read x, s_raw, t, write out (4). Backward: read x, s_raw,
    # grad_out; write gx = g e^s, gs_raw = (g x e^s + g_row) (1 - (s/c)^2) (5); gt is grad_out.
    Case(
        "affine_coupling",
        "full",
        lambda x, s, t: affine_coupling(x, s, t, CLAMP),
        lambda x, s, t: affine_coupling_reference(x, s, t, CLAMP),
        _normal,
        (4, 5),
    ),
    # z = mu + (sigma + eps) core. Forward: read mu, sigma, core, write z (4). Backward: read sigma, core, grad_out;
    # write g_sigma = g core + g_row / (sigma + eps), g_core = g (sigma + eps) (5); g_mu is grad_out.
    Case(
        "encoder_layer",
        "full",
        lambda mu, sigma, core: encoder_layer(mu, sigma, core, EPS),
        lambda mu, sigma, core: encoder_layer_reference(mu, sigma, core, EPS),
        _positive_scale,
        (4, 5),
    ),
    # u = logit(alpha + (1 - 2 alpha) x). Forward: read x, write u (2). Backward: read x, grad_out, write gx (3).
    Case(
        "logit",
        "full",
        lambda x: logit_preprocess(x, ALPHA),
        lambda x: logit_preprocess_reference(x, ALPHA),
        _unit,
        (2, 3),
    ),
    # deviation = (y - mu) / (softplus(r) + eps). Forward: read y, mu, r, write the deviation (4). Backward: read
    # y, mu, r, grad_out; write gy, g_mu, g_r (7).
    Case(
        "decoder_layer",
        "full",
        lambda y, mu, r: decoder_layer(y, mu, r, None, EPS),
        lambda y, mu, r: decoder_layer_reference(y, mu, r, None, EPS),
        _normal,
        (4, 7),
    ),
    # The loss path: logp[B] only, r one row. Forward: read y, mu (2; r ~0, logp ~0). Backward: read y, mu (no
    # full-size grad_output, g_r ~0), write gy, g_mu (4). float32: 8 + 16 = 24 bytes per element.
    Case(
        "decoder_loss",
        "independent",
        lambda y, mu, r: decoder_log_prob(y, mu, r, None, EPS),
        lambda y, mu, r: decoder_layer_reference(y, mu, r, None, EPS)[1],
        _row_variance,
        (2, 4),
    ),
)


def minimum_bytes(case: Case, mode: str, dtype: torch.dtype) -> int:
    """Least bytes per element of ``[B, n]`` that ``mode`` must move."""
    forward, backward = case.minimum
    tensors = {"forward": forward, "backward": backward, "full": forward + backward}[mode]
    return tensors * dtype.itemsize


def _as_tuple(out) -> tuple:
    return out if isinstance(out, tuple) else (out,)


def _on_triton(fn: Callable) -> Callable:
    def run(*inputs):
        with use_kernels("triton"):
            return fn(*inputs)

    return run


def provider_fn(case: Case, provider: str) -> Callable:
    """The callable ``provider`` runs: the fused op on Triton, its reference, or ``torch.compile`` of it."""
    if provider == "triton":
        return _on_triton(case.fused)
    if provider == "eager":
        return case.reference
    if provider == "compile":
        return torch.compile(case.reference, dynamic=False)
    raise ValueError(f"unknown provider {provider!r}: choose from {', '.join(PROVIDERS)}")


def make_inputs(case: Case, batch: int, n: int, device, dtype) -> tuple[list[torch.Tensor], tuple]:
    """The case's leaves (needing gradients) and one dense random gradient per output of the op."""
    leaves = [x.requires_grad_() for x in case.make(batch, n, device, dtype)]
    with torch.no_grad():
        outputs = _as_tuple(case.reference(*leaves))
    return leaves, tuple(torch.randn_like(out) for out in outputs)


class Runner:
    """One provider's op on a case's leaves: ``mode(name)`` gives the closure a timed run calls, after ``reset``."""

    def __init__(self, fn: Callable, leaves: list[torch.Tensor], grads: tuple):
        self.fn, self.leaves, self.grads = fn, leaves, grads

    def reset(self) -> None:
        for x in self.leaves:
            x.grad = None

    def forward(self) -> tuple:
        return _as_tuple(self.fn(*self.leaves))

    def full(self) -> None:
        torch.autograd.backward(self.forward(), self.grads)

    def mode(self, name: str) -> Callable:
        """``backward`` runs its forward once here, untimed, and keeps that graph for every call."""
        if name == "forward":
            return self.forward
        if name == "full":
            return self.full
        if name != "backward":
            raise ValueError(f"unknown mode {name!r}: choose from {', '.join(MODES)}")
        graph = self.forward()
        return lambda: torch.autograd.backward(graph, self.grads, retain_graph=True)
