"""``torchrun``, quiet about a failed rank: ``python -m aef_hpc.torchrun [torchrun's arguments]``.

torchrun answers a rank that exits non-zero with its elastic agent's ``ChildFailedError`` traceback (~40 lines)
under the rank's own one-line message; the launchers use this instead, which exits with the failed rank's status
and adds nothing to what the rank said (but one line for a rank killed by a signal).
"""

import logging
import signal
import sys

from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import parse_args, run


def main(argv: list[str] | None = None) -> int:
    logging.disable(logging.ERROR)  # the agent's banners and its report of the failure the rank itself printed
    try:
        run(parse_args(sys.argv[1:] if argv is None else argv))
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()  # the others were stopped by torchrun because of it
        if failure.exitcode < 0:  # killed: the rank could say nothing itself
            number = -failure.exitcode
            name = signal.Signals(number).name if number in signal.valid_signals() else f"signal {number}"
            print(f"aef-hpc: rank {rank} was killed by {name} (out of memory? preempted?)", file=sys.stderr)
            return 128 - failure.exitcode
        return failure.exitcode
    except SignalException as exc:  # SLURM's stop (a requeue, a time limit): the ranks were stopped too
        return 128 + int(exc.sigval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
