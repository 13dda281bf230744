"""Crafted DeepSpeed checkpoints on 2 ranks: for each ZeRO stage, train 2 steps, save, plant a pickle payload
(``os.mkdir(MARKER)`` on unpickling) in every file DeepSpeed wrote, then resume from it through the engine. The
load must be refused (one ``CheckpointError``) and the payload never run.

Usage: payload_ranks.py OUT STAGE [STAGE ...]   (STAGE: zero0 .. zero3)
Writes OUT/STAGE/outcome-rank-R.json: the error each rank got; the folders stay for one-process checks.
"""

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from aef_hpc.bench.scale import engine_overrides
from aef_hpc.config import load_config
from aef_hpc.data import open_data
from aef_hpc.engine.deepspeed import deepspeed_config, model_scope
from aef_hpc.process_group import discover, init_distributed, leave_distributed
from aef_hpc.errors import CheckpointError
from aef_hpc.models.from_config import model_from_config
from aef_hpc.train.collective import initialize_collectively
from aef_hpc.train.loop import _build_engine, training_batches, training_inputs


class Payload:
    """Unpickling this runs ``os.mkdir(marker)``."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def plant(folder: Path, marker: str) -> int:
    """Replace every ``.pt`` file under ``folder`` by a pickle that carries the payload; returns how many."""
    files = sorted(folder.rglob("*.pt"))
    for file in files:
        torch.save({"module": Payload(marker)}, file)
    return len(files)


def engine_for(stage: str):
    cfg = load_config(None, ["model.name=aef-center", "train.batch_size=16", *engine_overrides(stage)])
    ds_config = deepspeed_config(cfg)
    data = open_data(cfg.data)
    torch.manual_seed(0)
    with model_scope(ds_config):
        model = model_from_config(cfg.model, data.image_shape)
    batches = training_batches(data, 16, 0, 0)
    device = torch.device("cpu")
    initialize_collectively(model, training_inputs(next(batches)[2], data.levels, 0, 0, 0.0, device))
    engine = _build_engine(cfg, model, ds_config)
    for _ in range(2):
        epoch, _, images = next(batches)
        engine.backward_and_step(engine.loss(training_inputs(images, data.levels, 0, epoch, 0.0, device)).mean())
    return engine


def main(out: str, *stages: str) -> None:
    init_distributed(discover(), torch.device("cpu"), force=True)
    rank = dist.get_rank()
    for stage in stages:
        folder = Path(out) / stage
        folder.mkdir(parents=True, exist_ok=True)
        engine = engine_for(stage)
        engine.save(folder)
        dist.barrier()
        if rank == 0:
            assert plant(folder, str(Path(out) / "payload-ran")) > 0
        dist.barrier()
        try:
            engine.load(folder)
            outcome = "loaded"
        except CheckpointError as exc:
            outcome = str(exc)
        (folder / f"outcome-rank-{rank}.json").write_text(json.dumps(outcome))
        dist.barrier()
    leave_distributed()


if __name__ == "__main__":
    main(*sys.argv[1:])
