"""The DeepSpeed engine: ZeRO stages 0-3, bf16, optional optimizer offload.

One source of truth: the DeepSpeed dict is built from ``train.*`` (micro-batch, accumulation, clipping, Adam and
its LR schedule, precision) plus a preset (``deepspeed.config``) that may set only what DeepSpeed alone decides
(the ZeRO stage and its options). On the CPU DeepSpeed would JIT-compile a shared-memory communication op at
start-up (86-165 s, stack.md #9) and a fused Adam: the first is skipped (gloo does the collectives), the second
avoided with ``torch_adam`` (the same ``torch.optim.Adam`` the other engines use). Under ZeRO-3 the model is built
inside ``deepspeed.zero.Init`` (``model_scope``): no rank ever holds all parameters, and code that uses them
outside ``forward`` (initialisation, sampling, evaluation) runs under ``gathered``.
"""

import contextlib
import ctypes
import difflib
import importlib
import io
import itertools
import logging
import math
import os
import pickle
import sys
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import yaml

from ..errors import CheckpointError, ConfigError, out_of_memory
from ..process_group import collective_device
from .single import StepResult

#: train.* keys own these: a preset that sets one would contradict them
OWNED = {
    "train_batch_size": "train.batch_size",
    "train_micro_batch_size_per_gpu": "train.batch_size",
    "gradient_accumulation_steps": "train.accumulate",
    "gradient_clipping": "train.grad_clip",
    "optimizer": "train.lr",
    "scheduler": "train.lr_schedule",
    "bf16": "train.precision",
    "fp16": "train.precision",
    "amp": "train.precision",
    "torch_autocast": "train.precision",
}
#: what a preset may set besides what train.* owns: the ZeRO options and DeepSpeed's own bookkeeping
PRESET_KEYS = (
    "zero_optimization",
    "communication_data_type",
    "prescale_gradients",
    "gradient_predivide_factor",
    "zero_allow_untested_optimizer",
    "zero_force_ds_cpu_optimizer",
    "wall_clock_breakdown",
    "memory_breakdown",
    "comms_logger",
    "aio",
)
TAG = "zero"
#: DeepSpeed's log lines that are known and harmless here (the CPU is the accelerator on purpose)
QUIET_LOGS = ("Setting accelerator to CPU",)

# known and harmless, filtered once at start-up (a filter set at every step would reset Python's once-per-place
# warning registry and print every other warning again at each step): DeepSpeed calls torch's renamed
# collectives, and a skipped ZeRO-0 step steps the schedule without its optimizer on purpose
for _message, _kind in (
    (
        r"`torch\.distributed\.(all_gather_into_tensor|reduce_scatter_tensor|_all_gather_base)` is deprecated",
        FutureWarning,
    ),
    (r"Seems like `optimizer\.step\(\)` has been overridden", UserWarning),
):
    warnings.filterwarnings("ignore", _message, _kind)


def _deepspeed():
    """``import deepspeed``, its log on stderr (stdout holds results only) without the known harmless lines. Every
    use of DeepSpeed in aef_hpc imports it through here first."""
    if "deepspeed" not in sys.modules:
        logging.getLogger("DeepSpeed").addFilter(lambda record: not record.getMessage().startswith(QUIET_LOGS))
        with contextlib.redirect_stdout(sys.stderr):  # its log handler keeps the stream it finds at import
            import deepspeed  # noqa: F401
    return sys.modules["deepspeed"]


"""the DeepSpeed tag inside a checkpoint folder: ``step-N/zero/``"""


def _preset_path(name: str) -> Path:
    path = Path(name)
    if not path.is_absolute() and not path.exists():  # presets shipped with the repository
        path = Path(__file__).resolve().parents[2] / name
    return path


def _zero_keys() -> set[str]:
    """Every key DeepSpeed's ZeRO section reads (its field names and their aliases)."""
    _deepspeed()
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

    fields = DeepSpeedZeroConfig.model_fields
    return set(fields) | {f.alias for f in fields.values() if f.alias}


def _check_known(path: Path, prefix: str, section: dict, known) -> None:
    """A misspelt preset key would be ignored by DeepSpeed (ZeRO-0 instead of ZeRO-2): refuse it, naming it."""
    for key in section:
        if key not in known:
            near = difflib.get_close_matches(str(key), list(known), n=1)
            fix = f"did you mean {prefix}{near[0]}?" if near else f"known: {', '.join(sorted(known))}"
            raise ConfigError(f"deepspeed.config={path}: unknown key {prefix}{key} ({fix})")


def deepspeed_config(cfg) -> dict:
    """The DeepSpeed dict of an aef_hpc ``Config``; a preset that is missing, malformed or sets a key that
    ``train.*`` owns is a ``ConfigError`` naming both."""
    path = _preset_path(cfg.deepspeed.config)
    if not path.is_file():
        raise ConfigError(f"deepspeed.config={cfg.deepspeed.config}: no such file (presets: configs/deepspeed/)")
    try:
        preset = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"deepspeed.config={path}: not valid YAML ({' '.join(str(exc).split())[:200]})") from None
    if not isinstance(preset, dict):
        raise ConfigError(f"deepspeed.config={path}: must be a mapping of DeepSpeed keys")
    for key, ours in OWNED.items():
        if key in preset:
            raise ConfigError(f"deepspeed.config={path} sets {key}: remove it, aef_hpc sets it from {ours}")
    _check_known(path, "", preset, PRESET_KEYS)
    zero = dict(preset.get("zero_optimization") or {})
    _check_known(path, "zero_optimization.", zero, _zero_keys())
    if zero.get("compute_grad_norm", True) is not True:  # a non-finite step is dropped through DeepSpeed's norm
        raise ConfigError(
            f"deepspeed.config={path} sets zero_optimization.compute_grad_norm: remove it (bad steps are detected "
            "through the gradient norm)"
        )
    stage = zero.get("stage", 0)
    if stage not in (0, 1, 2, 3):
        raise ConfigError(f"deepspeed.config={path}: zero_optimization.stage={stage!r} must be 0, 1, 2 or 3")
    t = cfg.train
    if t.compile:
        raise ConfigError("train.compile is not supported with engine=deepspeed: set train.compile=false")
    if stage == 3 and t.ema_rate > 0:
        raise ConfigError("train.ema_rate needs whole parameters: not supported under ZeRO-3 (set it to 0)")
    if cfg.deepspeed.offload_optimizer:
        if stage == 0:
            raise ConfigError("deepspeed.offload_optimizer needs ZeRO stage 1, 2 or 3 (deepspeed.config)")
        zero["offload_optimizer"] = {"device": "cpu"}
    return {
        **preset,
        "train_micro_batch_size_per_gpu": t.batch_size,
        "gradient_accumulation_steps": t.accumulate,
        "gradient_clipping": t.grad_clip,
        "optimizer": {
            "type": "Adam",
            "params": {"lr": t.lr, "adam_w_mode": False, "torch_adam": not cfg.deepspeed.offload_optimizer},
        },
        # bf16 as autocast over float32 weights (like the other engines): DeepSpeed's "bf16" mode would store the
        # weights and activations in bf16, where a dequantized pixel (255 + u) / 256 rounds to 1 and the logit
        # preprocessing returns inf (measured: every step non-finite)
        "torch_autocast": {"enabled": t.precision == "bf16", "dtype": "bfloat16"},
        "zero_optimization": zero,
        "steps_per_print": 2**62,
    }


#: the plain record types DeepSpeed pickles into its checkpoints: the only classes a load may build
SAFE_TYPES = (
    ("deepspeed.runtime.fp16.loss_scaler", "LossScaler"),
    ("deepspeed.runtime.zero.config", "ZeroStageEnum"),
    ("deepspeed.utils.tensor_fragment", "fragment_address"),
)


@contextlib.contextmanager
def weights_only_loads():
    """Every ``torch.load`` inside runs with ``weights_only=True`` (DeepSpeed's own loaders ask for full unpickling:
    opening a crafted checkpoint would run its payload), DeepSpeed's record types allow-listed; a file that needs
    anything else is refused."""
    types = [getattr(importlib.import_module(module), name) for module, name in SAFE_TYPES]
    real = torch.load

    def load(*args, **kwargs):
        return real(*args, **{**kwargs, "weights_only": True})

    with torch.serialization.safe_globals(types):
        torch.load = load
        try:
            yield
        finally:
            torch.load = real


def _refused(folder: Path, exc: BaseException) -> CheckpointError:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    named = [line for line in lines if "GLOBAL" in line]  # torch names the global it refused
    reason = (named or lines or [type(exc).__name__])[0][:200]
    return CheckpointError(
        f"{folder}: not a readable DeepSpeed checkpoint, or one holding more than weights ({reason})"
    )


def _skip_shm_build() -> None:
    """gloo does the collectives: DeepSpeed's CPU shared-memory op (minutes of g++ at first use) is not built."""
    _deepspeed()
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None


def model_scope(ds_config: dict | None):
    """Where the model is built: ``deepspeed.zero.Init`` under ZeRO-3 (parameters partitioned as they are
    created, and freed memory given back: ``_give_back_freed_memory``), else nothing."""
    if ds_config is None or ds_config["zero_optimization"].get("stage", 0) != 3:
        return contextlib.nullcontext()
    _skip_shm_build()
    _give_back_freed_memory()
    return _deepspeed().zero.Init(config_dict_or_path=ds_config)


def _give_back_freed_memory() -> None:
    """glibc's allocator: every block of 1 MiB or more mapped on its own and unmapped when freed (as
    ``MALLOC_MMAP_THRESHOLD_=1048576``; a value set in the environment is kept). ZeRO-3 gathers and frees each
    layer's parameters at every use; by default glibc raises its threshold to 32 MiB after the first such free and
    keeps the gathers in its heap, and a rank's memory creeps towards a whole model's (measured at 311 M
    parameters on 2 ranks: 5.7 GB instead of 3.8 GB per rank)."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (musl): nothing to set
        return
    libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD, which also stops its growth


def gathered(module: torch.nn.Module, modifier: bool = False):
    """Whole parameters for use outside ``forward`` under ZeRO-3 (``modifier``: rank 0's changes are kept and
    partitioned again on exit); nothing otherwise."""
    params = [p for p in module.parameters() if hasattr(p, "ds_id")]
    if not params:
        return contextlib.nullcontext()
    return _deepspeed().zero.GatheredParameters(params, modifier_rank=0 if modifier else None)


class _ReadHook(dict):
    """A module's ``_parameters`` that tells ``fetch(owner, param)`` of every parameter read by attribute."""

    def __init__(self, owner: torch.nn.Module, fetch):
        super().__init__(owner._parameters)
        self.owner, self.fetch = owner, fetch

    def __getitem__(self, key):
        param = super().__getitem__(key)
        if param is not None and hasattr(param, "ds_id"):
            self.fetch(self.owner, param)
        return param


def _tensors(value):
    """The tensors in a module's output (nested tuples, lists and dicts)."""
    if torch.is_tensor(value):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


class GatherStats:
    """What ``gathered_as_used`` held: ``peak`` elements whole at once, of ``total``."""

    def __init__(self, total: int):
        self.total, self.held, self.peak = total, 0, 0


@contextlib.contextmanager
def gathered_as_used(root: torch.nn.Module, modified=()):
    """Under ZeRO-3, run code that uses ``root``'s parameters outside the engine without making the model whole on
    a rank: a module's own parameters are gathered when code first reads one, and partitioned again when the
    innermost module call in progress that contains that module returns (the outermost: on exit). The ``modified``
    modules' parameters (small: ActNorm's per-channel pairs) stay whole throughout, so any read sees them (a
    ``state_dict`` taken to roll back), and keep rank 0's values when partitioned again on exit. At any moment a
    rank holds those and the parameters of the module calls in progress, not the model. Yields a ``GatherStats``;
    nothing otherwise.

    The code inside must run the same calls in the same order on every rank (each gather is collective)."""
    stats = GatherStats(sum(getattr(p, "ds_numel", p.numel()) for p in root.parameters()))
    if not any(hasattr(p, "ds_id") for p in root.parameters()):
        yield stats
        return
    zero = _deepspeed().zero
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    modules = dict(root.named_modules(remove_duplicate=False))
    within: dict[int, set[int]] = {}  # a module -> itself and every module that contains it
    for name, module in modules.items():
        parts = name.split(".") if name else []
        within.setdefault(id(module), set()).update(id(modules[".".join(parts[:i])]) for i in range(len(parts) + 1))
    frames: list[tuple[torch.nn.Module, list]] = [(root, [])]  # (module call in progress, its open gathers)

    def release(gathers: list) -> None:
        for opened, numel in reversed(gathers):
            opened.__exit__(None, None, None)
            stats.held -= numel
        gathers.clear()

    def gather(params, frame: list, modifier_rank=None) -> None:
        """Gather those of ``params`` that are partitioned (a parameter shared with a module whose gather is open
        is whole already), until ``frame`` closes."""
        params = [p for p in params if hasattr(p, "ds_id") and p.ds_status == ZeroParamStatus.NOT_AVAILABLE]
        if not params:
            return
        opened = zero.GatheredParameters(params, modifier_rank=modifier_rank)
        opened.__enter__()
        numel = sum(p.ds_numel for p in params)
        stats.held += numel
        stats.peak = max(stats.peak, stats.held)
        frame.append((opened, numel))

    def fetch(owner: torch.nn.Module, param) -> None:
        if param.ds_status == ZeroParamStatus.NOT_AVAILABLE:
            frame = next(f for f in reversed(frames) if id(f[0]) in within[id(owner)])
            gather([p for p in owner._parameters.values() if p is not None], frame[1])

    def enter(module, args):
        if id(module) in within:
            frames.append((module, []))

    def leave(module, args, output):
        if id(module) in within and len(frames) > 1:
            gathers = frames.pop()[1]
            returned = {id(t) for t in _tensors(output)}  # a parameter returned as it is: its caller still uses it
            kept = [g for g in gathers if any(id(p) in returned for p in g[0].params)]
            frames[-1][1].extend(kept)
            release([g for g in gathers if g not in kept])

    hooks = [
        torch.nn.modules.module.register_module_forward_pre_hook(enter),
        torch.nn.modules.module.register_module_forward_hook(leave, always_call=True),
    ]
    plain = {}
    try:
        for module in modules.values():
            if id(module) not in plain:
                plain[id(module)] = (module, module._parameters)
                module._parameters = _ReadHook(module, fetch)
        gather([p for m in modified for p in m.parameters(recurse=False)], frames[0][1], modifier_rank=0)
        yield stats
    finally:
        for hook in hooks:
            hook.remove()
        for module, params in plain.values():
            module._parameters = params
        while frames:
            release(frames.pop()[1])


class DeepSpeedEngine:
    """``deepspeed.initialize`` around the model; DeepSpeed accumulates, clips and steps.

    Bad steps are decided *before* DeepSpeed steps, as in ``SingleEngine``: at each accumulation boundary the
    global gradient norm of the reduced (at ZeRO 1-3 partitioned) gradients is computed, every rank agrees on
    ``finite loss and finite norm <= train.skip_threshold``, and a rejected step changes nothing: at ZeRO-0 the wrapped
    torch optimizer's step is skipped for that call, at ZeRO 1-3 one gradient entry is made non-finite so DeepSpeed's
    own overflow path discards the step. The LR schedule advances on every boundary,
    taken or skipped, as the other engines' does.
    """

    name = "deepspeed"

    def __init__(self, model: torch.nn.Module, ds_config: dict, scheduler_factory, skip_threshold=None):
        _skip_shm_build()
        self.engine, self.optimizer, _, self.scheduler = _deepspeed().initialize(
            model=model, model_parameters=list(model.parameters()), config=ds_config, lr_scheduler=scheduler_factory
        )
        self.accumulate = ds_config["gradient_accumulation_steps"]
        self.stage = ds_config["zero_optimization"].get("stage", 0)
        self.skip_threshold = math.inf if skip_threshold is None else skip_threshold
        self._loss_sum = None

    def loss(self, x: torch.Tensor, noise=None) -> torch.Tensor:
        return self.engine(x, noise)

    @property
    def forward_is_collective(self) -> bool:
        """ZeRO-3 gathers each layer's parameters from every rank in the forward: all ranks must run it together."""
        return self.stage == 3

    def eval_loss(self, x: torch.Tensor, noise=None) -> torch.Tensor:
        """Validation in float32, outside DeepSpeed's autocast (ZeRO-3's gathering hooks sit on the module)."""
        return self.engine.module(x, noise).float()

    def _grad_norm(self) -> torch.Tensor:
        """The global L2 norm of the gradients before clipping (collective at ZeRO 1-3); NaN when not finite."""
        if self.stage == 0:  # the gradients are whole and already averaged over ranks
            grads = [p.grad for p in self.engine.module.parameters() if p.grad is not None]
            norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
        elif self.stage in (1, 2):
            norm = self.optimizer.scaled_global_norm() / self.optimizer.loss_scale
        else:
            from deepspeed.runtime.utils import combine_grad_norm_groups

            norm = combine_grad_norm_groups(self.optimizer._get_norm_groups()) / self.optimizer.loss_scale
        norm = torch.as_tensor(norm, dtype=torch.float32).detach().cpu().reshape(())
        return torch.where(torch.isfinite(norm) & (norm >= 0), norm, torch.nan)  # DeepSpeed's -1 and inf: not finite

    @contextlib.contextmanager
    def _discarding_gradients(self):
        """DeepSpeed's step inside changes no weight and no optimizer state (it still clears the gradients)."""
        if self.stage == 0:  # torch's optimizer, wrapped: its step is skipped for this one call
            inner = self.engine.optimizer
            own = vars(inner).get("step")  # the LR scheduler's wrapper, an instance attribute: put back as it was
            inner.step = lambda *args, **kwargs: None
            try:
                yield  # the schedule steps without its optimizer: that is the point (its warnings: filtered above)
            finally:
                if own is None:
                    del inner.step
                else:
                    inner.step = own
            return
        self._poison_partitions()
        yield

    def _poison_partitions(self) -> None:
        """ZeRO 1-3: one non-finite gradient entry makes DeepSpeed's own overflow path drop the step."""
        opt = self.optimizer
        offloaded = getattr(opt, "cpu_offload", False) or getattr(opt, "offload_optimizer", False)
        if offloaded and getattr(opt, "norm_for_param_grads", None):
            first = next(iter(opt.norm_for_param_grads))
            opt.norm_for_param_grads[first] = torch.tensor(math.nan)
            return
        for grads in opt.averaged_gradients.values():  # a new tensor: the reduction buffers stay clean
            for i, grad in enumerate(grads):
                if grad is not None and grad.numel():
                    grads[i] = torch.full_like(grad, math.nan)
                    return

    def backward_and_step(self, loss: torch.Tensor) -> StepResult | None:
        boundary = self.engine.is_gradient_accumulation_boundary()
        lr = self.engine.get_lr()[0]
        self.engine.backward(loss)  # DeepSpeed divides by the accumulation steps itself
        self._loss_sum = loss.detach().float() + (0 if self._loss_sum is None else self._loss_sum)
        if not boundary:
            self.engine.step()  # DeepSpeed's micro-step bookkeeping: no optimizer step
            return None
        loss, self._loss_sum = self._loss_sum / self.accumulate, None
        norm = self._grad_norm()
        ok = bool(torch.isfinite(loss)) and bool(torch.isfinite(norm)) and bool(norm <= self.skip_threshold)
        agreed = torch.tensor([int(ok)], device=collective_device())
        dist.all_reduce(agreed, op=dist.ReduceOp.MIN)  # every rank takes the same decision
        ok = bool(agreed.item())
        skipped_before = self.engine.skipped_steps
        with contextlib.nullcontext() if ok else self._discarding_gradients():
            self.engine.step()
        if self.engine.skipped_steps != skipped_before:  # DeepSpeed's overflow path leaves the schedule behind
            self.scheduler.step()
        return StepResult(ok and self.engine.skipped_steps == skipped_before, loss, norm, lr)

    def close(self) -> None:
        """Give the training state back: DeepSpeed's hooks removed, and the model out of two of ZeRO-3's module
        globals, its module stack and the parameter coordinator's class-wide cache of what to release after each
        layer (either keeps the model, its partitions and the optimizer's state alive to the end of the process:
        the final test of a model larger than one process would run beside its training state)."""
        module = self.engine.module
        self.engine.destroy()
        from deepspeed.runtime.zero import parameter_offload
        from deepspeed.runtime.zero.partitioned_param_coordinator import PartitionedParameterCoordinator

        mine = {id(m) for m in module.modules()}  # a forward that raised leaves its submodules on the stack too
        parameter_offload.FWD_MODULE_STACK[:] = [m for m in parameter_offload.FWD_MODULE_STACK if id(m) not in mine]
        cached = getattr(PartitionedParameterCoordinator, "_PartitionedParameterCoordinator__params_to_release", None)
        cells = [cell.cell_contents for cell in getattr(cached, "__closure__", None) or ()]  # inside an NVTX wrapper
        for found in (cached, *cells):
            if hasattr(found, "cache_clear"):
                found.cache_clear()

    def unwrap(self) -> torch.nn.Module:
        return self.engine.module

    def save(self, folder: Path) -> None:
        """Every rank writes its share under ``folder/zero/`` (collective)."""
        self.engine.save_checkpoint(str(folder), tag=TAG)

    def load(self, folder: Path) -> None:
        try:
            with weights_only_loads():
                path, _ = self.engine.load_checkpoint(str(folder), tag=TAG, load_lr_scheduler_states=True)
        except (pickle.UnpicklingError, OSError, ValueError, KeyError, RuntimeError) as exc:
            raise out_of_memory(exc) or _refused(folder, exc) from None
        if path is None:
            raise CheckpointError(f"{folder}: DeepSpeed found no checkpoint under {TAG}/")


def consolidated_state_dict(folder: Path, into: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The whole float32 weights of a DeepSpeed checkpoint folder (any stage, any number of ranks), in one
    process: ZeRO-3 one rank's file at a time (``_zero3_weights``), ZeRO 1-2 through DeepSpeed's zero_to_fp32 API,
    stage 0 from its model states file. ``into`` (a model's ``state_dict()``): ZeRO-3 weights are written into
    those tensors, so the process holds one copy of the model."""
    _deepspeed()
    from deepspeed.utils import zero_to_fp32

    ds_dir = Path(folder) / TAG
    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet), weights_only_loads():
        try:  # zero_to_fp32 prints its progress
            if not list(ds_dir.glob("*optim_states.pt")):  # stage 0 with torch's optimizer: whole weights
                weights = torch.load(ds_dir / "mp_rank_00_model_states.pt", map_location="cpu")["module"]
            else:
                weights = _zero3_weights(ds_dir, into)
                if weights is None:
                    weights = zero_to_fp32.get_fp32_state_dict_from_zero_checkpoint(str(folder), tag=TAG)
        except (pickle.UnpicklingError, OSError, ValueError, KeyError, RuntimeError) as exc:
            raise out_of_memory(exc) or _refused(folder, exc) from None
    return {k: v.float() if v.is_floating_point() else v for k, v in weights.items()}


def _zero3_weights(ds_dir: Path, into: dict | None) -> dict[str, torch.Tensor] | None:
    """A ZeRO-3 checkpoint's weights, reading the ranks' optimizer files one after another (each memory-mapped,
    copied from and closed): at most the weights plus one rank's file (12Ψ/N bytes) are mapped at once, where
    DeepSpeed's zero_to_fp32 maps every rank's. Parameter p of n elements is split in N partitions of ⌈n/N⌉
    (the last padded); rank r's flat float32 partition is its part of every parameter, in order. ``None``: not a
    ZeRO-3 checkpoint of trainable parameters only (DeepSpeed's API then)."""
    from deepspeed.utils import zero_to_fp32 as z

    model = z.parse_model_states(z.get_model_state_files(str(ds_dir)))[0]
    files = z.get_optim_files(str(ds_dir))
    first = torch.load(files[0], map_location="cpu", mmap=True)[z.OPTIMIZER_STATE_DICT]
    if first.get(z.ZERO_STAGE) != 3 or model.frozen_param_shapes:
        return None
    world = first[z.PARTITION_COUNT]
    del first
    if world != len(files):
        raise ValueError(f"{len(files)} optimizer files for {world} ranks (a rank's file is missing or extra)")
    shapes = {name: torch.Size(shape) for group in model.param_shapes for name, shape in group.items()}
    into = into or {}
    weights = dict(model.buffers)
    for name, shape in shapes.items():
        own = into.get(name)
        ok = own is not None and own.shape == shape and own.dtype == torch.float32 and own.is_contiguous()
        weights[name] = own.detach() if ok else torch.empty(shape, dtype=torch.float32)
    for rank, file in enumerate(files):
        loaded = torch.load(file, map_location="cpu", mmap=True)[z.OPTIMIZER_STATE_DICT][z.FP32_FLAT_GROUPS]
        groups = [group.detach() for group in loaded]  # saved as leaves that need a gradient: no graph to them
        del loaded
        bounds = [0, *itertools.accumulate(group.numel() for group in groups)]
        offset = 0
        for name, shape in shapes.items():
            numel = shape.numel()
            part = math.ceil(numel / world)
            length = max(0, min(part, numel - rank * part))
            if length:
                _copy_range(groups, bounds, offset, weights[name].view(-1)[rank * part : rank * part + length])
            offset += part
        if offset != bounds[-1]:
            raise ValueError(f"{file} holds {bounds[-1]} elements for a partition of {offset}: not this model's")
        del groups  # unmaps this rank's file before the next is mapped
    for alias, name in model.shared_params:
        weights[alias] = weights[name]
    return weights


def _copy_range(chunks: list[torch.Tensor], bounds: list[int], start: int, out: torch.Tensor) -> None:
    """``out`` ← elements ``start .. start + len(out)`` of the concatenation of ``chunks`` (``bounds``: the
    cumulative sizes), without concatenating them."""
    end, done = start + out.numel(), 0
    for chunk, lo, hi in zip(chunks, bounds, bounds[1:], strict=False):
        if hi <= start or lo >= end:
            continue
        a, b = max(start, lo), min(end, hi)
        out[done : done + b - a].copy_(chunk.reshape(-1)[a - lo : b - lo])
        done += b - a
    if done != out.numel():
        raise ValueError(f"a rank's partition ends at element {bounds[-1]}, before {end}")
