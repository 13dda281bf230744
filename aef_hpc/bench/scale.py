"""``aef-hpc bench scale``: what each rank holds (parameters, gradients, optimizer state) and the step time under
DDP and ZeRO 0/1/2/3, at 1, 2 and 4 ranks (more ranks than cores: oversubscribed), for a big model.

Each (engine, ranks) case is a fresh ``torchrun --standalone`` job running this module's worker, on gloo (NCCL on
GPUs), built the way training builds (ZeRO-3: under ``zero.Init``). The model is aef-linear with big (VDVAE-like)
nets on 3×64×64, latent 64, MAF flows (the ``big`` case of ``bench train``); batch 4 per rank of random images.

Memory is counted from tensors, per rank, after the backward of a step (before its optimizer step): the unique
storages behind the local parameters (ZeRO-3: the rank's partition), behind the gradients (``.grad`` and
DeepSpeed's partitioned gradient buffers), and behind the optimizer (Adam's moments and ZeRO's float32 master
partitions). DDP's own gradient buckets are not visible from Python and are not counted. ``expected_*`` are the
ZeRO paper's per-rank bytes (Rajbhandari et al. 2020, Fig. 1) for float32 Adam over Ψ parameters and N ranks:
parameters 4Ψ (ZeRO-3: 4Ψ/N), gradients 4Ψ (ZeRO-2/3: 4Ψ/N), optimizer 8Ψ (ZeRO-1/2/3: 8Ψ/N); DeepSpeed also
keeps a float32 master partition (4Ψ/N) under ZeRO 1-3, which the paper's mixed-precision count folds into K.
Step time: ``warmup`` untimed steps, then the median of ``repeats`` steps (forward, backward, step), timed on
rank 0 after a barrier.
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from ..progress import Progress
from .report import write_csv

ENGINES = ("ddp", "zero0", "zero1", "zero2", "zero3")
RANKS = (1, 2, 4)
MODEL = ["model.name=aef-linear", "model.architecture=big", "model.latent_dim=64", "model.prior_flow=maf",
         "model.posterior_flow=maf", "model.alpha=0.05", "model.image_shape=[3,64,64]"]  # fmt: skip
BATCH = 4
_RESULT = "AEF_BENCH_SCALE_RESULT "


def engine_overrides(name: str) -> list[str]:
    """The config keys of an engine case: ``ddp`` or ``zero0``..``zero3`` (the DeepSpeed presets)."""
    if name == "ddp":
        return ["engine=ddp"]
    return ["engine=deepspeed", f"deepspeed.config=configs/deepspeed/{name}.yaml"]


def _storage_bytes(tensors) -> int:
    """Bytes of the distinct storages behind ``tensors`` (views of one flat buffer count once)."""
    seen = {}
    for t in tensors:
        if torch.is_tensor(t) and t.numel():
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def _held(engine, model) -> dict[str, int]:
    params = [getattr(p, "ds_tensor", p) for p in model.parameters()]
    optimizer = engine.optimizer
    inner = getattr(optimizer, "optimizer", optimizer)
    states = [v for state in inner.state.values() for v in state.values() if torch.is_tensor(v)]
    masters = []
    for name in ("single_partition_of_fp32_groups", "fp32_partitioned_groups_flat"):
        masters += list(getattr(optimizer, name, None) or [])
    grads = [p.grad for p in model.parameters()]
    for name in ("averaged_gradients",):
        found = getattr(optimizer, name, None) or {}
        grads += [t for group in found.values() for t in (group or [])] if isinstance(found, dict) else []
    for name in ("grads_in_partition", "grad_partitions_flat_buffer"):
        grads.append(getattr(optimizer, name, None))
    return {
        "params_mb": _storage_bytes(params) / 2**20,
        "grads_mb": _storage_bytes(grads) / 2**20,
        "optimizer_mb": _storage_bytes(states + masters) / 2**20,
    }


def _expected(engine: str, numel: int, ranks: int) -> dict[str, float]:
    stage = -1 if engine == "ddp" else int(engine[-1])
    mb = numel / 2**20
    return {
        "expected_params_mb": 4 * mb / (ranks if stage >= 3 else 1),
        "expected_grads_mb": 4 * mb / (ranks if stage >= 2 else 1),
        "expected_optimizer_mb": 8 * mb / (ranks if stage >= 1 else 1),
    }


def worker(engine_name: str, warmup: int, repeats: int) -> None:
    """One rank of one case (run by torchrun): prints its result line."""
    import torch.distributed as dist

    from ..config import load_config
    from ..engine.deepspeed import deepspeed_config, model_scope
    from ..models.from_config import model_from_config
    from ..process_group import discover, init_distributed, leave_distributed
    from ..train.collective import initialize_collectively
    from ..train.loop import _build_engine

    cfg = load_config(None, [*MODEL, f"train.batch_size={BATCH}", "train.lr=1e-4", *engine_overrides(engine_name)])
    ds_config = deepspeed_config(cfg) if cfg.engine == "deepspeed" else None
    device = init_distributed(discover(), torch.device("cuda" if torch.cuda.is_available() else "cpu"), force=True)
    torch.manual_seed(0)
    with model_scope(ds_config):
        model = model_from_config(cfg.model, cfg.model.image_shape).to(device)
    numel = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
    gen = torch.Generator().manual_seed(dist.get_rank())
    pixels = torch.randint(0, 256, (BATCH, 3, 64, 64), generator=gen)
    x = ((pixels + torch.rand(pixels.shape, generator=gen)) / 256).to(device)
    initialize_collectively(model, x)
    engine = _build_engine(cfg, model, ds_config)
    net = engine.unwrap()

    def step(measure: bool = False):
        loss = engine.loss(x).mean()
        if measure:  # the backward alone, then count, then the step: what a rank holds at its peak
            engine.engine.backward(loss) if ds_config else loss.backward()
            held = _held(engine, net)
            if ds_config:
                engine.engine.step()
            else:
                engine.optimizer.step()
                engine.optimizer.zero_grad(set_to_none=True)
            return held
        engine.backward_and_step(loss)

    for _ in range(warmup):
        step()
    held = step(measure=True)
    times = []
    for _ in range(repeats):
        dist.barrier()
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        dist.barrier()
        times.append(time.perf_counter() - start)
    rows = [None] * dist.get_world_size()
    dist.all_gather_object(rows, held)
    if dist.get_rank() == 0:
        result = {"numel": numel, "step_ms": 1000 * statistics.median(times), "ranks": rows}
        print(_RESULT + json.dumps(result), flush=True)
    dist.barrier()
    leave_distributed()


def run(out: str | Path, engines=ENGINES, ranks=RANKS, warmup: int = 2, repeats: int = 5) -> list[dict]:
    """Every (engine, ranks) case in its own torchrun job; one CSV row per rank. At least one warm-up step runs:
    Adam's moments exist only after a first step."""
    warmup = max(1, warmup)
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    rows = []
    bar = Progress(len(ranks) * len(engines), "bench scale", "case")
    for n in ranks:
        for engine in engines:
            command = [torchrun, "--standalone", "--nproc-per-node", str(n), "-m", "aef_hpc.bench.scale",
                       engine, str(warmup), str(repeats)]  # fmt: skip
            with tempfile.TemporaryDirectory() as scratch:
                proc = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).parents[2],
                                      env={**os.environ, "TMPDIR": scratch})  # fmt: skip
            lines = [line for line in proc.stdout.splitlines() if line.startswith(_RESULT)]
            if proc.returncode or not lines:
                tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                rows.append({"engine": engine, "world": n, "rank": "", "error": tail[:300]})
                bar.update()
                continue
            result = json.loads(lines[0][len(_RESULT) :])
            expected = _expected(engine, result["numel"], n)
            for rank, held in enumerate(result["ranks"]):
                rows.append({
                    "engine": engine, "world": n, "rank": rank, "params_million": round(result["numel"] / 1e6, 3),
                    **{k: round(v, 2) for k, v in held.items()}, **{k: round(v, 2) for k, v in expected.items()},
                    "step_ms": round(result["step_ms"], 1), "error": "",
                })  # fmt: skip
            bar.update()
    bar.close()
    keys = list(next(r for r in rows if not r["error"]).keys()) if any(not r["error"] for r in rows) else ["error"]
    write_csv([{k: r.get(k, "") for k in keys} for r in rows], out)
    return rows


def table(rows: list[dict]) -> str:
    lines = [f"{'engine':7s} {'N':>2s} {'rank':>4s} {'params MB':>10s} {'grads MB':>10s} {'optim MB':>10s} "
             f"{'paper p/g/o MB':>22s} {'step ms':>9s}"]  # fmt: skip
    for r in rows:
        if r["error"]:
            lines.append(f"{r['engine']:7s} {r['world']:>2} error: {r['error']}")
            continue
        paper = f"{r['expected_params_mb']:.1f}/{r['expected_grads_mb']:.1f}/{r['expected_optimizer_mb']:.1f}"
        lines.append(f"{r['engine']:7s} {r['world']:>2} {r['rank']:>4} {r['params_mb']:>10.1f} {r['grads_mb']:>10.1f} "
                     f"{r['optimizer_mb']:>10.1f} {paper:>22s} {r['step_ms']:>9.1f}")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    worker(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
