"""Training progress: a tqdm bar on a terminal, else one plain line every ``every`` seconds (log files).

Values shown are refreshed only at logging steps, where the loop reads them from the device anyway.
"""

import sys
import time

from tqdm import tqdm


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    def __init__(self, first_step: int, last_step: int, desc: str, enabled: bool = True, every: float = 30.0):
        self.first, self.last, self.desc, self.every = first_step, last_step, desc, every
        self.enabled, self.tty = enabled, sys.stderr.isatty()
        self.start = self.last_line = time.monotonic()
        self.values: dict[str, str] = {}
        self.bar = None
        if enabled and self.tty:
            self.bar = tqdm(total=last_step, initial=first_step - 1, desc=desc, dynamic_ncols=True, mininterval=0.5)

    def show(self, **values: str) -> None:
        self.values.update(values)
        if self.bar is not None:
            self.bar.set_postfix(self.values, refresh=False)

    def step(self, step: int) -> None:
        if self.bar is not None:
            self.bar.update(1)
            return
        now = time.monotonic()
        if self.enabled and (now - self.last_line >= self.every or step == self.last):
            self.last_line = now
            done = step - self.first + 1
            rate = done / max(now - self.start, 1e-9)
            eta = (self.last - step) / rate if rate > 0 else 0.0
            shown = " ".join(f"{k}={v}" for k, v in self.values.items())
            print(
                f"{self.desc} step {step}/{self.last} {shown} {rate:.2f} steps/s eta {_duration(eta)}",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
