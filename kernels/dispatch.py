"""Which implementation an op runs: ``auto`` (Triton for CUDA tensors, eager elsewhere), ``triton`` or ``eager``.

``triton`` on CPU tensors runs Triton's interpreter, which needs ``TRITON_INTERPRET=1`` in the environment
before ``triton`` is first imported (it is slow: tests only). ``triton_launches`` counts Triton launches per op
and ``triton_bytes`` the bytes they (and the small reductions after them) read and write, so tests can prove
which path ran and the benchmark can report what each launch really moves. Nothing here imports Triton.
"""

import collections
import contextlib
import os

import torch

from aef_hpc.errors import ConfigError

MODES = ("auto", "triton", "eager")
_state = {"mode": "auto"}
triton_launches: collections.Counter = collections.Counter()
triton_bytes: collections.Counter = collections.Counter()


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
    if mode == "auto" and device.type != "cuda":
        return
    if mode != "eager" and not _triton_installed():
        raise ConfigError(f"kernels={mode} needs Triton, which is not installed: pip install 'triton>=3.8'")
    if mode == "triton" and device.type != "cuda" and not interpreting():
        raise ConfigError(
            "kernels=triton on CPU tensors needs Triton's interpreter: set TRITON_INTERPRET=1 before starting "
            "(slow, for tests), or use kernels=auto"
        )


def _triton_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("triton") is not None


def wants_triton(*tensors: torch.Tensor) -> bool:
    """Whether the Triton path runs for these operands (``None`` entries are ignored); empty or integer ones run
    the reference."""
    mode = _state["mode"]
    present = [t for t in tensors if t is not None]
    if mode == "eager" or any(t.numel() == 0 or not t.is_floating_point() for t in present):
        return False
    on_cuda = all(t.is_cuda for t in present)
    if mode == "auto":
        return on_cuda
    if not on_cuda:
        check_available(mode, torch.device("cpu"))
    return True
