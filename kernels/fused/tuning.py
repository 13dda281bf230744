"""Program shapes of the fused kernels, and the tuner that picks the fastest on a GPU.

A forward program covers ``rows`` rows × ``block`` columns, works through it in pieces of ``partial_width(n)``
columns (512 on a GPU, whatever the block) and writes one **partial sum per piece**, always with 4 warps: every
candidate adds the same entries in the same order with the same layout (bf16 and mixed operands too), so the row
sums (the log-densities) are bit-identical whichever candidate the timing race picks. The
backward sums a broadcast operand's gradient entry by entry over a program's rows (no in-block reduction), with
rows per program fixed by the row count, so its chunk width and warps can be tuned freely. Each shape class is
timed once per process and cached; the interpreter takes one wide chunk.
"""

import math
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from ..dispatch import interpreting

#: widest chunk, most rows and widest partial one program takes under the interpreter (~2 ms per program and a
#: Python step per operation of each piece: few, wide programs of one piece)
INTERPRETER = {"block": 8192, "rows": 64, "partial": 8192}
#: columns per partial row sum on every device: fixes the order of every row sum's additions
PARTIAL = {"width": 512}
#: candidates on a GPU: chunk widths; the backward's warps (the forward's are fixed: they shape its reduction)
GPU_BLOCKS = (512, 1024, 2048)
GPU_WARPS = (4, 8)
FORWARD_WARPS = 4
TUNE_REPEATS = 5


@dataclass(frozen=True)
class Config:
    block: int
    rows: int
    warps: int = 4


def _pow2(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(n, 1))))


def partial_width(n: int) -> int:
    """Columns per partial row sum: depends on the row length and the device kind alone, never on the chosen
    configuration (the interpreter, where one piece costs a Python step per operation, takes one wide piece)."""
    widest = INTERPRETER["partial"] if interpreting() else PARTIAL["width"]
    return min(widest, max(16, _pow2(n)))


def candidates(direction: str, rows: int, n: int, reduces: bool) -> list[Config]:
    """Configurations worth timing. Forward: chunks of whole partials, one row per program, fixed warps. Backward:
    rows per program 1 (many programs) unless a gradient is summed over the rows, where 16 rows per program keep
    the partial sums at 1/16 of a full gradient."""
    width = partial_width(n)
    if interpreting():
        block = max(width, min(INTERPRETER["block"], _pow2(n)))
        return [Config(block, max(1, min(rows, INTERPRETER["rows"])), FORWARD_WARPS)]
    blocks = [b for b in GPU_BLOCKS if b <= max(GPU_BLOCKS[0], _pow2(n))]
    if direction == "forward":
        return [Config(max(b, width), 1, FORWARD_WARPS) for b in blocks]
    per_program = min(16, _pow2(rows)) if reduces else 1
    return [Config(b, per_program, w) for b in blocks for w in GPU_WARPS]


def tuning_key(op_name: str, direction: str, meta: dict, dtype: torch.dtype, rows: int, n: int, reduces: bool) -> tuple:
    """What the best configuration depends on: the kernel and its compile-time flags, the dtype, the row length
    and, where a gradient is summed over rows (the candidates depend on it), the number of rows."""
    flags = tuple(sorted((k, v) for k, v in meta.items() if k not in ("MATH", "ACC")))
    return op_name, direction, flags, dtype, _pow2(n), _pow2(rows) if reduces else 0


_tuned: dict[tuple, Config] = {}


def _time_ms(launch: Callable[[], None]) -> float:
    """Mean milliseconds of a launch on the current device (the caller makes it the operands')."""
    launch()  # compiles
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(TUNE_REPEATS):
        launch()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / TUNE_REPEATS


def choose(key: tuple, options: list[Config], run: Callable[[Config], object], timer=_time_ms) -> Config:
    """The fastest of ``options`` for ``key`` (timed once, then cached); a single option is taken as it is."""
    if len(options) == 1:
        return options[0]
    if key not in _tuned:
        _tuned[key] = min(options, key=lambda cfg: timer(lambda: run(cfg)))
    return _tuned[key]


def tuned_configs() -> dict[tuple, Config]:
    """What tuning chose so far (for the benchmark's report)."""
    return dict(_tuned)


def tuned_run(key: tuple, options: list[Config], run: Callable[[Config], object], device: torch.device):
    """Choose (timing on the operands' device: Triton launches on the current one, so ``cuda:1`` works) and run."""
    with torch.cuda.device(device) if device.type == "cuda" else nullcontext():
        return run(choose(key, options, run))
