"""The single-process engine: Adam (or any optimizer), an LR schedule, gradient accumulation, clipping and the
skipping of bad steps.

A step is skipped (no parameter change) when its loss or gradient norm is not finite, or the norm exceeds
``skip_threshold`` (VDVAE's rule). The decision costs one host synchronisation per optimizer step: the three
checks are fused into one boolean before it is read.
"""

import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import CheckpointError
from .checkpoint import load_file

ENGINE_FILES = ("model.pt", "optimizer.pt")

# the schedule follows the step count, taken or skipped: torch's warning about a schedule stepped without its
# optimizer is known and harmless, filtered once here (a filter set at every step would reset Python's
# once-per-place warning registry and print every other warning again at each step)
warnings.filterwarnings("ignore", re.escape("Detected call of `lr_scheduler.step()` before"), UserWarning)


@dataclass
class StepResult:
    """The outcome of one optimizer step: whether it was taken, its objective (the mean over its micro-batches)
    and the gradient norm before clipping (both still on the device)."""

    stepped: bool
    loss: torch.Tensor
    grad_norm: torch.Tensor
    lr: float
    """the learning rate this step used (or would have)"""


class SingleEngine:
    """Drives one model in one process; ``backward_and_step`` returns ``None`` between accumulation boundaries."""

    name = "single"

    def __init__(
        self,
        model,
        optimizer,
        scheduler,
        grad_clip: float,
        accumulate: int = 1,
        skip_threshold=None,
        compile: bool = False,
        precision: str = "fp32",
    ):
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.grad_clip, self.accumulate = grad_clip, accumulate
        self.skip_threshold = math.inf if skip_threshold is None else skip_threshold
        self._forward = torch.compile(model) if compile else model
        device = next(model.parameters()).device
        self._autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
        self._micro, self._loss_sum = 0, None

    def loss(self, x: torch.Tensor, noise=None) -> torch.Tensor:
        """The per-sample training objective ``[B]`` of the wrapped model (bf16 autocast when asked); ``noise``:
        the model's own draws (``KeyedNoise``), see ``GenerativeAutoencoder.loss``."""
        with self._autocast:
            return self._call(x, noise)

    def _call(self, x: torch.Tensor, noise) -> torch.Tensor:
        return self._forward(x, noise)

    #: whether a forward needs every rank (ZeRO-3); DDP's evaluation forward runs the plain module
    forward_is_collective = False

    def eval_loss(self, x: torch.Tensor, noise=None) -> torch.Tensor:
        """The objective outside training (validation): the plain model in float32."""
        return self.model.loss(x, noise)

    def _agree(self, ok: torch.Tensor) -> torch.Tensor:
        """The step decision every rank takes (one process: its own)."""
        return ok

    def backward_and_step(self, loss: torch.Tensor) -> StepResult | None:
        """Accumulate ``loss / accumulate``; at a boundary clip, check, and step (or skip) the optimizer."""
        (loss / self.accumulate).backward()
        self._loss_sum = loss.detach() if self._loss_sum is None else self._loss_sum + loss.detach()
        self._micro += 1
        if self._micro % self.accumulate:
            return None
        params = [p for p in self.model.parameters() if p.grad is not None]
        lr = self.optimizer.param_groups[0]["lr"]
        norm = torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        ok = torch.isfinite(self._loss_sum) & torch.isfinite(norm) & (norm <= self.skip_threshold)
        stepped = bool(self._agree(ok))  # the one host synchronisation of a step
        if stepped:
            self.optimizer.step()
        self.scheduler.step()  # it follows the step count, taken or skipped (torch's warning: filtered above)
        self.optimizer.zero_grad(set_to_none=True)
        loss, self._loss_sum = self._loss_sum / self.accumulate, None
        return StepResult(stepped, loss, norm.detach(), lr)

    def close(self) -> None:
        """Nothing to give back: the model and optimizer go with the engine."""

    def unwrap(self) -> torch.nn.Module:
        return self.model

    def save(self, folder: Path) -> None:
        """The model's weights and the optimizer and schedule state, as ``model.pt`` and ``optimizer.pt``."""
        torch.save(self.model.state_dict(), folder / "model.pt")
        torch.save(
            {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()},
            folder / "optimizer.pt",
        )

    def load(self, folder: Path) -> None:
        load_model_weights(self.model, folder / "model.pt")
        state = load_file(folder / "optimizer.pt", ("optimizer", "scheduler"))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])


def load_model_weights(model: torch.nn.Module, path: Path, state: dict | None = None) -> None:
    """Load ``path`` (or an already loaded ``state``) into ``model``; a mismatch is one ``CheckpointError`` line."""
    if state is None:
        state = load_file(path)
    if not all(torch.is_tensor(v) for v in state.values()):
        raise CheckpointError(f"{path} is not an aef_hpc checkpoint file (its values are not all tensors)")
    own = model.state_dict()
    missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or extra:
        raise CheckpointError(
            f"{path} holds the weights of another model ({len(missing)} tensors missing, e.g. "
            f"{(missing or ['-'])[0]}; {len(extra)} unexpected, e.g. {(extra or ['-'])[0]}): check model.name"
        )
    for key, value in state.items():
        if tuple(value.shape) != tuple(own[key].shape):
            raise CheckpointError(
                f"{path}: {key} has shape {list(value.shape)} but the model's is {list(own[key].shape)}: the "
                "checkpoint belongs to another latent size, architecture or image shape"
            )
    model.load_state_dict(state)
