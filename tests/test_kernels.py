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
from aef_hpc.kernels.affine_coupling import affine_coupling_reference
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
    from aef_hpc.kernels.fused import programs

    assert isinstance(programs.forward_program, triton.runtime.interpreter.InterpretedFunction)
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
    from aef_hpc.kernels.fused import tuning

    monkeypatch.setitem(tuning.INTERPRETER, "block", 64)
    monkeypatch.setitem(tuning.INTERPRETER, "rows", 2)
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


def _with_specials(args, which):
    """Copies of ``args`` with NaN, +inf and -inf planted in input ``which`` (other entries untouched)."""
    planted = [a.clone() for a in args]
    target = planted[which]
    target[0, 1], target[1, 2], target[2, 3] = float("nan"), float("inf"), float("-inf")
    return planted


def _same_specials(got, want, what):
    """NaN exactly where the reference is NaN, the same infinities, and the reference's finite values."""
    got, want = got.double().cpu(), want.double().cpu()
    assert torch.equal(got.isnan(), want.isnan()), f"{what}: NaN at {got.isnan().nonzero().tolist()}, reference at "
    f"{want.isnan().nonzero().tolist()}"
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10, equal_nan=True, msg=what)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # numpy, inside the interpreter
@pytest.mark.parametrize("name", OPS)
def test_nan_and_inf_in_give_the_references_nan_out_forward_and_backward(name, device):
    rows, cols = 3, 7
    clean = _inputs(name, rows, cols, device, torch.float64)
    mask = (torch.arange(cols, device=device) % 3 != 0).double()
    gen = torch.Generator().manual_seed(2)
    grad_out = torch.randn(rows, cols, generator=gen, dtype=torch.float64).to(device)
    grad_logdet = torch.randn(rows, generator=gen, dtype=torch.float64).to(device)
    cases = [(f"NaN/inf in input {k}", _with_specials(clean, k), grad_out) for k in range(len(clean))]
    nan_grad = grad_out.clone()
    nan_grad[1, 4] = float("nan")
    cases.append(("NaN in the incoming gradient", clean, nan_grad))
    for what, args, g in cases:
        got = _run(name, args, mask, g, grad_logdet, "triton")
        want = _run(name, args, mask, g, grad_logdet, "eager")
        _same_specials(got[0], want[0], f"{what}: output")
        _same_specials(got[1], want[1], f"{what}: log-det")
        for i, (a, b) in enumerate(zip(got[2], want[2], strict=True)):
            _same_specials(a, b, f"{what}: gradient of input {i}")


def _decoder_loss_cases(rows, device):
    """The decoder's three variances as the model passes them: ``independent`` a ``[C, H, W]`` parameter (not
    expanded), ``fixed`` a scalar buffer (no gradient), ``dependent`` the two channel halves of one output
    (row-strided views, read in place)."""
    gen = torch.Generator().manual_seed(rows)
    shape = (rows, 3, 5, 7)
    y = torch.randn(shape, generator=gen).to(device)
    mu = torch.randn(shape, generator=gen).to(device).requires_grad_()
    independent = torch.randn(shape[1:], generator=gen).to(device).requires_grad_()
    fixed = torch.tensor(0.54, device=device)
    both = torch.randn(rows, 6, 5, 7, generator=gen).to(device).requires_grad_()
    return {
        "independent": ([y, mu, independent], [mu, independent]),
        "fixed": ([y, mu, fixed], [mu]),
        "dependent": ([y, *both.chunk(2, dim=1)], [both]),
    }


@pytest.mark.parametrize("variance", ["independent", "fixed", "dependent"])
@pytest.mark.parametrize("rows", [1, 5, 40])
def test_the_loss_path_matches_the_reference_without_deviations(variance, rows, device, monkeypatch):
    """``decoder_log_prob``: values and gradients of every operand as the models pass them, several programs of
    rows (the broadcast gradient summed per program, then over programs) and chunks per row."""
    from aef_hpc.kernels.decoder_layer import decoder_layer_reference
    from aef_hpc.kernels.fused import tuning

    monkeypatch.setitem(tuning.INTERPRETER, "block", 64)
    monkeypatch.setitem(tuning.INTERPRETER, "rows", 16)
    operands, leaves = _decoder_loss_cases(rows, device)[variance]
    weights = torch.randn(rows, generator=torch.Generator().manual_seed(3)).to(device)
    results = []
    for impl in ("triton", "eager"):
        for leaf in leaves:
            leaf.grad = None
        with use_kernels(impl):
            logp = kernels.decoder_log_prob(*operands, None, 1e-5)
        (logp * weights).sum().backward()
        results.append((logp.detach(), [leaf.grad for leaf in leaves]))
    (got, got_grads), (want, want_grads) = results
    ref = decoder_layer_reference(*[t.detach() for t in operands], None, 1e-5)[1]
    torch.testing.assert_close(want, ref)
    _close(got, want, 105, torch.float64, "log-density")
    for g, w in zip(got_grads, want_grads, strict=True):
        assert g.shape == w.shape
        _close(g, w, rows, torch.float64, "gradient")


def test_the_loss_path_moves_within_ten_percent_of_the_minimum(device, monkeypatch):
    """float32 decoder loss path at 64 x 4,099 with the GPU's program shape (16 rows × 1,024 columns): the minimum
    is 8 bytes per entry forward (read y, mu) and 16 backward (read y, mu; write their gradients), 24 in all."""
    from aef_hpc.kernels.fused import tuning

    monkeypatch.setitem(tuning.INTERPRETER, "block", 1024)
    monkeypatch.setitem(tuning.INTERPRETER, "rows", 16)
    rows, n = 64, 4099
    y, mu = (torch.randn(rows, n, dtype=torch.float32, device=device, requires_grad=True) for _ in range(2))
    r = torch.zeros(n, dtype=torch.float32, device=device, requires_grad=True)
    kernels.triton_bytes.clear()
    with use_kernels("triton"):
        kernels.decoder_log_prob(y, mu, r).sum().backward()
    forward = kernels.triton_bytes["decoder_layer"] / (rows * n)
    backward = kernels.triton_bytes["decoder_layer_backward"] / (rows * n)
    assert forward <= 8 * 1.1 and backward <= 16 * 1.1 and forward + backward <= 24 * 1.1, (forward, backward)


def test_a_fixed_scale_gets_no_gradient_and_no_deviations_are_written(device):
    y, mu = torch.randn(4, 9, device=device), torch.randn(4, 9, device=device, requires_grad=True)
    kernels.triton_bytes.clear()
    with use_kernels("triton"):
        logp = kernels.decoder_log_prob(y, mu, torch.tensor(0.5, device=device))
    logp.sum().backward()
    tensor = 4 * 9 * y.element_size()
    assert kernels.triton_bytes["decoder_layer"] < 3 * tensor, "reads y and mu (and one row of r), writes no deviations"
    assert kernels.triton_bytes["decoder_layer_backward"] < 3.5 * tensor, "reads y and mu, writes only mu's gradient"


def _forced(monkeypatch, tuning, direction, cfg):
    """``cfg`` for the programs of ``direction``, the first candidate for the other direction's."""
    candidates = tuning.candidates
    monkeypatch.setattr(tuning, "candidates", lambda d, *a: [cfg] if d == direction else candidates(d, *a)[:1])


@pytest.mark.parametrize(
    "op,dtypes,n",
    [
        ("decoder", "float32", 3000),  # 6 chunks of the forward per row
        ("decoder", "bfloat16", 12288),
        ("decoder", "mixed", 784),  # float32 images, bf16 network outputs: what bf16 autocast passes
        ("decoder", "mixed", 12288),
        ("coupling", "mixed", 12288),
    ],
)
def test_the_tuner_cannot_change_a_bit(op, dtypes, n, device, monkeypatch):
    """The forward, whose chunk width splits each row's sum, has one configuration (never timed: with a choice of
    widths, bf16 and mixed operands of these sizes gave other bits per width on an H200); every candidate of the
    backward (chunk widths, warps), forced in turn, gives bit-identical log-densities and gradients, for float32,
    bf16 and mixed operands, float32 equal to the reference."""
    from aef_hpc.kernels.fused import tuning

    monkeypatch.setattr(tuning, "interpreting", lambda: False)
    rows = 40
    if device.type == "cpu":  # the interpreter has no layouts: the splits are what it can check, cheaply
        rows, n = 20, min(n, 1500)
    forward = tuning.candidates("forward", rows, n, False)
    backward = tuning.candidates("backward", rows, n, True)
    blocks = {b for b in tuning.GPU_BLOCKS if b < 2 * n}
    assert forward == [tuning.Config(512, 1, tuning.FORWARD_WARPS)]
    assert {c.rows for c in backward} == {min(16, rows)} and {c.block for c in backward} == blocks
    assert {c.warps for c in backward} == set(tuning.GPU_WARPS)
    gen = torch.Generator().manual_seed(5)
    first_dtype = torch.bfloat16 if dtypes == "bfloat16" else torch.float32
    rest_dtype = torch.float32 if dtypes == "float32" else torch.bfloat16
    x = torch.randn(rows, n, generator=gen).to(device, first_dtype)
    a, b = (torch.randn(rows, n, generator=gen).to(device, rest_dtype) for _ in range(2))
    r = torch.randn(n, generator=gen).to(device, rest_dtype)
    leaves = [a.requires_grad_(), r.requires_grad_()] if op == "decoder" else [a.requires_grad_(), b.requires_grad_()]
    weights = torch.randn(rows, generator=gen, dtype=torch.float32).to(device)
    results = []
    for direction, cfg in [("forward", c) for c in forward] + [("backward", c) for c in backward]:
        _forced(monkeypatch, tuning, direction, cfg)
        for leaf in leaves:
            leaf.grad = None
        with use_kernels("triton"):
            if op == "decoder":
                logp = kernels.decoder_log_prob(x, a, r)
            else:
                out, logp = kernels.affine_coupling(x, a, b, 2.0)
                logp = logp + out.float().sum(1)
        (logp * weights).sum().backward()
        results.append((cfg, logp.detach(), [leaf.grad.clone() for leaf in leaves]))
    _, first, first_grads = results[0]
    for cfg, logp, grads in results[1:]:
        assert torch.equal(logp, first), f"{cfg}: the log-density differs from {results[0][0]}'s"
        for g, w in zip(grads, first_grads, strict=True):
            assert torch.equal(g, w), f"{cfg}: a gradient differs from {results[0][0]}'s"
    if dtypes == "float32":
        want = decoder_layer_reference(x.double(), a.detach().double(), r.detach().double(), None, 1e-5)[1]
        _close(first, want, n, torch.float32, "log-density against the reference")


def test_the_fastest_candidate_is_kept_and_timed_once_per_key(monkeypatch):
    from aef_hpc.kernels.fused import tuning

    monkeypatch.setattr(tuning, "interpreting", lambda: False)
    options = tuning.candidates("backward", 40, 3000, True)
    ran = []

    def timer(launch):  # stands in for CUDA-event timing: runs the launch, reports a made-up duration
        launch()
        return {0: 3.0, 1: 1.0, 2: 2.0}[len(ran) - 1]

    monkeypatch.setattr(tuning, "_tuned", {})
    chosen = tuning.choose(("test",), options[:3], ran.append, timer=timer)
    assert chosen == options[1] and ran == options[:3]
    assert tuning.choose(("test",), options[:3], ran.append, timer=timer) == options[1] and len(ran) == 3, "cached"


def test_mismatched_shapes_are_one_clear_error_before_anything_is_flattened(device):
    with use_kernels("triton"), pytest.raises(ModelError, match=r"shapes \[\(3, 5\), \(3, 4\), \(5,\)\] do not broad"):
        kernels.decoder_log_prob(torch.zeros(3, 5), torch.zeros(3, 4), torch.zeros(5))
    with use_kernels("triton"), pytest.raises(ModelError, match="no batch dimension"):
        kernels.encoder_layer(torch.tensor(0.0), torch.tensor(1.0), torch.tensor(2.0), 1e-5)


def test_the_batch_shape_is_torch_s_broadcast_of_the_operands():
    """``batch_shape``'s plain-Python broadcast (the fused ops' host path) against ``torch.broadcast_shapes``."""
    from aef_hpc.kernels._rows import batch_shape

    cases = [[(4, 3, 2)], [(4, 3, 2), (3, 2), (2,)], [(4, 1, 2), (1, 3, 1)], [(1,), (5, 7)], [(5, 3), (3,), (1, 3)]]
    for shapes in cases + [[(2, 1, 1), (1, 6, 9), (9,)], [(1, 1, 8), (6, 1, 8), (8,)]]:
        tensors = [torch.empty(shape) for shape in shapes]
        assert batch_shape("op", *tensors, None) == torch.broadcast_shapes(*shapes), shapes
    for shapes in ([(3, 2), (3,)], [(4, 3, 2), (2, 3, 2)], [(2, 5), (5,), (3, 5)]):
        with pytest.raises(RuntimeError):
            torch.broadcast_shapes(*shapes)
        with pytest.raises(ModelError, match="do not broadcast"):
            batch_shape("op", *[torch.empty(shape) for shape in shapes])


def test_import_aef_hpc_and_train_eager_without_triton_installed():
    """``import aef_hpc`` never imports Triton; the eager path works without it and Triton modes say why not."""
    import subprocess
    import sys

    script = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, aef_hpc\n"
        "from aef_hpc import kernels\n"
        "from aef_hpc.errors import ConfigError\n"
        "model = aef_hpc.build_model('aef-center', (1, 8, 8), 2, architecture='small', hidden_channels=4)\n"
        "model.loss(torch.rand(3, 1, 8, 8)).mean().backward()\n"
        "assert 'triton' not in sys.modules or sys.modules['triton'] is None\n"
        "try:\n"
        "    kernels.check_available('triton', torch.device('cpu'))\n"
        "except ConfigError as e:\n"
        "    print(e)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "needs Triton, which is not installed" in proc.stdout


def test_a_small_decoder_scale_keeps_its_digits_in_float32(device):
    """softplus(r) for r << 0 is ~e^r: log(1 + e^r) rounds it away in float32 (0.19 nats per 1,000 entries at
    r = -15 before log1p was computed by Goldberg's trick)."""
    r = torch.linspace(-30, -8, 1000, dtype=torch.float64).expand(3, 1000)
    y = torch.randn(3, 1000, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * F.softplus(r)
    args = [y, torch.zeros_like(y), r]
    with use_kernels("triton"):
        dev, logp = kernels.decoder_layer(*[a.float().to(device) for a in args])
    ref_dev, ref_logp = decoder_layer_reference(*args)
    _close(logp, ref_logp, 1000, torch.float32, "log-density")
    _close(dev, ref_dev, 1, torch.float32, "deviations")


def test_mixed_dtypes_get_the_references_gradients(device):
    """float32 y, float64 mu, bfloat16 r: computed in float64, each gradient returned in its input's dtype (a
    direct float64 -> bfloat16 store gave garbage in the interpreter). Truth: the float64 reference on the same
    values (the eager reference itself computes softplus(r) in bfloat16)."""
    gen = torch.Generator().manual_seed(4)
    dtypes = (torch.float32, torch.float64, torch.bfloat16)
    inputs = [torch.randn(3, 11, generator=gen, dtype=torch.float64).to(device=device, dtype=d) for d in dtypes]
    grads = []
    for impl, args in (("triton", inputs), ("eager", [a.double() for a in inputs])):
        leaves = [a.detach().clone().requires_grad_() for a in args]
        with use_kernels(impl):
            dev, logp = kernels.decoder_layer(*leaves)
        (dev.double().sum() + logp.sum()).backward()
        grads.append([leaf.grad for leaf in leaves])
    for got, want, dtype in zip(*grads, dtypes, strict=True):
        assert got.dtype == dtype
        torch.testing.assert_close(got.double(), want, rtol=RTOL[dtype], atol=RTOL[dtype], msg=str(dtype))


def test_a_second_derivative_is_refused_not_silently_zero(device):
    """A gradient penalty (create_graph=True) through a fused op would lack the op's second-order terms."""
    sigma = torch.rand(2, 5, device=device, requires_grad=True)
    zeros, ones = torch.zeros(2, 5, device=device), torch.ones(2, 5, device=device)
    with use_kernels("triton"):
        _, logdet = kernels.encoder_layer(zeros, sigma, ones, 1e-5)
    with pytest.raises(ModelError, match="no second derivative .* use kernels=eager"):
        torch.autograd.grad(logdet.sum(), sigma, create_graph=True)


def test_a_mask_needing_a_gradient_and_integer_operands_take_the_reference(device):
    y, mu, r = (torch.randn(2, 6, device=device) for _ in range(3))
    weight = torch.rand(6, device=device, requires_grad=True)
    before = sum(triton_launches.values())
    with use_kernels("triton"):
        kernels.decoder_log_prob(y, mu, r, weight).sum().backward()
        out, _ = kernels.encoder_layer(torch.arange(6).view(2, 3), torch.ones(2, 3), torch.ones(2, 3), 1e-5)
    assert weight.grad is not None and out.dtype == torch.get_default_dtype()
    assert sum(triton_launches.values()) == before


@pytest.mark.parametrize("impl", ["triton", "eager"])
def test_bad_shapes_are_the_same_one_line_error_on_both_paths(impl, device):
    with use_kernels(impl), pytest.raises(ModelError, match=r"encoder_layer: operands of shapes .* do not broad"):
        kernels.encoder_layer(torch.zeros(3, 5), torch.ones(3, 4), torch.zeros(3, 5), 1e-5)
    with use_kernels(impl), pytest.raises(ModelError, match="logit: operands of shapes \\[\\(\\)\\] have no batch"):
        kernels.logit_preprocess(torch.tensor(0.5), 0.05)


def test_a_shift_is_neither_saved_nor_read_by_the_backward(device):
    """The encoder's mu and the coupling's t: their gradient is the incoming one, nothing else needs them."""
    mu, sigma, core = (torch.rand(4, 9, device=device, requires_grad=True) for _ in range(3))
    with use_kernels("triton"):
        z, logdet = kernels.encoder_layer(mu, sigma, core, 1e-5)
    saved = z.grad_fn.saved_tensors
    assert not any(t is not None and t.data_ptr() == mu.data_ptr() for t in saved)
    g = torch.randn_like(z)
    torch.autograd.backward((z, logdet), (g, torch.ones(4, device=device)))
    torch.testing.assert_close(mu.grad, g)


def test_the_tuning_key_separates_what_the_candidates_depend_on(monkeypatch):
    from aef_hpc.kernels.fused import decoder_layer as fused_decoder
    from aef_hpc.kernels.fused import tuning

    meta = dict(MATH=None, ACC=None, VARIANT=0, UNREAD=0, HAS_MASK=False, GRAD_A=1, GRAD_B=1, GRAD_C=2)
    key = tuning.tuning_key
    op = fused_decoder.OP.name
    assert key(op, "backward", meta, torch.float32, 2, 999, True) != key(
        op, "backward", meta, torch.float32, 64, 999, True
    )
    assert key(op, "forward", meta, torch.float32, 2, 999, False) == key(
        op, "forward", meta, torch.float32, 64, 999, False
    )
    masked = {**meta, "HAS_MASK": True}
    assert key(op, "forward", meta, torch.float32, 2, 999, False) != key(
        op, "forward", masked, torch.float32, 2, 999, False
    )


def test_every_kernel_variant_compiles_for_a_gpu(tmp_path):
    """The interpreter runs the kernels as Python and cannot see compile errors: compile every op, direction and
    dtype the models use for sm_90 (Triton's frontend, LLVM and its bundled ptxas), in a fresh process without
    ``TRITON_INTERPRET``, and check that a float64 kernel holds its constants in float64. No GPU is needed; a
    cold compile takes ~10 s (then Triton's cache)."""
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = Path(__file__).with_name("compile_kernels.py")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "compiled 64 kernels for sm_90; float64 constants exact" in proc.stdout
