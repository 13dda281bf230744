"""The whole-model row of ``bench kernels``: one Adam step of the big aef-linear with kernels=triton and =eager.

The model: ``build_model("aef-linear", image, latent, architecture="big")`` with MAF core and prior flows, its
ActNorms initialised on the batch; one step is ``model.loss(x).mean()``, backward, Adam, ``zero_grad`` on one
batch of uniform random images. Times are per step after warm-up (CUDA events on a GPU).
"""

import torch

from ..kernels import use_kernels
from ..models import build_model
from .timing import peak_mb, quantiles, time_runs

OP = "train_step_aef_linear_big"


def _train_step(provider: str, device, batch: int, latent: int, image):
    """A closure running one Adam step of the big aef-linear with ``kernels=provider``."""
    torch.manual_seed(0)
    model = build_model("aef-linear", image, latent, architecture="big", prior_flow="maf", posterior_flow="maf")
    model = model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.rand(batch, *image, device=device)
    with use_kernels(provider):
        model.initialize(x)

    def step():
        with use_kernels(provider):
            loss = model.loss(x).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def step_rows(device, batch=16, latent=128, warmup=3, repeats=10, image=(3, 64, 64)) -> list[dict]:
    """One row per provider (``triton``, ``eager``): the step's ms quantiles and CUDA peak memory."""
    rows = []
    for provider in ("triton", "eager"):
        step = _train_step(provider, device, batch, latent, image)
        p20, p50, p80 = quantiles(time_runs(step, device, warmup, repeats))
        rows.append(
            dict(
                op=OP,
                case="step",
                provider=provider,
                mode="full",
                size="x".join(map(str, image)),
                batch=batch,
                dtype="float32",
                ms_p20=round(p20, 3),
                ms_p50=round(p50, 3),
                ms_p80=round(p80, 3),
                peak_mb=round(peak_mb(step, device), 1),
            )
        )
    return rows
