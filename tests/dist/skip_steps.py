"""Bad steps on every engine: aef-center trained for a few steps with ``train.skip_threshold`` and a NaN planted
in one rank's loss at one step; per step whether it was taken, its objective, LR and gradient norm, and the final
parameters. Run under a launcher (2 ranks x 16 images) or in one process (1 x 32 images: the reference).

Usage: skip_steps.py OUT THRESHOLD NAN_STEP ENGINE [ENGINE ...]   (ENGINE: single | ddp | zero0 .. zero3)
Writes OUT/ENGINE.pt on rank 0: {"steps": [(stepped, loss, lr, norm)], "params": flat float64 parameters}.
"""

import math
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from aef_hpc.bench.scale import engine_overrides
from aef_hpc.config import load_config
from aef_hpc.data import open_data
from aef_hpc.engine.deepspeed import deepspeed_config, gathered, model_scope
from aef_hpc.process_group import discover, init_distributed, leave_distributed, mean_over_ranks
from aef_hpc.models.from_config import model_from_config
from aef_hpc.train.collective import initialize_collectively
from aef_hpc.train.loop import _build_engine, training_batches, training_inputs

STEPS = 6


def run(engine_name: str, threshold: float | None, nan_step: int, batch: int) -> dict:
    overrides = [] if engine_name == "single" else engine_overrides(engine_name)
    limit = [] if threshold is None else [f"train.skip_threshold={threshold}"]
    schedule = ["train.lr=3e-3", "train.lr_schedule=cosine", "train.warmup_steps=2", f"train.steps={STEPS + 2}"]
    cfg = load_config(None, ["model.name=aef-center", f"train.batch_size={batch}", *schedule, *limit, *overrides])
    ds_config = deepspeed_config(cfg) if cfg.engine == "deepspeed" else None
    device = torch.device("cpu")
    data = open_data(cfg.data)
    torch.manual_seed(0)
    with model_scope(ds_config):
        model = model_from_config(cfg.model, data.image_shape)
    batches = training_batches(data, cfg.train.batch_size, 0, 0)
    initialize_collectively(model, training_inputs(next(batches)[2], data.levels, 0, 0, 0.0, device))
    engine = _build_engine(cfg, model, ds_config)
    steps = []
    for step in range(1, STEPS + 1):
        epoch, _, images = next(batches)
        loss = engine.loss(training_inputs(images, data.levels, 0, epoch, 0.0, device)).mean()
        if step == nan_step and (not dist.is_initialized() or dist.get_rank() == 0):
            loss = loss * math.nan  # one rank's gradients only: every rank must still skip
        result = engine.backward_and_step(loss)
        steps.append((result.stepped, mean_over_ranks(result.loss).item(), result.lr, float(result.grad_norm)))
    net = engine.unwrap()
    with gathered(net):
        params = torch.cat([p.detach().reshape(-1).double() for p in net.parameters()])
    return {"steps": steps, "params": params}


def main(out: str, threshold: str, nan_step: str, *engines: str) -> None:
    one = len(engines) == 1 and engines[0] == "single"
    if not one:
        init_distributed(discover(), torch.device("cpu"), force=True)
    for name in engines:
        result = run(name, None if threshold == "none" else float(threshold), int(nan_step), 32 if one else 16)
        if one or dist.get_rank() == 0:
            torch.save(result, Path(out) / f"{name}.pt")
    if not one:
        leave_distributed()


if __name__ == "__main__":
    main(*sys.argv[1:])
