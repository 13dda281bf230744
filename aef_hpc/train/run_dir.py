"""The run folder ``out_dir/name/``: created fresh (a suffix is added rather than overwrite an old run)."""

import os
from pathlib import Path

import torch


def fresh_run_dir(out_dir: str, name: str) -> Path:
    """``out_dir/name``, or ``out_dir/name-2``, ``-3``, ... if that exists and is not empty."""
    base = Path(out_dir)
    candidate, n = base / name, 1
    while candidate.exists() and any(candidate.iterdir()):
        n += 1
        candidate = base / f"{name}-{n}"
    candidate.mkdir(parents=True, exist_ok=True)
    return candidate


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def atomic_save(obj, path: Path) -> None:
    """``torch.save`` to a temporary name, then rename: a reader never sees a partial file."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)
