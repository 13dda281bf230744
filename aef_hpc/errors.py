"""The exception types of aef_hpc: every library error is an `AEFError`.

The CLI catches `AEFError`, prints its one-line message (what is wrong and how to fix it) and exits
non-zero; anything else is a bug and keeps its traceback.
"""

import errno
import re

__all__ = [
    "AEFWarning",
    "AEFError",
    "Interrupted",
    "OutOfMemory",
    "out_of_memory",
    "ConfigError",
    "DataError",
    "ModelError",
    "CheckpointError",
    "DistributedError",
]


class AEFError(Exception):
    """Base class of every error aef_hpc raises on purpose."""


class ConfigError(AEFError, ValueError):
    """A configuration key, value or combination that cannot work."""


class DataError(AEFError, ValueError):
    """Input data of the wrong shape, range or content."""


class ModelError(AEFError, ValueError):
    """An impossible model request (unknown name, shape the architecture cannot take, ...)."""


class CheckpointError(AEFError):
    """A checkpoint that is missing, incomplete or does not match the model."""


class DistributedError(AEFError):
    """Process discovery or collective communication failed."""


class Interrupted(AEFError):
    """Ctrl-C or SIGTERM: the work stopped; the message says what was kept and how to go on."""

    exit_code = 130


class OutOfMemory(AEFError):
    """A process ran out of memory (the host's, a memory limit's or a GPU's); the message says how much it asked
    for, the limit it ran under and what to change."""

    exit_code = 1


#: how torch, the C++ runtime and CUDA say that an allocation failed
_OUT_OF_MEMORY = ("can't allocate memory", "Cannot allocate memory", "std::bad_alloc", "out of memory")
_LIMITS = ("RLIMIT_DATA", "RLIMIT_AS", "RLIMIT_RSS")


def out_of_memory(exc: BaseException) -> OutOfMemory | None:
    """``exc`` as an ``OutOfMemory`` line when it is a failed allocation (``MemoryError``, torch's CPU or CUDA
    allocator, a memory map, ``ENOMEM`` from the system), else ``None``."""
    if isinstance(exc, OutOfMemory):
        return exc
    text = str(exc)
    said_so = isinstance(exc, RuntimeError) and any(t in text for t in _OUT_OF_MEMORY)
    if not (isinstance(exc, MemoryError) or said_so or isinstance(exc, OSError) and exc.errno == errno.ENOMEM):
        return None
    import resource

    said = (text.strip().splitlines() or [type(exc).__name__])[0]
    said = re.sub(r"^\[enforce fail at [^\]]*\]\s*(\S+ == \S+\.\s*)?", "", said)[:240]  # torch's C++ prefix
    limits = []
    for name in _LIMITS:
        soft = resource.getrlimit(getattr(resource, name))[0]
        if soft != resource.RLIM_INFINITY:
            limits.append(f"{name} {soft / 2**30:.2f} GiB")
    under = f" (this process's limit: {', '.join(limits)})" if limits else ""
    return OutOfMemory(
        f"out of memory: {said}{under}; give the job more memory, lower train.batch_size or eval.batch_size, or "
        "shard the model over more ranks (engine=deepspeed deepspeed.config=configs/deepspeed/zero3-lean.yaml)"
    )


class AEFWarning(UserWarning):
    """Something the user should know that stops nothing (a skipped shard, a dropped alpha channel, a low
    effective sample size); the CLI prints it as one plain line, ``aef-hpc: warning: ...``."""
