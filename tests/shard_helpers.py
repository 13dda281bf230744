"""Helpers that write real tar shards on disk for the streaming tests."""

import io
import tarfile
from pathlib import Path

from aef_hpc.data import write_shards


def digits_shards(path: Path, encoding="png", samples_per_shard=300):
    return write_shards("digits", path, encoding=encoding, samples_per_shard=samples_per_shard, progress=False)


def write_tar(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def read_members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
