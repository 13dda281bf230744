"""``aef-hpc info``: what process discovery finds here, the devices, the backend and the versions that matter."""

import importlib.metadata
import os
import platform
import socket

import torch

from ..process_group import backend_for, discover

PACKAGES = ("torch", "deepspeed", "triton", "mpi4py", "mpich", "webdataset", "omegaconf", "safetensors")


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def describe() -> dict[str, str]:
    info = discover()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    slurm = {k: os.environ[k] for k in ("SLURM_JOB_ID", "SLURM_JOB_NODELIST", "SLURM_NTASKS") if k in os.environ}
    return {
        "launcher": info.source,
        "rank": f"{info.rank} of {info.world_size}",
        "local rank": f"{info.local_rank} of {info.local_world_size}",
        "rendezvous": f"{info.master_addr}:{info.master_port}",
        "host": socket.gethostname(),
        "devices": f"{len(gpus)} GPU(s): {', '.join(gpus)}" if gpus else f"cpu ({os.cpu_count()} cores)",
        "backend": backend_for(device),
        "slurm": " ".join(f"{k}={v}" for k, v in slurm.items()) or "-",
        "python": platform.python_version(),
        **{name: _version(name) for name in PACKAGES},
    }
