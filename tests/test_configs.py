"""Every shipped YAML config loads and builds its model; ``configs/paper/`` is exactly what its generator writes."""

import importlib.util
from pathlib import Path

import pytest
import torch

from aef_hpc.config import load_config
from aef_hpc.models.from_config import model_from_config

ROOT = Path(__file__).resolve().parent.parent
#: experiment configs (configs/deepspeed/ holds DeepSpeed presets: tests/test_engine_config.py)
CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if p.parent.name != "deepspeed")
PAPER = ROOT / "configs" / "paper"
DIGITS_SHAPE = (1, 8, 8)


def _generator():
    spec = importlib.util.spec_from_file_location("paper_configs", ROOT / "scripts" / "paper_configs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_configs_found():
    assert len(CONFIGS) > 2 and any(p.parent == PAPER for p in CONFIGS)


@pytest.fixture
def one_thread():
    """Weight init is many small ops: on a busy 2-core machine, two intra-op threads made the ~80 builds take
    ~40 s instead of ~4 s (thread hand-offs, not work)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(ROOT / "configs")) for p in CONFIGS])
def test_config_loads_and_builds(path, float32_default, one_thread):
    """Full-size models on the CPU in float32 (the largest, CelebA-HQ64 AEF-linear at d=512, has 34M
    parameters)."""
    cfg = load_config(path)
    model = model_from_config(cfg.model, cfg.model.image_shape or DIGITS_SHAPE)
    assert sum(p.numel() for p in model.parameters()) > 0
    if cfg.run.name is not None and path.parent == PAPER:
        assert cfg.run.name == path.stem


def test_paper_configs_are_regenerated_exactly(tmp_path):
    files = _generator().generate(tmp_path)
    written = {p.name for p in tmp_path.iterdir()}
    committed = {p.name for p in PAPER.iterdir()}
    assert written == set(files)
    assert committed == written, "run .venv/bin/python scripts/paper_configs.py and commit configs/paper/"
    for name in sorted(written):
        assert (PAPER / name).read_text() == (tmp_path / name).read_text(), f"{name} is stale: regenerate it"


def test_paper_configs_hold_the_paper_settings():
    """The settings the paper fixes hold after loading, including those left to the schema defaults (a changed
    default fails here rather than silently changing the grid)."""
    gen = _generator()
    points = list(gen.grid())
    assert len(points) == 3 * 4 * 5 + 4 * 2 + 3 * 2 + 2 * 2
    for ds, model, latent in points:
        path = PAPER / f"{gen.stem(ds, model, latent)}.yaml"
        first = path.read_text().splitlines()[0]
        assert first.startswith("# ") and f"aef-hpc train --config configs/paper/{path.name}" in first
        cfg = load_config(path)
        for section, values in gen.paper_settings(ds, model, latent).items():
            for key, value in values.items():
                got = getattr(getattr(cfg, section), key)
                assert got == value, f"{path.name}: {section}.{key} is {got!r}, the paper's is {value!r}"
        assert cfg.train.grad_clip == 200 and cfg.train.lr_schedule == "constant"
        assert (cfg.eval.num_samples, cfg.eval.repeats) == (128, 20)
        if model == "aef-linear":
            assert cfg.model.proposal_std == gen.PROPOSAL_STD[ds.key][latent]
            assert cfg.eval.select_proposal_std is False
