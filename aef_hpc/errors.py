"""The exception types of aef_hpc: every library error is an `AEFError`.

The CLI catches `AEFError`, prints its one-line message (what is wrong and how to fix it) and exits
non-zero; anything else is a bug and keeps its traceback.
"""

__all__ = [
    "AEFWarning",
    "AEFError",
    "Interrupted",
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


class AEFWarning(UserWarning):
    """Something the user should know that stops nothing (a skipped shard, a dropped alpha channel, a low
    effective sample size); the CLI prints it as one plain line, ``aef-hpc: warning: ...``."""
