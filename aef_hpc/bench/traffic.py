"""Bytes each provider really moves for one run of a mode, and the table of them that ``docs/benchmarks.md`` shows.

- ``triton``: the difference of ``aef_hpc.kernels.triton_bytes`` around the run: what each launch, and the small
  reductions after it, read and write.
- ``eager``: counted by ``EagerBytes``, which assumes that every aten op reads its tensor inputs and writes its
  tensor outputs once (views and allocations move nothing; a broadcast operand counts its distinct elements).
- ``compile``: unknown (NaN): inductor's fused kernels run below the dispatcher, where nothing here can count.
"""

import contextlib
import math

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from aef_hpc.errors import ConfigError
from aef_hpc.kernels import triton_bytes
from aef_hpc.kernels.dispatch import interpreting

from .kernel_cases import CASES, MODES, Runner, make_inputs, minimum_bytes, provider_fn

_ALLOCATIONS = {
    torch.ops.aten.empty,
    torch.ops.aten.empty_like,
    torch.ops.aten.empty_strided,
    torch.ops.aten.new_empty,
    torch.ops.aten.new_empty_strided,
}


def distinct_bytes(t: torch.Tensor) -> int:
    """Bytes of the distinct elements a tensor addresses (a dimension of stride 0 repeats one element)."""
    return t.element_size() * math.prod(size for size, stride in zip(t.shape, t.stride(), strict=True) if stride)


class EagerBytes(TorchDispatchMode):
    """Sums the bytes of the tensor inputs and outputs of every aten op run inside it (``total``)."""

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not func.is_view and func.overloadpacket not in _ALLOCATIONS:
            tensors = [t for t in tree_leaves((args, kwargs, out)) if isinstance(t, torch.Tensor)]
            self.total += sum(distinct_bytes(t) for t in tensors)
        return out


def bytes_moved(provider: str, run) -> float:
    """Bytes that one call of ``run`` moves with ``provider`` (NaN for ``compile``: unknown)."""
    if provider == "triton":
        before = sum(triton_bytes.values())
        run()
        return sum(triton_bytes.values()) - before
    if provider == "eager":
        with EagerBytes() as counter:
            run()
        return counter.total
    return math.nan


@contextlib.contextmanager
def gpu_programs():
    """Make the interpreter's programs those of a GPU that sums a gradient over rows (16 rows × 1024 columns), so
    the partial sums the interpreter writes are the GPU's; restored after."""
    from aef_hpc.kernels.fused import tuning

    previous = dict(tuning.INTERPRETER)
    tuning.INTERPRETER.update(block=1024, rows=16)
    try:
        yield
    finally:
        tuning.INTERPRETER.update(previous)


def traffic_table(dtype: torch.dtype = torch.float32, batch: int = 256, n: int = 784) -> list[dict]:
    """Bytes per element of ``[batch, n]`` for every case and mode: Triton (its counter, under the interpreter
    with a GPU's program shape), eager (counted) and the minimum. Times nothing; runs on the CPU and needs
    ``TRITON_INTERPRET=1`` (set before Triton is imported)."""
    if not interpreting():
        raise ConfigError("the traffic table runs Triton's interpreter on the CPU: set TRITON_INTERPRET=1 first")
    rows = []
    with gpu_programs():
        for case in CASES:
            leaves, grads = make_inputs(case, batch, n, torch.device("cpu"), dtype)
            runners = {p: Runner(provider_fn(case, p), leaves, grads) for p in ("triton", "eager")}
            for mode in MODES:
                moved = {}
                for provider, runner in runners.items():
                    run = runner.mode(mode)
                    runner.reset()
                    moved[provider] = bytes_moved(provider, run) / (batch * n)
                rows.append(
                    dict(
                        op=case.op,
                        case=case.case,
                        mode=mode,
                        triton=round(moved["triton"], 2),
                        eager=round(moved["eager"], 2),
                        minimum=minimum_bytes(case, mode, dtype),
                    )
                )
    return rows


def markdown(rows: list[dict]) -> str:
    """``traffic_table``'s rows as a markdown table."""
    lines = ["| op | case | mode | Triton B/elem | eager B/elem | minimum B/elem |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['op']} | {r['case']} | {r['mode']} | {r['triton']} | {r['eager']} | {r['minimum']} |")
    return "\n".join(lines)
