"""Run in one process (a gloo group of one): every model, architecture and flow built under ZeRO-3's
``zero.Init`` holds, gathered, exactly the weights of the same model built plainly from the same seed (a change a
parent's ``__init__`` makes to a child's parameters after the child is built is lost under ``zero.Init``).

Also: a collective initialisation under ZeRO-3 that fails at a later ActNorm changes no ActNorm (all or nothing,
as in one process).

Usage: zero_init.py OUT   Writes OUT (JSON): for each case, the names of the parameters that differ; "rollback":
whether the failed initialisation left every ActNorm as it was.
"""

import json
import sys

import torch

from aef_hpc import build_model
from aef_hpc.config import load_config
from aef_hpc.engine.deepspeed import deepspeed_config, gathered, model_scope
from aef_hpc.errors import DataError
from aef_hpc.flows.actnorm import ActNorm
from aef_hpc.models.from_config import model_from_config
from aef_hpc.process_group import discover, init_distributed, leave_distributed
from aef_hpc.train.collective import initialize_collectively

CASES = [
    (model, architecture, flow)
    for model in ("aef-center", "aef-linear", "vae", "iwae")
    for architecture in ("mlp", "small", "big")
    for flow in ("maf", "iaf", "realnvp")
]


def main(out: str) -> None:
    init_distributed(discover(), torch.device("cpu"), force=True)
    result = {}
    for model, architecture, flow in CASES:
        cfg = load_config(None, [f"model.name={model}", f"model.architecture={architecture}", "model.latent_dim=4",
                                 f"model.prior_flow={flow}", f"model.posterior_flow={flow}",
                                 *(["model.width=8"] if architecture == "big" else []),
                                 "engine=deepspeed", "deepspeed.config=configs/deepspeed/zero3.yaml"])  # fmt: skip
        torch.manual_seed(0)
        plain = model_from_config(cfg.model, (1, 8, 8))
        torch.manual_seed(0)
        with model_scope(deepspeed_config(cfg)):
            partitioned = model_from_config(cfg.model, (1, 8, 8))
        with gathered(partitioned):
            pairs = zip(plain.named_parameters(), partitioned.named_parameters(), strict=True)
            result[f"{model}/{architecture}/{flow}"] = [n for (n, a), (_, b) in pairs if not torch.equal(a, b)]
    with model_scope(deepspeed_config(cfg)):  # the pixels have spread, the one latent of one image has none
        model = build_model("aef-center", (1, 4, 4), 1, architecture="mlp", hidden=8, prior_flow="maf", flow_hidden=8)
    try:
        initialize_collectively(model, 0.05 + 0.9 * torch.rand(1, 1, 4, 4))
    except DataError:
        pass
    with gathered(model):
        norms = [m for m in model.modules() if isinstance(m, ActNorm)]
        result["rollback"] = not any(bool(m.initialized) or m.log_scale.abs().sum() > 0 for m in norms)
    with open(out, "w") as handle:
        json.dump(result, handle)
    leave_distributed()


if __name__ == "__main__":
    main(sys.argv[1])
