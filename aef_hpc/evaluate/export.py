"""``aef-hpc export``: any checkpoint (single, DDP, or a ZeRO checkpoint sharded over N ranks) as one
``model.safetensors`` plus its config, in a checkpoint folder that ``aef-hpc eval`` and ``sample`` open in one
process. It holds everything evaluation uses: the weights (the EMA when the run kept one) and, for aef-linear, the
proposal std the run selected (in the model's ``proposal_std`` buffer, with ``eval.select_proposal_std=false`` in
its config), so evaluating the export reproduces the run's number with no new search."""

import sys
from pathlib import Path

import safetensors.torch

from ..config import to_yaml
from ..engine import open_checkpoint, save_checkpoint
from ..engine.single import load_model_weights
from ..models import ExpandedAEF
from ..models.from_config import model_from_config
from ..progress import Progress
from ..writable import check_writable_folder, give_usual_mode
from .evaluation import proposal_settings, stored_proposal
from .restore import EXPORT_FILE, checkpoint_config, checkpoint_weights, run_config, weights_digest

#: what an export keeps of its checkpoint's metadata
KEPT = ("epoch", "batch_in_epoch", "model", "image_shape", "levels", "validation")


def export(path: str | Path, out: str | Path | None = None) -> Path:
    """Export the checkpoint ``path`` (a run folder: its best) to ``out/step-N/`` (default ``RUN/export``)."""
    if out is not None:
        check_writable_folder(out, "--out")
    checkpoint = open_checkpoint(path)
    cfg = checkpoint_config(checkpoint, (), run_config(path))  # a run folder: the run's config, as its final test
    bar = Progress(2, f"export {checkpoint.path.name}", "stage", every=cfg.train.progress_every)
    model = model_from_config(cfg.model, cfg.model.image_shape)
    # a ZeRO checkpoint: consolidated (the long part), ZeRO-3 into the model's own tensors (one copy in memory)
    state, ema, source = checkpoint_weights(checkpoint, cfg, into=model.state_dict())
    bar.update()
    load_model_weights(model, source, state)  # a mismatch stops here, before anything is written
    selected = None
    if isinstance(model, ExpandedAEF) and cfg.eval.select_proposal_std:
        selected = stored_proposal(checkpoint, proposal_settings(cfg, weights_digest(state), ema))
        if selected is not None:  # the run's own search: evaluation of the export uses it as it is
            model.proposal_std.fill_(selected["proposal_std"])
            cfg.model.proposal_std, cfg.eval.select_proposal_std = selected["proposal_std"], False
        else:
            print(
                f"aef-hpc: note: no proposal search is stored for {checkpoint.path} with these settings: the export "
                f"keeps model.proposal_std={cfg.model.proposal_std}, and evaluating it searches again",
                file=sys.stderr,
            )
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    meta = {k: checkpoint.meta.get(k) for k in KEPT}
    meta.update(engine="export", world_size=1, ema=ema, exported_from=str(checkpoint.path.resolve()))
    if selected is not None:
        meta["proposal"] = {"proposal_std": selected["proposal_std"], "scores": selected["scores"]}

    def write(folder: Path) -> None:
        safetensors.torch.save_file(tensors, str(folder / EXPORT_FILE), metadata={"model": cfg.model.name})
        give_usual_mode(folder / EXPORT_FILE)
        (folder / "config.yaml").write_text(to_yaml(cfg))

    root = Path(out) if out is not None else checkpoint.run_dir / "export"
    written = save_checkpoint(None, checkpoint.step, write, meta, keep_last=2**31, root=root).path
    bar.update()
    bar.close()
    return written
