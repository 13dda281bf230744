"""SIGTERM handled like Ctrl-C (floor 0): a scheduler's kill or a preemption unwinds through the same ``finally``
and ``except KeyboardInterrupt`` blocks, so temporary files are removed and the message says what was kept."""

import contextlib
import signal
import threading


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
