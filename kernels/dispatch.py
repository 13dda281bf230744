"""Which implementation an op runs: ``auto`` (Triton for CUDA tensors, eager elsewhere), ``triton`` or ``eager``.

``triton`` on CPU tensors runs Triton's interpreter, which needs ``TRITON_INTERPRET=1`` in the environment
before ``triton`` is first imported (it is slow: tests only). ``triton_launches`` counts Triton launches per op,
so tests can prove which path ran.
"""

import collections
import contextlib
import math
import os

import torch
import triton
import triton.language as tl

from aef_hpc.errors import ConfigError

MODES = ("auto", "triton", "eager")
#: widest chunk one program handles: GPUs want many programs, the interpreter few
BLOCK_CAP = {"gpu": 1024, "interpreter": 8192}
_state = {"mode": "auto"}
triton_launches: collections.Counter = collections.Counter()


def set_kernels(mode: str) -> None:
    if mode not in MODES:
        raise ConfigError(f"kernels={mode!r} is unknown: choose one of {', '.join(MODES)}")
    _state["mode"] = mode


def get_kernels() -> str:
    return _state["mode"]


@contextlib.contextmanager
def use_kernels(mode: str):
    previous = get_kernels()
    set_kernels(mode)
    try:
        yield
    finally:
        set_kernels(previous)


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def check_available(mode: str, device: torch.device) -> None:
    """Fail before any work if ``mode`` cannot run on ``device`` (Triton on the CPU needs the interpreter)."""
    if mode not in MODES:
        set_kernels(mode)  # raises the error naming the modes
    if mode == "triton" and device.type != "cuda" and not interpreting():
        raise ConfigError(
            "kernels=triton on CPU tensors needs Triton's interpreter: set TRITON_INTERPRET=1 before starting "
            "(slow, for tests), or use kernels=auto"
        )


def wants_triton(*tensors: torch.Tensor) -> bool:
    mode = _state["mode"]
    if mode == "eager":
        return False
    on_cuda = all(t.is_cuda for t in tensors if t is not None)
    if mode == "auto":
        return on_cuda
    if not on_cuda:
        check_available(mode, torch.device("cpu"))
    return True


def rows_of(t: torch.Tensor, rows: int) -> tuple[torch.Tensor, int]:
    """A ``[rows, n]`` view of ``t`` and its row stride; a tensor broadcast over the batch (stride 0, or no
    batch dim) is passed once with row stride 0 instead of being copied."""
    if t.dim() >= 1 and t.shape[0] == rows and (t.stride(0) != 0 or rows == 1):
        flat = t.reshape(rows, -1)
        return (flat if flat.is_contiguous() else flat.contiguous()), flat.shape[1]
    single = t[0] if t.dim() >= 1 and t.shape[0] == rows else t
    return single.reshape(1, -1).contiguous(), 0


def launch_grid(rows: int, n: int) -> tuple[tuple[int, int], int]:
    """``((rows, chunks), BLOCK)``: one program per row and BLOCK-wide chunk of it.

    On a GPU, 1,024-wide chunks give thousands of programs (e.g. 256 × 12 for 3·64·64), enough to fill the SMs;
    row sums are written per chunk and added afterwards. The interpreter pays ~2 ms per program, so it takes
    chunks up to 8,192 wide (one per row in the tests).
    """
    cap = BLOCK_CAP["interpreter" if interpreting() else "gpu"]
    block = max(16, min(cap, 1 << max(0, math.ceil(math.log2(max(n, 1))))))
    return (rows, -(-n // block)), block


def compute_dtype(dtype: torch.dtype):
    """float64 computes in float64; float32, bf16 and fp16 in float32."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def flat_operands(rows: int, *tensors: torch.Tensor) -> tuple[list[torch.Tensor], list[int], int]:
    """``rows_of`` for each tensor after broadcasting them to one shape (e.g. a ``[C, H, W]`` mask over the batch).

    Raises ``ValueError`` if the broadcast shape does not start with ``rows``."""
    shape = torch.broadcast_shapes(*(t.shape for t in tensors))
    pairs = [rows_of(t.expand(shape), rows) for t in tensors]
    if shape[0] != rows:
        shapes = [tuple(t.shape) for t in tensors]
        raise ValueError(f"fused ops need operands broadcasting to [{rows}, ...], got {shapes}")
    return [p[0] for p in pairs], [p[1] for p in pairs], pairs[0][0].shape[1]


def grad_for(grad2d: torch.Tensor, full_shape, shape) -> torch.Tensor:
    """A ``[rows, n]`` gradient of the broadcast ``full_shape``, summed down to an input's own ``shape``."""
    return grad2d.view(full_shape).sum_to_size(shape)


def launch_backward(kernel, name: str, ctx, g_out: torch.Tensor, g_logdet: torch.Tensor, *scalars):
    """The backward launch the elementwise ops share: ``kernel(*saved, g_out, g_logdet, *grads, n, *strides,
    *scalars, **meta)`` on the forward's grid, one gradient per input, each summed to its input's shape."""
    saved = ctx.saved_tensors
    rows, n = g_out.shape[0], saved[0].shape[1]
    grads = [torch.empty((rows, n), dtype=g_out.dtype, device=g_out.device) for _ in ctx.shapes]
    g2 = g_out.reshape(rows, n).contiguous()
    kernel[ctx.grid](*saved, g2, g_logdet.contiguous(), *grads, n, *ctx.strides, *scalars, **ctx.meta)
    triton_launches[f"{name}_backward"] += 1
    return [grad_for(g, ctx.full, shape) for g, shape in zip(grads, ctx.shapes, strict=True)]


@triton.jit
def store_row_partial(ptr, row, terms, NEGATE: tl.constexpr):
    """Store this program's (chunk's) sum of ``terms`` at ``ptr[row, chunk]``, negated for inverse directions."""
    total = tl.sum(terms, axis=0)
    if NEGATE:
        total = -total
    tl.store(ptr + row * tl.num_programs(1) + tl.program_id(1), total)
