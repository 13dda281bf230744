"""The DeepSpeed dict comes from train.* plus a preset that may set only the ZeRO options; contradictions and
unsupported combinations are one ConfigError naming both keys, before anything runs."""

import pytest

from aef_hpc.config import load_config
from aef_hpc.engine.deepspeed import deepspeed_config
from aef_hpc.errors import ConfigError


def _cfg(*overrides):
    return load_config(None, ["engine=deepspeed", *overrides])


@pytest.mark.parametrize("preset,stage", [("zero0", 0), ("zero1", 1), ("zero2", 2), ("zero3", 3), ("zero3-lean", 3)])
def test_presets_take_batch_accumulation_clipping_adam_and_precision_from_train(preset, stage):
    cfg = _cfg(f"deepspeed.config=configs/deepspeed/{preset}.yaml", "train.batch_size=12", "train.accumulate=3",
               "train.grad_clip=7.5", "train.lr=0.002", "train.precision=bf16")  # fmt: skip
    ds = deepspeed_config(cfg)
    assert ds["zero_optimization"]["stage"] == stage
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"], ds["gradient_clipping"]) == (
        12, 3, 7.5
    )  # fmt: skip
    assert ds["optimizer"]["params"] == {"lr": 0.002, "adam_w_mode": False, "torch_adam": True}
    assert ds["torch_autocast"] == {"enabled": True, "dtype": "bfloat16"} and "bf16" not in ds


@pytest.mark.parametrize(
    "text,match",
    [
        ("gradient_clipping: 1.0\n", "sets gradient_clipping: remove it, aef_hpc sets it from train.grad_clip"),
        ("train_batch_size: 64\n", "from train.batch_size"),
        ("bf16: {enabled: true}\n", "from train.precision"),
        ("zero_optimization: {stage: 4}\n", "stage=4 must be 0, 1, 2 or 3"),
        ("- a\n- b\n", "must be a mapping"),
        ("zero_optimization: [\n", "not valid YAML"),
        ("zero_optimization: {stage: 2, compute_grad_norm: false}\n", "sets zero_optimization.compute_grad_norm"),
        ("zero_optimisation: {stage: 2}\n", "unknown key zero_optimisation .did you mean zero_optimization"),
        ("zero_optimization: {stage: 2, overlap_com: true}\n", "did you mean zero_optimization.overlap_comm"),
        ("wall_clock: true\n", "unknown key wall_clock"),
    ],
)
def test_bad_presets_are_one_line(tmp_path, text, match):
    preset = tmp_path / "p.yaml"
    preset.write_text(text)
    with pytest.raises(ConfigError, match=match):
        deepspeed_config(_cfg(f"deepspeed.config={preset}"))


@pytest.mark.parametrize(
    "overrides,match",
    [
        (["deepspeed.config=nope.yaml"], "no such file"),
        (["train.compile=true"], "train.compile is not supported"),
        (["deepspeed.config=configs/deepspeed/zero3.yaml", "train.ema_rate=0.99"], "not supported under ZeRO-3"),
        (["deepspeed.config=configs/deepspeed/zero0.yaml", "deepspeed.offload_optimizer=true"], "stage 1, 2 or 3"),
    ],
)
def test_unsupported_combinations_are_refused(overrides, match):
    with pytest.raises(ConfigError, match=match):
        deepspeed_config(_cfg(*overrides))


def test_offload_keeps_adam_states_on_the_cpu():
    ds = deepspeed_config(_cfg("deepspeed.config=configs/deepspeed/zero2.yaml", "deepspeed.offload_optimizer=true"))
    assert ds["zero_optimization"]["offload_optimizer"] == {"device": "cpu"}
    assert ds["optimizer"]["params"]["torch_adam"] is False  # DeepSpeedCPUAdam does the offloaded step
