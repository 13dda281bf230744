"""``manifest.json``: what a shard directory holds (shards, counts, image format, checksums, split).

A dataset directory is valid only once its manifest exists: the writer renames every shard into place first and
writes the manifest last.
"""

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import DataError

FORMAT = "aef_hpc-shards/1"
SPLITS = ("train", "val", "test")


@dataclass
class ShardInfo:
    name: str
    count: int
    sha256: str
    bytes: int


@dataclass
class Manifest:
    image_shape: list[int]
    levels: int
    encoding: str
    splits: dict[str, list[ShardInfo]]
    source: str = ""
    seed: int = 0
    shuffled: bool = False
    """each split written in a random order (seeded by ``seed``); False: the source's order"""
    dtype: str = "uint8"
    format: str = FORMAT
    extra: dict = field(default_factory=dict)

    @property
    def bit_depth(self) -> int:
        return max(1, math.ceil(math.log2(self.levels)))

    def count(self, split: str) -> int:
        return sum(s.count for s in self.shards(split))

    def shards(self, split: str) -> list[ShardInfo]:
        if split not in self.splits or not self.splits[split]:
            raise DataError(
                f"the dataset has no {split!r} split (it has: {', '.join(k for k, v in self.splits.items() if v)})"
            )
        return self.splits[split]

    def to_json(self) -> str:
        out = asdict(self)
        out["bit_depth"] = self.bit_depth
        out["counts"] = {k: sum(s.count for s in v) for k, v in self.splits.items()}
        return json.dumps(out, indent=2)

    @classmethod
    def load(cls, path: str | Path) -> "Manifest":
        path = Path(path)
        if not path.is_file():
            raise DataError(
                f"no manifest at {path}: point data.path at a folder written by `aef-hpc shards` "
                "(or give data.manifest for remote shards)"
            )
        try:
            raw = json.loads(path.read_text())
            if raw.get("format") != FORMAT:
                raise DataError(f"{path} has format {raw.get('format')!r}, expected {FORMAT!r}")
            splits = {k: [ShardInfo(**s) for s in v] for k, v in raw["splits"].items()}
            bad = [s.name for v in splits.values() for s in v if not isinstance(s.count, int) or s.count < 0]
            if bad or not isinstance(raw["levels"], int) or raw["levels"] < 2:
                raise ValueError(f"levels must be an int of at least 2 and counts ints of at least 0 ({bad[:1]})")
            return cls(
                image_shape=[int(v) for v in raw["image_shape"]],
                levels=int(raw["levels"]),
                encoding=raw["encoding"],
                splits=splits,
                source=raw.get("source", ""),
                seed=int(raw.get("seed", 0)),
                shuffled=bool(raw.get("shuffled", False)),
                dtype=raw.get("dtype", "uint8"),
                extra=raw.get("extra", {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, DataError):
                raise
            raise DataError(
                f"{path} is not a valid manifest ({type(exc).__name__}: {exc}): rewrite it with `aef-hpc shards`"
            ) from exc
