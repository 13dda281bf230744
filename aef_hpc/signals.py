"""Signals (floor 0). SIGTERM is handled like Ctrl-C: a scheduler's kill or a preemption unwinds through the same
``finally`` and ``except KeyboardInterrupt`` blocks, so temporary files are removed and the message says what was
kept. SIGUSR1 asks for a checkpoint at the next step boundary (and, under SLURM, a requeue)."""

import contextlib
import os
import signal
import threading
from pathlib import Path


@contextlib.contextmanager
def sigterm_as_interrupt():
    """While active (in the main thread), SIGTERM raises ``KeyboardInterrupt`` where the program is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


#: a file whose appearance asks for the same as SIGUSR1 (set by launchers/slurm.sbatch, whose batch shell gets
#: SLURM's warning signal while torchrun sits between it and the training processes)
STOP_FILE_VARIABLE = "AEF_HPC_STOP_FILE"


class CheckpointRequest:
    """SIGUSR1 (SLURM's ``--signal=B:USR1@90`` warning before a time limit or preemption), or the file named by
    ``$AEF_HPC_STOP_FILE`` appearing: ``pending()`` turns true; the loop checkpoints at the next step boundary."""

    def __init__(self):
        self._signalled = False
        self._previous = None
        path = os.environ.get(STOP_FILE_VARIABLE)
        self.file = Path(path) if path else None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGUSR1, self._handle)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGUSR1, self._previous)

    def _handle(self, signum, frame):
        self._signalled = True

    def pending(self) -> bool:
        return self._signalled or (self.file is not None and self.file.exists())
