r"""An exponential moving average of the weights: :math:`\bar\theta \leftarrow r\bar\theta + (1 - r)\theta` after
every optimizer step (VDVAE uses :math:`r = 0.9999`). Validation and evaluation use it when it is on.

The average starts from the weights after the first step, so data-initialised layers (ActNorm) start right.
"""

import contextlib

import torch


class EMA:
    def __init__(self, model: torch.nn.Module, rate: float):
        self.model, self.rate = model, rate
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        self.shadow: list[torch.Tensor] | None = None

    def update(self) -> None:
        params = dict(self.model.named_parameters())
        current = [params[n].detach() for n in self.names]
        if self.shadow is None:
            self.shadow = [p.clone() for p in current]
        else:
            torch._foreach_lerp_(self.shadow, current, 1.0 - self.rate)

    def state_dict(self) -> dict[str, torch.Tensor] | None:
        return None if self.shadow is None else dict(zip(self.names, self.shadow, strict=True))

    def load_state_dict(self, state: dict[str, torch.Tensor] | None) -> None:
        params = dict(self.model.named_parameters())
        self.shadow = None if state is None else [state[n].to(params[n]) for n in self.names]

    @contextlib.contextmanager
    def applied(self):
        """Temporarily swap the averaged weights into the model (nothing happens before the first update)."""
        if self.shadow is None:
            yield
            return
        params = dict(self.model.named_parameters())
        saved = [params[n].detach().clone() for n in self.names]
        with torch.no_grad():
            for n, s in zip(self.names, self.shadow, strict=True):
                params[n].copy_(s)
        try:
            yield
        finally:
            with torch.no_grad():
                for n, s in zip(self.names, saved, strict=True):
                    params[n].copy_(s)


def weights_with_ema(model_state: dict, ema_state: dict | None) -> dict:
    """The model's state dict with its parameters replaced by their averages (when there are any)."""
    return {**model_state, **(ema_state or {})}
