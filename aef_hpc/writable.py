"""Where a command will write, checked before it does any work (floor 0): one clear line, not a traceback after
a whole benchmark or export has run."""

import os
from pathlib import Path

from .errors import ConfigError


def check_writable_folder(path: str | Path, what: str) -> Path:
    """``path`` is a folder, or can be created as one, and can be written into; ``what`` names the option."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{what} {path} is a file, not a folder: choose a folder")
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"{what} {path}: {existing} is a file, so no folder can be made there: choose another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {path}: {existing} is not writable: choose a folder you can write to")
    return path


def check_writable_file(path: str | Path, what: str) -> Path:
    """``path`` is a file (or does not exist yet) in a folder that can be written into."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{what} {path} is a folder: give a file name (e.g. {path / 'results.csv'})")
    check_writable_folder(path.parent, what)
    return path


def give_usual_mode(path: str | Path) -> None:
    """The mode a plain ``open(path, "w")`` would give (``0o666`` less the umask), for files a library writes
    privately (safetensors writes ``0o600``), so an export reads like every other file of a run."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)
