"""``aef-hpc bench kernels --host``: the microseconds a fused op's driver spends on the host per call, without a GPU.

On a GPU at batch 256 the fused ops are bound by host time, not memory (docs/benchmarks.md): the Python path of
the driver (``kernels/fused/rowwise.py``: shape checks, operand views, tuning, byte counts, autograd) runs before
each launch. This measures that path on the CPU, under Triton's interpreter with the two programs replaced by
launches that do nothing (a stand-in, said so: there is no GPU to launch on here, and the interpreter's own run
would swamp the host path). ``eager`` is the op's reference at 2 rows, where it moves almost no data: its
per-call cost on the same host. Triton's own launch (argument binding, the driver call) is not in either number,
nor the backward's choice among tuning candidates (the interpreter has one; a GPU makes and looks up its key).

Per case and mode (``forward``, ``full`` = forward + backward; each run starts with the leaves' ``.grad`` None):
the best of ``ROUNDS`` means of ``calls`` runs, in microseconds (the best, because the host is shared).
"""

import contextlib
import time
from collections.abc import Callable

import torch

from aef_hpc.errors import ConfigError
from aef_hpc.kernels.dispatch import interpreting

from .kernel_cases import CASES, Runner, make_inputs, provider_fn

MODES = ("forward", "full")
ROUNDS = 7
BATCH, N = 256, 784
EAGER_ROWS = 2


class _NoLaunch:
    """Stands in for a ``@triton.jit`` program: ``program[grid](...)`` returns at once."""

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


@contextlib.contextmanager
def launches_skipped():
    """The driver's forward and backward programs replaced by ``_NoLaunch`` (restored after)."""
    from aef_hpc.kernels.fused import rowwise

    programs = rowwise.forward_program, rowwise.backward_program
    rowwise.forward_program = rowwise.backward_program = _NoLaunch()
    try:
        yield
    finally:
        rowwise.forward_program, rowwise.backward_program = programs


def best_microseconds(run: Callable[[], object], reset: Callable[[], None], calls: int) -> float:
    """The lowest of ``ROUNDS`` means of ``calls`` runs (after ``calls`` untimed ones), in microseconds."""
    for _ in range(calls):
        reset()
        run()
    means = []
    for _ in range(ROUNDS):
        begin = time.perf_counter()
        for _ in range(calls):
            reset()
            run()
        means.append((time.perf_counter() - begin) / calls * 1e6)
    return min(means)


def host_table(calls: int = 500) -> list[dict]:
    """Host microseconds per call of every case and mode: the Triton driver (launches skipped) and eager."""
    if not interpreting():
        raise ConfigError("the host-time table runs Triton's interpreter on the CPU: set TRITON_INTERPRET=1 first")
    rows = []
    cpu = torch.device("cpu")
    with launches_skipped():
        for case in CASES:
            fused = Runner(provider_fn(case, "triton"), *make_inputs(case, BATCH, N, cpu, torch.float32))
            eager = Runner(provider_fn(case, "eager"), *make_inputs(case, EAGER_ROWS, N, cpu, torch.float32))
            for mode in MODES:
                us = {name: best_microseconds(r.mode(mode), r.reset, calls) for name, r in (("t", fused), ("e", eager))}
                rows.append(
                    dict(
                        op=case.op,
                        case=case.case,
                        mode=mode,
                        triton_host_us=round(us["t"], 1),
                        eager_us=round(us["e"], 1),
                        ratio=round(us["t"] / us["e"], 2),
                    )
                )
    return rows


def markdown(rows: list[dict]) -> str:
    """``host_table``'s rows as a markdown table."""
    lines = [
        "| op | case | mode | Triton driver, host µs | eager at 2 rows, µs | driver ÷ eager |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['op']} | {r['case']} | {r['mode']} | {r['triton_host_us']} | {r['eager_us']} | {r['ratio']} |"
        )
    return "\n".join(lines)
