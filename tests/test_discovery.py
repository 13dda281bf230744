"""Process discovery from faked torchrun, SLURM and MPI environments; SLURM node lists; the keyed noise that makes
N ranks see exactly the samples one process sees."""

import pytest
import torch

from aef_hpc.data import dequantize_keyed, keyed_uniform, sample_id
from aef_hpc.errors import ConfigError, DistributedError
from aef_hpc.noise import _GAMMA, _mix_int
from aef_hpc.process_group import (
    ProcessInfo,
    check_devices,
    discover,
    expand_nodelist,
    rank_device,
    tasks_on_node,
)


@pytest.mark.parametrize(
    "spec,hosts",
    [
        ("n1", ["n1"]),
        ("n[1-3]", ["n1", "n2", "n3"]),
        ("n[01-03,07],gpu5", ["n01", "n02", "n03", "n07", "gpu5"]),
        ("a[9-11]", ["a9", "a10", "a11"]),
        ("rack[1-2]-n[1-2]", ["rack1-n1", "rack1-n2", "rack2-n1", "rack2-n2"]),
        ("x,y[3],z", ["x", "y3", "z"]),
    ],
)
def test_nodelists_expand_like_scontrol(spec, hosts):
    assert expand_nodelist(spec) == hosts


@pytest.mark.parametrize("spec", ["n[1-3", "n1-3]", "n[a-b]", "", "n[[1]]", "n[1-]", "n[3-1]"])
def test_bad_nodelists_are_one_error(spec):
    with pytest.raises(DistributedError, match="node list"):
        expand_nodelist(spec)


@pytest.mark.parametrize("spec,node,count", [("2(x3),1", 0, 2), ("2(x3),1", 2, 2), ("2(x3),1", 3, 1), ("4", 0, 4),
                                             ("1,3", 1, 3)])  # fmt: skip
def test_tasks_per_node_of_this_node(spec, node, count):
    assert tasks_on_node(spec, node) == count


def test_torchrun_variables_come_first():
    env = {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4", "MASTER_ADDR": "10.0.0.2",
           "MASTER_PORT": "1234", "SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_STEP_ID": "0", "PMI_RANK": "0",
           "PMI_SIZE": "1"}  # fmt: skip
    assert discover(env) == ProcessInfo(3, 8, 1, 4, "10.0.0.2", 1234, "torchrun")


def test_slurm_three_hosts_first_is_the_rendezvous():
    env = {"SLURM_PROCID": "5", "SLURM_NTASKS": "6", "SLURM_LOCALID": "1", "SLURM_STEP_ID": "0",
           "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "gpu[07-08],cpu3",
           "SLURM_TASKS_PER_NODE": "2(x3)"}  # fmt: skip
    info = discover(env)
    assert info == ProcessInfo(5, 6, 1, 2, "gpu07", 15000 + 4242, "slurm")
    assert discover({**env, "MASTER_ADDR": "10.1.1.1", "MASTER_PORT": "999"}).master_addr == "10.1.1.1"


def test_srun_with_pmi2_is_slurm_and_mpiexec_inside_an_allocation_is_mpi():
    slurm = {"SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_STEP_ID": "3", "SLURM_JOB_NODELIST": "n[1-2]"}
    assert discover({**slurm, "PMI_RANK": "1", "PMI_SIZE": "2"}).source == "slurm"
    # mpiexec's processes inside an sbatch step: SLURM's variables describe the proxy, PMI's the ranks
    inside = {**slurm, "SLURM_PROCID": "0", "SLURM_NTASKS": "1", "MASTER_ADDR": "h0", "MASTER_PORT": "5"}
    assert discover({**inside, "PMI_RANK": "3", "PMI_SIZE": "4", "MPI_LOCALRANKID": "1"}) == ProcessInfo(
        3, 4, 1, 1, "h0", 5, "mpi"
    )


def test_open_mpi_variables_and_the_batch_shell():
    ompi = {"OMPI_COMM_WORLD_RANK": "2", "OMPI_COMM_WORLD_SIZE": "3", "OMPI_COMM_WORLD_LOCAL_RANK": "0",
            "MASTER_ADDR": "a", "MASTER_PORT": "7"}  # fmt: skip
    assert discover(ompi) == ProcessInfo(2, 3, 0, 1, "a", 7, "mpi")
    # the batch shell of an sbatch job (no job step) is one process, not rank 0 of SLURM_NTASKS
    assert discover({"SLURM_PROCID": "0", "SLURM_NTASKS": "4", "SLURM_JOB_ID": "1"}) == ProcessInfo()
    assert discover({}) == ProcessInfo()


def test_mpi_rendezvous_is_broadcast_by_mpi4py():
    """A real (singleton) MPI: rank 0 picks its address and a free port and broadcasts them."""
    info = discover({"PMI_RANK": "0", "PMI_SIZE": "1"})
    assert info.source == "mpi" and info.master_port > 0 and info.master_addr


def test_bad_variables_name_the_key():
    with pytest.raises(DistributedError, match="WORLD_SIZE='two'"):
        discover({"RANK": "0", "WORLD_SIZE": "two"})
    with pytest.raises(DistributedError, match="tasks per node '2x'"):
        discover({"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_STEP_ID": "0", "SLURM_TASKS_PER_NODE": "2x"})


def test_gpu_settings_that_cannot_work(monkeypatch):
    """No GPU here: CUDA's device count is faked (the check itself is what is tested)."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    cuda = torch.device("cuda")
    with pytest.raises(DistributedError, match="local rank 2 has no GPU: this node shows 2"):
        check_devices(ProcessInfo(rank=2, world_size=4, local_rank=2, local_world_size=3), cuda, {})
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # SLURM bound one GPU to each task
    check_devices(ProcessInfo(rank=3, world_size=4, local_rank=3, local_world_size=4, source="slurm"), cuda, {})
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(DistributedError, match="one task per node .* no torchrun ran"):
        check_devices(ProcessInfo(1, 2, 0, 1, "n1", 1, "slurm"), cuda, {})
    check_devices(ProcessInfo(1, 2, 0, 1, "n1", 1, "torchrun"), cuda, {})
    check_devices(ProcessInfo(5, 8, 7, 1, "n1", 1, "slurm"), torch.device("cpu"), {})


def test_an_explicit_gpu_is_honoured_in_one_process_and_refused_under_a_launcher():
    """No GPU here: the choice of device is a pure function of the process, the asked device and the GPU count."""
    one = ProcessInfo()
    torchrun = ProcessInfo(rank=1, world_size=2, local_rank=1, local_world_size=2, source="torchrun")
    assert rank_device(one, torch.device("cuda:1"), visible=2) == torch.device("cuda:1")
    assert rank_device(one, torch.device("cuda"), visible=2) == torch.device("cuda:0")
    assert rank_device(torchrun, torch.device("cuda"), visible=2) == torch.device("cuda:1")
    assert rank_device(torchrun, torch.device("cuda"), visible=1) == torch.device("cuda:0"), "one GPU per task"
    assert rank_device(torchrun, torch.device("cpu"), visible=2) == torch.device("cpu")
    with pytest.raises(ConfigError, match=r"train.device=cuda:1 names one GPU but 2 processes were started"):
        rank_device(torchrun, torch.device("cuda:1"), visible=2)
    with pytest.raises(ConfigError, match=r"train.device=cuda:3 but this machine shows 2 GPU"):
        rank_device(one, torch.device("cuda:3"), visible=2)


def _uniform_reference(seeds, sample, j) -> float:
    """``keyed_uniform`` with Python's exact integers (mod 2^64)."""
    state = 0
    for seed in seeds:
        state = _mix_int(state + _GAMMA + seed)
    base = _mix_int(sample ^ state)
    return (_mix_int(base + (j + 1) * _GAMMA) >> 40) / 2**24


def test_keyed_noise_matches_its_exact_integer_reference():
    ids = torch.tensor([0, 7, sample_id("train-00042"), 2**62 + 5])
    u = keyed_uniform(ids, (2, 3), 11, 4, 0)
    for b, sample in enumerate(ids.tolist()):
        for j in range(6):
            assert u[b].flatten()[j].item() == _uniform_reference((11, 4, 0), sample, j)


def test_keyed_noise_depends_on_the_sample_not_its_position():
    images = torch.randint(0, 256, (6, 1, 4, 4), dtype=torch.uint8)
    ids = torch.arange(100, 106)
    whole = dequantize_keyed(images, 256, ids, 0, 3)
    order = torch.tensor([4, 0, 5, 2, 1, 3])
    assert torch.equal(dequantize_keyed(images[order], 256, ids[order], 0, 3), whole[order])
    assert not torch.equal(dequantize_keyed(images, 256, ids, 0, 4), whole), "a new epoch draws new noise"
    u = keyed_uniform(torch.arange(2000), (64,), 1)
    assert 0 <= u.min() and u.max() < 1
    assert abs(u.mean().item() - 0.5) < 0.005 and abs(u.var().item() - 1 / 12) < 0.002
    assert abs(torch.corrcoef(torch.stack([u[:, 0], u[:, 1]]))[0, 1].item()) < 0.1


def test_the_backend_is_nccl_on_cuda_gloo_on_the_cpu_and_aef_hpc_backend_forces_gloo():
    from aef_hpc.process_group import backend_for

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert backend_for(cuda, {}) == "nccl" and backend_for(cpu, {}) == "gloo"
    assert backend_for(cuda, {"AEF_HPC_BACKEND": "gloo"}) == "gloo"  # two ranks on one GPU (scripts/gpu_check.sh)
    with pytest.raises(DistributedError, match="AEF_HPC_BACKEND='mpi' is unknown: use gloo or nccl"):
        backend_for(cuda, {"AEF_HPC_BACKEND": "mpi"})
    with pytest.raises(DistributedError, match="AEF_HPC_BACKEND=nccl needs train.device=cuda"):
        backend_for(cpu, {"AEF_HPC_BACKEND": "nccl"})
