"""Two real torchrun ranks × two workers each, on gloo, streaming real shards."""

import json
import subprocess
import sys
from pathlib import Path

from shard_helpers import digits_shards, read_members

SCRIPT = Path(__file__).parent / "dist" / "stream_ranks.py"


def test_two_ranks_two_workers_exactly_once_and_equal_batches(tmp_path):
    manifest = digits_shards(tmp_path / "shards", samples_per_shard=150)
    out = tmp_path / "out"
    out.mkdir()
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(SCRIPT),
        str(tmp_path / "shards"),
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((out / f"rank-{r}.json").read_text()) for r in (0, 1)]
    for split, shards in manifest.splits.items():
        expected = sorted(
            name[: -len(".png")]
            for s in shards
            for name in read_members(tmp_path / "shards" / s.name)
            if name.endswith(".png")
        )
        seen = sorted(ranks[0]["keys"][split] + ranks[1]["keys"][split])
        assert seen == expected, f"{split}: every key exactly once across ranks and workers"
        assert ranks[0]["keys"][split] and ranks[1]["keys"][split]
    assert ranks[0]["train_batches"] == ranks[1]["train_batches"] == [manifest.count("train") // (2 * 32)] * 2
