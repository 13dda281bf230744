"""Every fused op against its float64 reference: values and all gradients, odd shapes, never NaN.

On the CPU the Triton path runs under the interpreter (asserted below); ``pytest --device cuda`` runs the same
checks on a GPU. Tolerances grow with the reduced length for row sums (FlagGems' rule).
"""

import os

import pytest
import torch
import torch.nn.functional as F
import triton
from aef_hpc.kernels import triton_launches, use_kernels
from aef_hpc.kernels.affine_coupling import _coupling_fwd, affine_coupling_reference
from aef_hpc.kernels.decoder_layer import decoder_layer_reference
from aef_hpc.kernels.encoder_layer import encoder_layer_reference
from aef_hpc.kernels.logit import logit_preprocess_reference

from aef_hpc import kernels
from aef_hpc.errors import ModelError

ROWS = [1, 3, 64]
COLS = [1, 7, 127, 1000, 4099]
#: FlagGems' rule: a per-dtype resolution is the rtol, and times the reduced length the atol (a log-det sums one
#: rounding error per entry); never the magnitude times the length, which let errors of 1,000 nats through
RTOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 1.6e-2}


def _inputs(name, rows, cols, device, dtype):
    g = torch.Generator().manual_seed(rows * 10007 + cols)
    rand = lambda: torch.randn(rows, cols, generator=g, dtype=torch.float64)  # noqa: E731
    if name.startswith("encoder"):
        values = [rand(), F.softplus(rand()) + 0.1, rand()]
    elif name == "logit":
        values = [torch.rand(rows, cols, generator=g, dtype=torch.float64)]
    elif name.startswith("decoder"):
        values = [rand(), rand(), rand().clamp(-2, 4)]
    else:
        values = [rand(), 2 * rand(), rand()]
    return [v.to(device=device, dtype=dtype) for v in values]


def _call(name, args, mask=None):
    return {
        "coupling": lambda: kernels.affine_coupling(*args, 2.0),
        "coupling-inverse": lambda: kernels.affine_coupling_inverse(*args, 2.0),
        "coupling-unbounded": lambda: kernels.affine_coupling(*args, None),
        "decoder": lambda: kernels.decoder_layer(*args, None, 1e-5),
        "decoder-masked": lambda: kernels.decoder_layer(*args, mask, 1e-5),
        "encoder": lambda: kernels.encoder_layer(*args, 1e-5),
        "encoder-inverse": lambda: kernels.encoder_layer_inverse(*args, 1e-5),
        "logit": lambda: kernels.logit_preprocess(*args, 0.05),
    }[name]()


def _reference(name, args, mask=None):
    return {
        "coupling": lambda: affine_coupling_reference(*args, 2.0),
        "coupling-inverse": lambda: affine_coupling_reference(*args, 2.0, inverse=True),
        "coupling-unbounded": lambda: affine_coupling_reference(*args, None),
        "decoder": lambda: decoder_layer_reference(*args, None, 1e-5),
        "decoder-masked": lambda: decoder_layer_reference(*args, mask, 1e-5),
        "encoder": lambda: encoder_layer_reference(*args, 1e-5),
        "encoder-inverse": lambda: encoder_layer_reference(*args, 1e-5, inverse=True),
        "logit": lambda: logit_preprocess_reference(*args, 0.05),
    }[name]()


OPS = [
    "coupling",
    "coupling-inverse",
    "coupling-unbounded",
    "decoder",
    "decoder-masked",
    "encoder",
    "encoder-inverse",
    "logit",
]


def _run(name, args, mask, grad_out, grad_logdet, impl):
    leaves = [a.detach().clone().requires_grad_() for a in args]
    if impl == "triton":
        with use_kernels("triton"):
            out, logdet = _call(name, leaves, mask)
    else:
        out, logdet = _reference(name, leaves, mask)
    ((out.double() * grad_out).sum() + (logdet.double() * grad_logdet).sum()).backward()
    return out, logdet, [leaf.grad for leaf in leaves]


def _close(got, want, reduced, dtype, what):
    got, want = got.double().cpu(), want.double().cpu()
    assert torch.isfinite(got).all(), f"{what}: non-finite values"
    torch.testing.assert_close(got, want, rtol=RTOL[dtype], atol=RTOL[dtype] * reduced, msg=what)


@pytest.mark.parametrize("cols", COLS)
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("name", OPS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_op_matches_float64_reference(name, rows, cols, dtype, device):
    args = _inputs(name, rows, cols, device, dtype)
    mask = (torch.rand(cols, generator=torch.Generator().manual_seed(cols)) > 0.3).to(device=device, dtype=dtype)
    gen = torch.Generator().manual_seed(1)
    grad_out = torch.randn(rows, cols, generator=gen, dtype=torch.float64).to(device)
    grad_logdet = torch.randn(rows, generator=gen, dtype=torch.float64).to(device)
    before = sum(triton_launches.values())
    out, logdet, grads = _run(name, args, mask, grad_out, grad_logdet, "triton")
    assert sum(triton_launches.values()) == before + 2, "one forward and one backward Triton launch"
    assert logdet.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    ref_args = [a.double() for a in args]
    ref_out, ref_logdet, ref_grads = _run(name, ref_args, mask.double(), grad_out, grad_logdet, "eager")
    _close(out, ref_out, 1, dtype, "output")
    _close(logdet, ref_logdet, cols, dtype, "log-det")
    for i, (g, r) in enumerate(zip(grads, ref_grads, strict=True)):
        _close(g, r, 1, dtype, f"gradient of input {i}")


@pytest.mark.parametrize("name", ["coupling", "decoder", "encoder", "logit"])
def test_bf16_inputs_accumulate_in_float32(name, device):
    args = _inputs(name, 3, 1000, device, torch.bfloat16)
    with use_kernels("triton"):
        out, logdet = _call(name, args)
    ref_out, ref_logdet = _reference(name, [a.double() for a in args])
    assert out.dtype == torch.bfloat16 and logdet.dtype == torch.float32
    _close(out, ref_out, 1, torch.bfloat16, "output")
    torch.testing.assert_close(logdet.double().cpu(), ref_logdet.cpu(), rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("batch", [2, 3])  # 2: the mask's channel count equals the batch size
def test_four_d_broadcast_and_non_contiguous_inputs(device, batch):
    y = torch.randn(batch, 5, 4, 2, device=device).transpose(1, 3)  # non-contiguous [B, 2, 4, 5]
    mu = torch.randn(batch, 2, 4, 5, device=device)
    raw = torch.randn(2, 4, 5, device=device, requires_grad=True)  # an "independent" scale, broadcast over rows
    shell = (torch.rand(2, 4, 5, device=device) > 0.5).double()
    with use_kernels("triton"):
        dev, logp = kernels.decoder_layer(y, mu, raw.expand(batch, 2, 4, 5), shell, 1e-5)
    logp.sum().backward()
    grad = raw.grad.clone()
    raw.grad = None
    ref_dev, ref_logp = decoder_layer_reference(y, mu, raw.expand(batch, 2, 4, 5), shell, 1e-5)
    ref_logp.sum().backward()
    torch.testing.assert_close(dev, ref_dev)
    torch.testing.assert_close(logp, ref_logp)
    torch.testing.assert_close(grad, raw.grad)


def test_interpreter_path_is_really_taken(device):
    if device.type != "cpu":
        pytest.skip("the interpreter is the CPU path")
    assert os.environ.get("TRITON_INTERPRET") == "1"
    assert isinstance(_coupling_fwd, triton.runtime.interpreter.InterpretedFunction)
    before = triton_launches["decoder_layer"]
    with use_kernels("triton"):
        kernels.decoder_layer(torch.randn(2, 3), torch.zeros(2, 3), torch.zeros(2, 3))
    assert triton_launches["decoder_layer"] == before + 1
    with use_kernels("auto"):
        kernels.decoder_layer(torch.randn(2, 3), torch.zeros(2, 3), torch.zeros(2, 3))
    assert triton_launches["decoder_layer"] == before + 1, "auto means eager for CPU tensors"


def test_unknown_kernel_mode():
    from aef_hpc.errors import ConfigError

    with pytest.raises(ConfigError, match="kernels='fast'"):
        kernels.set_kernels("fast")


@pytest.mark.parametrize("name", ["aef-linear", "aef-center", "vae"])
def test_training_with_triton_matches_eager(name, device, float32_default):
    from aef_hpc import build_model
    from aef_hpc.data import dequantize, load_digits_images

    images, levels, _ = load_digits_images()
    losses = {}
    for impl in ("triton", "eager"):
        torch.manual_seed(0)
        model = build_model(name, (1, 8, 8), 2, architecture="small", hidden_channels=8).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        gen = torch.Generator().manual_seed(0)
        losses[impl] = []
        before = sum(triton_launches.values())
        with use_kernels(impl):
            for step in range(4):
                torch.manual_seed(100 + step)  # the VAE's posterior noise
                x = dequantize(images[16 * step : 16 * step + 16], levels, gen).to(device)
                loss = model.loss(x).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses[impl].append(loss.item())
        assert (sum(triton_launches.values()) > before) == (impl == "triton")
    torch.testing.assert_close(torch.tensor(losses["triton"]), torch.tensor(losses["eager"]), rtol=1e-4, atol=1e-3)
    assert losses["eager"][-1] != losses["eager"][0]
    model.eval()
    x = dequantize(images[:5], levels, torch.Generator().manual_seed(9)).to(device)
    outputs = {}
    for impl in ("triton", "eager"):
        with use_kernels(impl), torch.no_grad():
            outputs[impl] = (model.sample(3, generator=torch.Generator().manual_seed(0)), model.decode(model.encode(x)))
    for a, b in zip(outputs["triton"], outputs["eager"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", OPS)
def test_rows_split_into_many_chunks(name, device, monkeypatch):
    """The GPU launch (many chunks per row, partial sums added afterwards), forced with small chunks."""
    from aef_hpc.kernels import dispatch

    monkeypatch.setitem(dispatch.BLOCK_CAP, "interpreter", 64)
    monkeypatch.setitem(dispatch.BLOCK_CAP, "gpu", 64)
    test_op_matches_float64_reference(name, 3, 1000, torch.float32, device)


def test_operands_broadcast_over_any_dim(device):
    """A [B, 1] shift, a [B, 1] scale, and pixels expanded over the batch get the reference's gradients."""
    cases = [
        (
            "coupling",
            lambda a, b, c: kernels.affine_coupling(a, b, c, 2.0),
            lambda a, b, c: affine_coupling_reference(a, b, c, 2.0),
            [(4, 4), (4, 4), (4, 1)],
        ),
        (
            "encoder",
            lambda a, b, c: kernels.encoder_layer(a, b, c, 1e-5),
            lambda a, b, c: encoder_layer_reference(a, b, c, 1e-5),
            [(3, 6), (3, 1), (3, 6)],
        ),
        (
            "logit",
            lambda a: kernels.logit_preprocess(a.expand(3, 8), 0.05),
            lambda a: logit_preprocess_reference(a.expand(3, 8), 0.05),
            [(1, 8)],
        ),
    ]
    for name, fused, reference, shapes in cases:
        gen = torch.Generator().manual_seed(0)
        args = [torch.rand(s, generator=gen, dtype=torch.float64).to(device) + 0.1 for s in shapes]
        grads = []
        for fn in (fused, reference):
            leaves = [a.clone().requires_grad_() for a in args]
            with use_kernels("triton"):
                out, logdet = fn(*leaves)
            w = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(device)
            ((out * w).sum() + logdet.sum()).backward()
            grads.append([leaf.grad for leaf in leaves])
        for got, want in zip(*grads, strict=True):
            torch.testing.assert_close(got, want, msg=name)


def test_logit_clamp_bounds_are_exact_in_float64(device):
    x = torch.tensor([[0.0, 0.5, 1.0]], dtype=torch.float64, device=device, requires_grad=True)
    with use_kernels("triton"):
        u, logdet = kernels.logit_preprocess(x, 1e-6)
    (u.sum() + logdet.sum()).backward()
    leaf = x.detach().clone().requires_grad_()
    ref_u, ref_logdet = logit_preprocess_reference(leaf, 1e-6)
    (ref_u.sum() + ref_logdet.sum()).backward()
    torch.testing.assert_close(u, ref_u, rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(logdet, ref_logdet, rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(x.grad, leaf.grad, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_one_nat_error_in_one_row_fails_the_comparison(dtype, device):
    """The tolerance must see a wrong answer: the decoder's log-density at 64 x 4,099, one row off by 1 nat."""
    args = _inputs("decoder", 64, 4099, device, dtype)
    with use_kernels("triton"):
        _, logdet = _call("decoder", args)
    _, ref_logdet = _reference("decoder", [a.double() for a in args])
    _close(logdet, ref_logdet, 4099, dtype, "log-det")  # the right answer passes
    wrong = logdet.clone()
    wrong[17] += 1.0
    with pytest.raises(AssertionError):
        _close(wrong, ref_logdet, 4099, dtype, "log-det")


@pytest.mark.parametrize("clamp", [0.0, -1.0, float("nan"), float("inf"), True])
def test_a_coupling_clamp_that_cannot_bound_is_refused(clamp, device):
    """``clamp=0.0`` once became 1.0 inside the launch (``clamp or 1.0``); the reference divided by zero."""
    x, s, t = _inputs("coupling", 2, 5, device, torch.float32)
    for impl in ("triton", "eager"):
        with use_kernels(impl), pytest.raises(ModelError, match="must be a positive number, or None"):
            kernels.affine_coupling(x, s, t, clamp)
        with use_kernels(impl), pytest.raises(ModelError, match="must be a positive number, or None"):
            kernels.affine_coupling_inverse(x, s, t, clamp)
