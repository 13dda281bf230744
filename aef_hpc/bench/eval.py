"""``aef-hpc bench eval``: images/s of likelihood evaluation on 1 and 2 ranks, and its peak memory against K.

Throughput: exact (aef-center) and importance-sampled (aef-linear, vae; K = 128, one repeat, draws per pass as
``aef-hpc eval`` chooses them) NLL of ``images`` random 1×28×28 images (small nets, latent 16, MAF flows),
evaluated by ``per_image_nll`` exactly as ``aef-hpc eval`` does (keyed noise), each rank its share; every case is a
fresh ``torchrun --standalone`` job and rank 0 times the evaluation between barriers (one untimed warm-up batch
first). ``vs_one_rank`` is the images/s over the same model's on one rank.

Memory: aef-linear, one batch of 32 images, K in 32..1024 at ``chunk_size`` 32, each K in a fresh process: on the
CPU the peak RSS (``ru_maxrss``) minus the RSS before the evaluation; on CUDA ``max_memory_allocated``. It must stay
flat in K: only the ``[K, B, latent]`` proposal draws and the ``[K, B]`` log-weights grow with it.
"""

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from ..progress import Progress
from .report import write_csv

MODELS = ("aef-center", "aef-linear", "vae")
RANKS = (1, 2)
KS = (32, 128, 512, 1024)
SHAPE = (1, 28, 28)
CHUNK = 32  # the memory case's draws per pass
_RESULT = "AEF_BENCH_EVAL_RESULT "


def _model(name: str):
    from ..models import build_model

    torch.manual_seed(0)
    flows = "maf"
    return build_model(name, SHAPE, 16, "small", prior_flow=flows, posterior_flow=flows)


def random_images(n: int) -> tuple[list[str], torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return [f"image-{i:06d}" for i in range(n)], torch.randint(0, 256, (n, *SHAPE), generator=gen, dtype=torch.uint8)


def throughput_worker(name: str, images: int, num_samples: int) -> None:
    """One rank of a throughput case (run by torchrun); rank 0 prints the result line."""
    import torch.distributed as dist

    from ..data import dequantize_keyed, sample_id
    from ..evaluate.likelihood import per_image_nll
    from ..process_group import discover, init_distributed, leave_distributed

    device = init_distributed(discover(), torch.device("cuda" if torch.cuda.is_available() else "cpu"), force=True)
    model = _model(name).to(device)
    keys, pixels = random_images(images)
    warm = dequantize_keyed(pixels[:32], 256, torch.tensor([sample_id(k) for k in keys[:32]]), 0).to(device)
    model.initialize(warm)
    rank, world = dist.get_rank(), dist.get_world_size()
    mine = [(keys[i : i + 32], pixels[i : i + 32]) for i in range(rank * 32, images, 32 * world)]
    per_image_nll(model, mine[:1], 256, num_samples, 1, None, 0, device)  # warm-up
    dist.barrier()
    start = time.perf_counter()
    per_image_nll(model, mine, 256, num_samples, 1, None, 0, device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    dist.barrier()
    seconds = time.perf_counter() - start
    if rank == 0:
        print(_RESULT + json.dumps({"images_per_s": images / seconds, "seconds": seconds}), flush=True)
    leave_distributed()


def memory_worker(num_samples: int) -> None:
    """One K of the memory sweep (a fresh process): prints the peak bytes of one batch's evaluation."""
    from ..evaluate.likelihood import per_image_nll

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = _model("aef-linear").to(device)
    keys, pixels = random_images(32)
    model.initialize((pixels.float() + 0.5).to(device) / 256)
    per_image_nll(model, [(keys[:2], pixels[:2])], 256, CHUNK, 1, CHUNK, 0, device)  # allocator warm-up
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    per_image_nll(model, [(keys, pixels)], 256, num_samples, 1, CHUNK, 0, device)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    print(_RESULT + json.dumps({"peak_mb": max(peak, 0) / 2**20}), flush=True)


def _result(command: list[str]) -> dict:
    proc = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).parents[2], env=os.environ)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(_RESULT)]
    if proc.returncode or not lines:
        return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]}
    return {**json.loads(lines[0][len(_RESULT) :]), "error": ""}


def run(out: str | Path, images: int = 512, num_samples: int = 128, ks=KS, models=MODELS, ranks=RANKS) -> list[dict]:
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    rows = []
    bar = Progress(len(models) * len(ranks) + len(ks), "bench eval", "case")
    for name in models:
        k = 1 if name == "aef-center" else num_samples
        single = None
        for n in ranks:
            got = _result([torchrun, "--standalone", "--nproc-per-node", str(n), "-m", "aef_hpc.bench.eval",
                           "throughput", name, str(images), str(k)])  # fmt: skip
            rate = got.get("images_per_s")
            single = rate if n == 1 else single
            rows.append({
                "kind": "throughput", "model": name, "estimator": "exact" if name == "aef-center" else "importance",
                "num_samples": k if name != "aef-center" else "", "ranks": n, "images": images,
                "images_per_s": round(rate, 1) if rate else "", "vs_one_rank": round(rate / single, 2)
                if rate and single else "", "peak_mb": "", "error": got["error"],
            })  # fmt: skip
            bar.update()
    for k in ks:
        got = _result([sys.executable, "-m", "aef_hpc.bench.eval", "memory", str(k)])
        rows.append({
            "kind": "memory", "model": "aef-linear", "estimator": "importance", "num_samples": k, "ranks": 1,
            "images": 32, "images_per_s": "", "vs_one_rank": "", "peak_mb": round(got["peak_mb"], 1)
            if "peak_mb" in got else "", "error": got["error"],
        })  # fmt: skip
        bar.update()
    bar.close()
    write_csv(rows, out)
    return rows


def table(rows: list[dict]) -> str:
    lines = []
    for r in rows:
        what = f"{r['kind']:10s} {r['model']:10s} K={r['num_samples'] or '-':<5} ranks={r['ranks']}"
        value = (
            f"{r['images_per_s']} images/s (x{r['vs_one_rank']})" if r["kind"] == "throughput" else f"{r['peak_mb']} MB"
        )
        lines.append(f"{what}  {value}  {r['error']}".rstrip())
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1] == "throughput":
        throughput_worker(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        memory_worker(int(sys.argv[2]))
