"""The process group, below ``data/`` and ``engine/`` (floor 0): who am I among how many, where do we meet, and
the collectives every floor uses (``on_rank0``, ``on_every_rank``, ``barrier``, means, sums and flags over ranks).

Order (design.md): torchrun's variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``; also set by DeepSpeed's
launcher), then SLURM (``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID``, the first host of
``SLURM_JOB_NODELIST``), then MPI (``mpiexec``: PMI or Open MPI variables, rendezvous through mpi4py), else one
process. ``MASTER_ADDR``/``MASTER_PORT`` in the environment always win (emulated or multi-homed nodes). Backend:
NCCL on CUDA, gloo on CPU (``AEF_HPC_BACKEND=gloo`` forces gloo on CUDA); ``torch.cuda.set_device(local_rank)``
happens before anything touches CUDA.
"""

import atexit
import gc
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import ConfigError, DistributedError

DEFAULT_PORT = 29500


@dataclass(frozen=True)
class ProcessInfo:
    """This process's place in the job, and where rank 0 listens."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    master_addr: str = "127.0.0.1"
    master_port: int = DEFAULT_PORT
    source: str = "single"
    """which launcher was found: torchrun, slurm, mpi or single"""

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def expand_nodelist(spec: str) -> list[str]:
    """SLURM's compressed host list, e.g. ``n[01-03,07],gpu5`` -> ``[n01, n02, n03, n07, gpu5]`` (zero padding
    kept; several bracket groups in one name multiply out)."""
    hosts, depth, start = [], 0, 0
    for i, char in enumerate(spec + ","):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if depth < 0 or depth > 1:
            raise DistributedError(f"SLURM node list {spec!r}: unbalanced brackets")
        if char == "," and depth == 0:
            if spec[start:i].strip():
                hosts += _expand_one(spec[start:i].strip(), spec)
            start = i + 1
    if depth or not hosts:
        raise DistributedError(f"SLURM node list {spec!r}: unbalanced brackets or empty")
    return hosts


def _expand_one(name: str, spec: str) -> list[str]:
    match = re.search(r"\[([^\]]*)\]", name)
    if match is None:
        return [name]
    head, tail, values = name[: match.start()], name[match.end() :], []
    for part in match.group(1).split(","):
        low, dash, high = part.partition("-")
        if not low.isdigit() or (dash and not high.isdigit()) or (dash and int(high) < int(low)):
            raise DistributedError(f"SLURM node list {spec!r}: {part!r} is not a number or a range a-b with a <= b")
        width = len(low)
        values += [str(v).zfill(width) for v in range(int(low), int(high or low) + 1)]
    return [host for v in values for host in _expand_one(head + v + tail, spec)]


def tasks_on_node(spec: str, node: int) -> int:
    """The count of node ``node`` in SLURM's tasks-per-node list, e.g. ``2(x3),1`` -> 2, 2, 2, 1."""
    counts = []
    for part in spec.split(","):
        match = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if match is None:
            raise DistributedError(f"SLURM tasks per node {spec!r}: {part!r} is not N or N(xM)")
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    return counts[min(node, len(counts) - 1)]


def _int(env: Mapping[str, str], key: str) -> int:
    try:
        return int(env[key].split("(")[0])
    except ValueError:
        raise DistributedError(f"environment variable {key}={env[key]!r} is not an integer") from None


def _port(env: Mapping[str, str], fallback: int) -> int:
    return _int(env, "MASTER_PORT") if "MASTER_PORT" in env else fallback


def _mpi_world(env: Mapping[str, str]) -> tuple[int, int, int] | None:
    """``(rank, size, local rank)`` from the variables ``mpiexec`` sets (MPICH/Hydra, Open MPI), or ``None``."""
    for rank, size, local in (
        ("PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"),
        ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"),
    ):
        if rank in env and size in env:
            return _int(env, rank), _int(env, size), _int(env, local) if local in env else 0
    return None


def discover(env: Mapping[str, str] | None = None) -> ProcessInfo:
    """The ``ProcessInfo`` of this process, from ``env`` (default ``os.environ``); see the module docstring."""
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        return ProcessInfo(
            rank=_int(env, "RANK"),
            world_size=_int(env, "WORLD_SIZE"),
            local_rank=_int(env, "LOCAL_RANK") if "LOCAL_RANK" in env else 0,
            local_world_size=_int(env, "LOCAL_WORLD_SIZE") if "LOCAL_WORLD_SIZE" in env else 1,
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
            master_port=_port(env, DEFAULT_PORT),
            source="torchrun",
        )
    mpi = _mpi_world(env)
    slurm_step = "SLURM_PROCID" in env and "SLURM_NTASKS" in env and "SLURM_STEP_ID" in env
    if slurm_step and (mpi is None or mpi[:2] == (_int(env, "SLURM_PROCID"), _int(env, "SLURM_NTASKS"))):
        # srun (also `srun --mpi=pmi2`, whose PMI variables agree); mpiexec inside an allocation falls to MPI
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or "127.0.0.1"
        job = _int(env, "SLURM_JOB_ID") if "SLURM_JOB_ID" in env else 0
        per_node = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE") or "1"
        node = _int(env, "SLURM_NODEID") if "SLURM_NODEID" in env else 0
        return ProcessInfo(
            rank=_int(env, "SLURM_PROCID"),
            world_size=_int(env, "SLURM_NTASKS"),
            local_rank=_int(env, "SLURM_LOCALID") if "SLURM_LOCALID" in env else 0,
            local_world_size=tasks_on_node(per_node, node),
            master_addr=env.get("MASTER_ADDR") or expand_nodelist(nodelist)[0],
            master_port=_port(env, 15000 + job % 20000),  # one port per job: two jobs on a node do not collide
            source="slurm",
        )
    if mpi is not None:
        rank, size, local = mpi
        addr, port = _mpi_rendezvous(env, rank, size)
        return ProcessInfo(rank, size, local, _int(env, "MPI_LOCALNRANKS") if "MPI_LOCALNRANKS" in env else 1,
                           addr, port, "mpi")  # fmt: skip
    return ProcessInfo()


def _mpi_rendezvous(env: Mapping[str, str], rank: int, size: int) -> tuple[str, int]:
    """Rank 0's address and a free port of it, broadcast through mpi4py (MPI itself names no rendezvous)."""
    if "MASTER_ADDR" in env and "MASTER_PORT" in env:
        return env["MASTER_ADDR"], _int(env, "MASTER_PORT")
    try:
        from mpi4py import MPI
    except (ImportError, RuntimeError) as exc:
        raise DistributedError(
            f"started by mpiexec but mpi4py cannot load an MPI library ({exc}): use the mpiexec of the venv "
            "(PyPI mpich) or set MASTER_ADDR and MASTER_PORT"
        ) from None
    comm = MPI.COMM_WORLD
    if (comm.Get_rank(), comm.Get_size()) != (rank, size):
        raise DistributedError(
            f"mpiexec says rank {rank} of {size} but mpi4py's MPI says {comm.Get_rank()} of {comm.Get_size()}: "
            "mpi4py is linked to another MPI than the mpiexec used; use the venv's mpiexec (PyPI mpich) or set "
            "MASTER_ADDR and MASTER_PORT"
        )
    found = (env.get("MASTER_ADDR") or _own_address(), _free_port()) if rank == 0 else None
    addr, port = comm.bcast(found, root=0)
    hosts = set(comm.allgather(socket.gethostname()))
    if len(hosts) > 1 and addr.startswith("127."):
        raise DistributedError(
            f"rank 0's host name resolves to {addr}, a loopback address, but the ranks run on {len(hosts)} hosts: "
            "set MASTER_ADDR to rank 0's network address"
        )
    return addr, port


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _own_address() -> str:
    host = socket.gethostname()
    try:
        return socket.gethostbyname(host)
    except OSError:
        return "127.0.0.1"


def backend_for(device: torch.device, env: Mapping[str, str] | None = None) -> str:
    """NCCL on CUDA, gloo on the CPU; ``AEF_HPC_BACKEND=gloo`` takes gloo on CUDA too (several ranks on one GPU,
    which NCCL refuses: ``scripts/gpu_check.sh``)."""
    forced = (os.environ if env is None else env).get("AEF_HPC_BACKEND", "")
    if forced not in ("", "gloo", "nccl"):
        raise DistributedError(f"AEF_HPC_BACKEND={forced!r} is unknown: use gloo or nccl, or leave it unset")
    if forced == "nccl" and device.type != "cuda":
        raise DistributedError("AEF_HPC_BACKEND=nccl needs train.device=cuda: NCCL has no CPU collectives")
    return forced or ("nccl" if device.type == "cuda" else "gloo")


def check_devices(info: ProcessInfo, device: torch.device, env: Mapping[str, str] | None = None) -> None:
    """Settings that cannot work: more local ranks than GPUs; one SLURM task per node on a node with several GPUs
    (torchrun was meant to start one process per GPU)."""
    if device.type != "cuda":
        return
    env = os.environ if env is None else env
    count = torch.cuda.device_count()
    if info.local_rank >= count > 1:
        raise DistributedError(
            f"local rank {info.local_rank} has no GPU: this node shows {count} (CUDA_VISIBLE_DEVICES="
            f"{env.get('CUDA_VISIBLE_DEVICES', 'unset')}); start at most {count} processes per node"
        )
    if info.source == "slurm" and info.local_world_size == 1 and count > 1 and info.distributed:
        raise DistributedError(
            f"SLURM started one task per node but each node has {count} GPUs and no torchrun ran: use "
            "launchers/slurm.sbatch (torchrun per node) or srun --ntasks-per-node=<GPUs per node>"
        )


def rank_device(info: ProcessInfo, device: torch.device, visible: int) -> torch.device:
    """This process's device: an explicit ``cuda:N`` in one process as given; under a launcher ``cuda:local_rank``
    (``cuda:0`` where each task sees one GPU, as SLURM's ``--gpus-per-task=1`` binds it), and an explicit index is
    refused (every rank would take the same GPU)."""
    if device.type != "cuda":
        return device
    if device.index is not None:
        if info.distributed:
            raise ConfigError(
                f"train.device={device} names one GPU but {info.world_size} processes were started ({info.source}): "
                "use train.device=cuda (each rank takes the GPU of its local rank) or CUDA_VISIBLE_DEVICES"
            )
        if device.index >= visible:
            raise ConfigError(f"train.device={device} but this machine shows {visible} GPU(s): use cuda:0 to "
                              f"cuda:{visible - 1}, or train.device=cuda")  # fmt: skip
        return device
    return torch.device("cuda", info.local_rank if visible > 1 else 0)


def init_distributed(info: ProcessInfo, device: torch.device, force: bool = False) -> torch.device:
    """Join the process group of ``info`` (one process: only when ``force``, a group of one for the DDP and
    DeepSpeed engines); returns this rank's device (``rank_device``, made current first)."""
    check_devices(info, device)
    if device.type == "cuda":
        device = rank_device(info, device, torch.cuda.device_count())
        torch.cuda.set_device(device)
    if not (info.distributed or force) or dist.is_initialized():
        return device
    if not info.distributed:  # a group of one: the environment's rendezvous, else a free local port
        env = os.environ
        info = ProcessInfo(master_addr=env.get("MASTER_ADDR", "127.0.0.1"), master_port=_port(env, _free_port()))
    os.environ.update(  # what DeepSpeed and torch's env:// read
        RANK=str(info.rank),
        WORLD_SIZE=str(info.world_size),
        LOCAL_RANK=str(info.local_rank),
        MASTER_ADDR=info.master_addr,
        MASTER_PORT=str(info.master_port),
    )
    try:
        dist.init_process_group(backend_for(device), init_method="env://")
        atexit.unregister(leave_distributed)  # once, however often a process joins
        atexit.register(leave_distributed)
    except (RuntimeError, ValueError) as exc:
        raise DistributedError(
            f"rank {info.rank} of {info.world_size} ({info.source}) could not reach rank 0 at "
            f"{info.master_addr}:{info.master_port}: {str(exc).splitlines()[0]}; check MASTER_ADDR/MASTER_PORT"
        ) from None
    return device


def collective_device() -> torch.device:
    """Where tensors of a collective must live: the current GPU under NCCL, else the CPU (gloo)."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def world_info() -> tuple[int, int]:
    """``(rank, world_size)`` of the joined process group, else ``(0, 1)``."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def leave_distributed() -> None:
    """Leave the process group (after the last collective); also run at exit. Whatever still holds the group in
    a reference cycle (a DDP engine's reducer) is collected now, while the interpreter is alive: gloo's worker
    threads torn down during interpreter finalization abort the process ("terminate called without an active
    exception", pytorch#179291)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    gc.collect()


def gathered_objects(value) -> list:
    """Every rank's ``value`` (picklable), in rank order, on every rank (one process: ``[value]``)."""
    if not joined():
        return [value]
    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def barrier() -> None:
    """Wait for every rank (nothing for one process)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def on_rank0(fn):
    """``fn()`` on rank 0, its result shared with every rank; an exception it raises is raised on every rank, so
    no rank waits in a collective for a rank 0 that failed."""
    rank, world = world_info()
    outcome = (None, None)
    if rank == 0:
        try:
            outcome = (fn(), None)
        except Exception as exc:  # noqa: BLE001  re-raised below, on every rank
            outcome = (None, exc)
    if world > 1:
        box = [outcome]
        dist.broadcast_object_list(box, src=0)
        outcome = box[0]
    if outcome[1] is not None:
        raise outcome[1]
    return outcome[0]


def on_every_rank(fn, what: str):
    """``fn()`` on every rank, returning its result; when it fails on any, every rank raises (the failed one its
    own error, the others a ``DistributedError`` naming that rank)."""
    error, result = None, None
    try:
        result = fn()
    except Exception as exc:  # noqa: BLE001
        error = exc
    rank, world = world_info()
    if world > 1:
        failed = torch.tensor([0 if error is None else rank + 1], device=collective_device())
        dist.all_reduce(failed, op=dist.ReduceOp.MAX)
        first = int(failed.item()) - 1
        if error is None and first >= 0:
            raise DistributedError(f"{what} failed on rank {first} (its own message is in that rank's output)")
    if error is not None:
        raise error
    return result


def joined() -> bool:
    """Whether a process group of more than one rank is joined."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """The mean of a scalar over ranks."""
    if not joined():
        return value
    reduced = value.detach().to(collective_device(), torch.float64).reshape(1)
    dist.all_reduce(reduced)
    return (reduced / dist.get_world_size()).to(value.device).reshape(())


def world_sum(value: float) -> float:
    """The sum of a number over ranks."""
    if not joined():
        return value
    reduced = torch.tensor([float(value)], dtype=torch.float64, device=collective_device())
    dist.all_reduce(reduced)
    return reduced.item()


def any_rank(flag: bool) -> bool:
    """``True`` on every rank when ``flag`` is true on one (a signal that reached only some ranks)."""
    if not joined():
        return flag
    reduced = torch.tensor([int(flag)], device=collective_device())
    dist.all_reduce(reduced, op=dist.ReduceOp.MAX)
    return bool(reduced.item())
