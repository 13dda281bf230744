"""Run under a launcher (gloo): build aef-center the way training does (ZeRO-3: under zero.Init), initialise
ActNorm collectively, wrap it in an engine, take 3 steps, then check what every rank holds.

Usage: engine_ranks.py ENGINE OUT   (ENGINE: ddp | zero0 | zero1 | zero2 | zero3)
Writes OUT/result.json on rank 0: whether all parameters and all ActNorm parameters are identical on every rank,
the ActNorm parameters right after the collective initialisation (to compare with one process's) and the largest
share of the parameters it held whole at once, the share of parameters each rank holds, under ZeRO-3 a checkpoint
(OUT/ckpt), 6 samples drawn with gathered parameters (OUT/samples.pt) and the validation NLL computed through the
engine (to compare with the export), and whether the model is freed once the engine is closed.
"""

import gc
import json
import sys
import weakref
from pathlib import Path

import torch
import torch.distributed as dist

from aef_hpc.bench.scale import engine_overrides
from aef_hpc.config import load_config
from aef_hpc.data import open_data
from aef_hpc.engine.deepspeed import deepspeed_config, gathered, model_scope
from aef_hpc.evaluate.likelihood import mean_loss
from aef_hpc.flows.actnorm import ActNorm
from aef_hpc.models.from_config import model_from_config
from aef_hpc.process_group import discover, init_distributed, leave_distributed
from aef_hpc.train.collective import initialize_collectively
from aef_hpc.train.loop import _build_engine, training_batches, training_inputs


def _flat(module: torch.nn.Module, only=None) -> torch.Tensor:
    params = [p for m in module.modules() if only is None or isinstance(m, only) for p in m.parameters(False)]
    return torch.cat([p.detach().reshape(-1).float() for p in params])


def _same_on_every_rank(vector: torch.Tensor) -> bool:
    parts = [torch.empty_like(vector) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, vector)
    return all(torch.equal(parts[0], p) for p in parts[1:])


def main(engine_name: str, out: str) -> None:
    out = Path(out)
    cfg = load_config(None, ["model.name=aef-center", "train.batch_size=16", *engine_overrides(engine_name)])
    ds_config = deepspeed_config(cfg) if cfg.engine == "deepspeed" else None
    if engine_name == "zero3":  # many optimizer sub-groups: the checkpoint's flat partitions come in pieces
        ds_config["zero_optimization"]["sub_group_size"] = 5000
    device = init_distributed(discover(), torch.device("cpu"), force=True)
    data = open_data(cfg.data)
    torch.manual_seed(0)
    with model_scope(ds_config):
        model = model_from_config(cfg.model, data.image_shape)
    batches = training_batches(data, cfg.train.batch_size, 0, 0)
    first = training_inputs(next(batches)[2], data.levels, 0, 0, 0.0, device)
    gathered_at_once = initialize_collectively(model, first)
    with gathered(model):
        initialised = _flat(model, ActNorm).tolist()
    engine = _build_engine(cfg, model, ds_config)
    for _ in range(3):
        epoch, _, batch = next(batches)
        engine.backward_and_step(engine.loss(training_inputs(batch, data.levels, 0, epoch, 0.0, device)).mean())
    net = engine.unwrap()
    held = sum(p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel() for p in net.parameters())
    total = sum(getattr(p, "ds_numel", p.numel()) for p in net.parameters())
    with gathered(net):
        result = {
            "rank_share": held / total,
            "parameters_equal": _same_on_every_rank(_flat(net)),
            "actnorm_equal": _same_on_every_rank(_flat(net, ActNorm)),
            "actnorm_initialized": all(bool(m.initialized) for m in net.modules() if isinstance(m, ActNorm)),
            "actnorm_after_init": initialised,
            "init_peak_share": gathered_at_once.peak / gathered_at_once.total,
        }
    if engine_name == "zero3":
        out.mkdir(exist_ok=True)
        (out / "ckpt").mkdir(exist_ok=True)
        engine.save(out / "ckpt")
        net.eval()
        with gathered(net):
            samples = net.sample(6, generator=torch.Generator().manual_seed(5))
        result["val"] = mean_loss(engine.eval_loss, data.eval_batches("val", 64), data.levels, 0, device)
        if dist.get_rank() == 0:
            torch.save(samples, out / "samples.pt")
    freed = weakref.ref(net)  # closed, the engine lets the model and its training state go
    engine.close()
    del engine, net, model
    gc.collect()
    result["model_freed"] = freed() is None
    shares = [None] * dist.get_world_size()
    dist.all_gather_object(shares, result["rank_share"])
    result["rank_shares"] = shares
    if dist.get_rank() == 0:
        (out / "result.json").write_text(json.dumps(result))
    dist.barrier()
    leave_distributed()


if __name__ == "__main__":
    main(*sys.argv[1:])
