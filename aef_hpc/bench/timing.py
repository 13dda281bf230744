"""Per-run times, their quantiles, the device's copy bandwidth and peak memory, for ``bench kernels``."""

import time
from collections.abc import Callable

import numpy as np
import torch

QUANTILES = (0.2, 0.5, 0.8)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _nothing() -> None:
    pass


def time_runs(
    run: Callable[[], object], device: torch.device, warmup: int, repeats: int, reset: Callable[[], None] = _nothing
) -> list[float]:
    """Milliseconds of each of ``repeats`` runs after ``warmup`` untimed ones; ``reset`` runs, untimed, before
    every run. CUDA events time a run on a GPU, ``time.perf_counter`` on the CPU."""
    for _ in range(warmup):
        reset()
        run()
    samples = []
    for _ in range(repeats):
        reset()
        sync(device)
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end))
        else:
            begin = time.perf_counter()
            run()
            samples.append(1e3 * (time.perf_counter() - begin))
    return samples


def quantiles(samples: list[float]) -> tuple[float, float, float]:
    """The 20, 50 and 80 % quantiles (linear interpolation) of ``samples``."""
    return tuple(float(q) for q in np.quantile(samples, QUANTILES))


def copy_bandwidth_gbps(device: torch.device, megabytes: int, warmup: int, repeats: int) -> float:
    """GB/s of ``dst.copy_(src)`` over ``megabytes`` of float32 (read once, written once), median run."""
    src = torch.empty(megabytes * 2**20 // 4, device=device, dtype=torch.float32).uniform_()
    dst = torch.empty_like(src)
    ms = quantiles(time_runs(lambda: dst.copy_(src), device, warmup, repeats))[1]
    return 2 * src.numel() * 4 / (ms * 1e-3) / 1e9


def peak_mb(run: Callable[[], object], device: torch.device, reset: Callable[[], None] = _nothing) -> float:
    """CUDA memory one run allocates at its peak beyond what was allocated before it (NaN off CUDA)."""
    if device.type != "cuda":
        return float("nan")
    reset()
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    run()
    sync(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def saved_mb(forward: Callable[[], tuple], device: torch.device) -> float:
    """CUDA memory a forward keeps alive for its backward (the autograd graph) beyond its outputs (NaN off CUDA)."""
    if device.type != "cuda":
        return float("nan")
    sync(device)
    base = torch.cuda.memory_allocated(device)
    out = forward()
    sync(device)
    kept = torch.cuda.memory_allocated(device) - base - sum(t.numel() * t.element_size() for t in out)
    del out
    return kept / 2**20
