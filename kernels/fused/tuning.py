"""Program shapes of the fused kernels, and the tuner that picks the fastest on a GPU.

The forward is **not tuned**: its chunk width sets how a row's sum is split and, on a GPU, the layout (per dtype)
in which each piece is added, so any choice by timing would change the last bits of a log-density between a run
and its resume (measured on an H200: 0.016 nats with bf16 network outputs). It runs one 512-column chunk per
program (``partial_width``), with 4 warps, always. The backward sums a broadcast operand's gradient entry by entry
over a program's rows (no in-block reduction), with rows per program fixed by the row count, so its chunk width and
warps are tuned freely: every candidate gives the same bits. Each shape class is timed once per process and
cached; the interpreter takes one wide chunk.
"""

import math
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from ..dispatch import interpreting

#: widest chunk and most rows one program takes under the interpreter (~2 ms per program: few, wide programs)
INTERPRETER = {"block": 8192, "rows": 64}
#: columns of a forward program (one partial row sum each) on a GPU
PARTIAL = {"width": 512}
#: the backward's candidates on a GPU: chunk widths and warps; the forward's warps
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
    """Columns of a forward program, hence of each partial row sum: the row length and the device kind decide it,
    never a timing."""
    widest = INTERPRETER["block"] if interpreting() else PARTIAL["width"]
    return min(widest, max(16, _pow2(n)))


def candidates(direction: str, rows: int, n: int, reduces: bool) -> list[Config]:
    """Configurations worth timing. Forward: one (``partial_width``), never timed. Backward: rows per program 1
    (many programs) unless a gradient is summed over the rows, where 16 rows per program keep the partial sums at
    1/16 of a full gradient."""
    if direction == "forward":  # rows per program change no sum: many on the interpreter (its cost is per program)
        per_program = max(1, min(rows, INTERPRETER["rows"])) if interpreting() else 1
        return [Config(partial_width(n), per_program, FORWARD_WARPS)]
    if interpreting():
        return [Config(max(16, min(INTERPRETER["block"], _pow2(n))), max(1, min(rows, INTERPRETER["rows"])))]
    blocks = [b for b in GPU_BLOCKS if b <= max(GPU_BLOCKS[0], _pow2(n))]
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


def tuned_run(key: Callable[[], tuple], options: list[Config], run: Callable[[Config], object], device: torch.device):
    """Choose (timing on the operands' device: Triton launches on the current one, so ``cuda:1`` works) and run;
    ``key()`` (``tuning_key``) is made only where there is a choice (the forward has none)."""
    with torch.cuda.device(device) if device.type == "cuda" else nullcontext():
        return run(choose(key() if len(options) > 1 else (), options, run))
