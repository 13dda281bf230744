"""Progress of long work (training, evaluation, benchmarks): a tqdm bar on a terminal, else one plain line on
stderr every ``every`` seconds and at the end (a log file), with the rate and the time left (floor 0).

``<desc> <unit> <done>/<total> [key=value ...] <rate> <unit>s/s eta H:MM:SS``. Values shown are refreshed only
when the caller has them anyway (the training loop reads them from the device only at logging steps).
"""

import sys
import time

from tqdm import tqdm


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """``total`` units of work, ``done`` of them already (a resumed run); ``enabled=False`` shows nothing."""

    def __init__(
        self, total: int, desc: str, unit: str = "step", done: int = 0, enabled: bool = True, every: float = 30.0
    ):
        self.total, self.desc, self.unit, self.every = total, desc, unit, every
        self.first = self.done = done
        self.enabled, self.tty = enabled, sys.stderr.isatty()
        self.start = self.last_line = time.monotonic()
        self.values: dict[str, str] = {}
        self.bar = None
        if enabled and self.tty:
            self.bar = tqdm(total=total, initial=done, desc=desc, unit=unit, dynamic_ncols=True, mininterval=0.5)

    def show(self, **values: str) -> None:
        self.values.update(values)
        if self.bar is not None:
            self.bar.set_postfix(self.values, refresh=False)

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.monotonic()
        if self.enabled and (now - self.last_line >= self.every or self.done >= self.total):
            self.last_line = now
            rate = (self.done - self.first) / max(now - self.start, 1e-9)
            eta = max(self.total - self.done, 0) / rate if rate > 0 else 0.0
            shown = "".join(f" {k}={v}" for k, v in self.values.items())
            print(
                f"{self.desc} {self.unit} {self.done}/{self.total}{shown} {rate:.2f} {self.unit}s/s "
                f"eta {_duration(eta)}",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def counted(batches, bar: Progress):
    """``(keys, images, ...)`` batches passed through, each counted (``len(keys)``) once the caller is done with it."""
    for batch in batches:
        yield batch
        bar.update(len(batch[0]))
