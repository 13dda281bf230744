"""Run under torchrun (gloo): each rank streams every split in evaluation mode and a training epoch, with
2 workers, and writes what it saw to OUT/rank-R.json. A collective per training batch would hang if one rank
had fewer batches than another."""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from aef_hpc.data import ShardSource


def main(path: str, out: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    source = ShardSource(path, num_workers=2, shuffle_buffer=50)
    keys = {split: [k for ks, _ in source.eval_batches(split, 32) for k in ks] for split in ("train", "val", "test")}
    batches = []
    for epoch in range(2):
        n = 0
        for batch in source.train_epoch(epoch, 32):
            dist.all_reduce(torch.ones(1))
            n += 1
        batches.append(n)
    Path(out, f"rank-{rank}.json").write_text(json.dumps({"keys": keys, "train_batches": batches}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
