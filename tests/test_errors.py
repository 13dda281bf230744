"""Bad input raises an error that names the problem: data, model requests and configuration."""

import pytest
import torch

from aef_hpc import build_model
from aef_hpc.config import load_config
from aef_hpc.errors import AEFError, ConfigError, DataError, ModelError


@pytest.fixture
def model():
    return build_model("aef-center", (1, 4, 4), 2, architecture="mlp", hidden=8)


@pytest.mark.parametrize("method", ["loss", "marginal_log_prob", "encode"])
def test_wrong_image_shape(model, method):
    with pytest.raises(DataError, match=r"expected images of shape \[B, 1, 4, 4\], got \[2, 1, 8, 8\]"):
        getattr(model, method)(torch.rand(2, 1, 8, 8))
    with pytest.raises(DataError, match="expected images of shape"):
        getattr(model, method)(torch.rand(1, 4, 4))


@pytest.mark.parametrize("name", ["aef-center", "aef-linear", "vae"])
def test_values_outside_unit_interval_and_nan(name):
    m = build_model(name, (1, 2, 2), 1, architecture="mlp", hidden=4)
    with pytest.raises(DataError, match=r"outside \[0, 1\]"):
        m.loss(torch.full((1, 1, 2, 2), 255.0))
    x = torch.rand(1, 1, 2, 2)
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(DataError, match="NaN"):
        m.loss(x)


def test_integer_images_are_refused(model):
    with pytest.raises(DataError, match="floating-point"):
        model.loss(torch.zeros(1, 1, 4, 4, dtype=torch.uint8))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(name="aef-middle", image_shape=(1, 8, 8), latent_dim=2), "unknown model 'aef-middle'"),
        (dict(name="aef-center", image_shape=(1, 8, 8), latent_dim=64), "latent_dim=64 is impossible"),
        (dict(name="aef-corner", image_shape=(1, 8, 8), latent_dim=100), "latent_dim=100 is impossible"),
        (dict(name="aef-linear", image_shape=(1, 28, 28), latent_dim=2, architecture="big"), "square power-of-two"),
        (dict(name="vae", image_shape=(1, 8, 8), latent_dim=0), "latent_dim must be a positive int"),
        (dict(name="vae", image_shape=(8, 8), latent_dim=2), "image_shape must be three positive ints"),
        (dict(name="vae", image_shape=(1, 8, 8), latent_dim=2, prior_flow="glow"), "unknown flow 'glow'"),
        (
            dict(name="iwae", image_shape=(1, 8, 8), latent_dim=2, decoder_variance="learned"),
            "decoder_variance='learned'",
        ),
        (dict(name="vae", image_shape=(1, 8, 8), latent_dim=2, proposal_std=0.1), "unknown option"),
    ],
)
def test_impossible_model_requests(kwargs, match):
    with pytest.raises(ModelError, match=match):
        build_model(**kwargs)


@pytest.mark.parametrize(
    "overrides,match",
    [
        (["train.nosuch=1"], "train.nosuch"),
        (["nosection.steps=1"], "nosection"),
        (["train.steps=many"], "train.steps"),
        (["model.latent_dim=2.5"], "model.latent_dim"),
        (["train.steps=0"], "train.steps=0 must be at least 1"),
        (["train.lr=-1"], "train.lr=-1.0 must be positive"),
        (["data.test_fraction=0.95"], "data.val_fraction"),
        (["train.steps"], "not of the form key=value"),
        (["train.steps=-5", "train.steps=7"], "train.steps=-5 must be at least 1"),  # every value given is checked
        (["train.steps=7", "train.steps=0"], "train.steps=0 must be at least 1"),
    ],
)
def test_config_errors_name_the_key(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(overrides=overrides)


def test_a_key_given_twice_takes_the_last_value():
    assert load_config(overrides=["train.steps=5", "train.lr=0.1", "train.steps=7"]).train.steps == 7


def test_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  stepz: 3\n")
    with pytest.raises(ConfigError, match=r"train.stepz.*bad.yaml"):
        load_config(bad)


def test_every_library_error_is_an_aef_error():
    for cls in (ConfigError, DataError, ModelError):
        assert issubclass(cls, AEFError)


def test_shipped_configs_load():
    from pathlib import Path

    for path in sorted((Path(__file__).parent.parent / "configs").glob("*.yaml")):
        load_config(path)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(flow_hidden=-1, prior_flow="maf"), "flow_hidden=-1 must be an int of at least 1"),
        (dict(flow_layers=0, prior_flow="maf"), "flow_layers=0 must be an int of at least 1"),
        (dict(hidden=-3, architecture="mlp"), "hidden=-3 must be an int of at least 1"),
        (dict(hidden_channels=0), "hidden_channels=0 must be an int of at least 1"),
    ],
)
def test_negative_or_zero_widths_are_refused(kwargs, match):
    with pytest.raises(ModelError, match=match):
        build_model("vae", (1, 8, 8), 2, **kwargs)


def test_an_aef_linear_latent_larger_than_the_image_is_refused():
    with pytest.raises(ModelError, match="latent_dim=17 is larger than the image"):
        build_model("aef-linear", (1, 4, 4), 17, architecture="mlp", hidden=8)


@pytest.mark.parametrize(
    "overrides",
    [
        ["model.flow_layers=0"],
        ["data.shuffle_buffer=0"],
        ["eval.grid_samples=0"],
        ["run.name=../../escape"],
        ["data.on_bad_shard=ignore"],
    ],
)
def test_config_values_without_a_meaning_are_refused(overrides):
    with pytest.raises(ConfigError, match=overrides[0].split("=")[0]):
        load_config(overrides=overrides)


@pytest.mark.parametrize(
    "args,match",
    [((0,), "n=0"), ((2, -1.0), "temperature=-1.0"), ((2, "hot"), "'hot'"), ((2, float("inf")), "temperature=inf")],
)
def test_sample_arguments(model, args, match):
    with pytest.raises(ModelError, match=match):
        model.sample(*args)


def test_a_batch_of_another_dtype_or_an_empty_batch_is_one_clear_error(model):
    with pytest.raises(DataError, match=r"torch.float32 but the model's parameters are torch.float64: convert"):
        model.loss(torch.rand(2, 1, 4, 4, dtype=torch.float32))
    with pytest.raises(DataError, match="the batch is empty"):
        model.loss(torch.rand(0, 1, 4, 4))


def test_a_yaml_file_whose_top_level_is_not_a_mapping(tmp_path):
    for text, match in (("- 1\n- 2\n", "must be a mapping"), ("3\n", "not valid YAML"), ("words\n", "'words'")):
        path = tmp_path / "bad.yaml"
        path.write_text(text)
        with pytest.raises(ConfigError, match=rf"bad.yaml.*{match}|{match}.*bad.yaml"):
            load_config(path)


@pytest.mark.parametrize(
    "latent,deviations,match",
    [
        ((3, 5), None, r"latents of shape \[B, 2\], got \[3, 5\]"),
        ((3,), None, r"latents of shape \[B, 2\], got \[3\]"),
        ("float32", None, "non-empty torch.float64 batch of latents"),
        ((0, 2), None, "non-empty"),
        ((3, 2), (2, 1, 4, 4), r"deviations torch.float64 \[2, 1, 4, 4\] do not match 3 latents"),
    ],
)
def test_decode_checks_its_latents(model, latent, deviations, match):
    latent = torch.zeros(3, 2, dtype=torch.float32) if latent == "float32" else torch.zeros(latent)
    with pytest.raises(DataError, match=match):
        model.decode(latent, None if deviations is None else torch.zeros(deviations))


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: build_model("vae", (1, 4, 4), True, architecture="mlp"), "latent_dim must be a positive int"),
        (lambda: build_model("vae", (1, 4, 4), 2, architecture="mlp", alpha="0.1"), "alpha='0.1'"),
        (lambda: build_model("aef-linear", (1, 4, 4), 2, architecture="mlp", proposal_std=-1), "proposal_std=-1"),
        (lambda: build_model("aef-linear", (1, 4, 4), 2, proposal_std=float("nan")), "proposal_std=nan"),
        (lambda: build_model("iwae", (1, 4, 4), 2, architecture="mlp", num_samples=0), "num_samples=0"),
        (lambda: build_model("vae", (1, 4, 4), 2, architecture="mlp").elbo(torch.rand(2, 1, 4, 4), 0), "num_samples=0"),
        (
            lambda: build_model("vae", (1, 4, 4), 2, architecture="mlp").marginal_log_prob(torch.rand(2, 1, 4, 4), 4.0),
            "num_samples=4.0",
        ),
        (lambda: build_model("vae", (1, 4, 4), 2, architecture="mlp").sample(2, generator=5), "torch.Generator"),
    ],
)
def test_the_public_api_raises_aef_errors(call, match):
    with pytest.raises(ModelError, match=match):
        call()


@pytest.mark.parametrize(
    "exc,said",
    [
        (RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you "
                      "tried to allocate 8294400 bytes. Error code 12 (Cannot allocate memory)"),
         "out of memory: DefaultCPUAllocator: can't allocate memory: you tried to allocate 8294400 bytes."),
        (RuntimeError("unable to mmap 1024 bytes from file <x.pt>: Cannot allocate memory (12)"),
         "out of memory: unable to mmap 1024 bytes"),
        (MemoryError(), "out of memory: MemoryError"),
        (OSError(12, "Cannot allocate memory"), "out of memory: [Errno 12] Cannot allocate memory"),
        (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), "out of memory: CUDA out of memory."),
        (RuntimeError("mat1 and mat2 shapes cannot be multiplied"), None),
        (OSError(2, "No such file or directory"), None),
        (ValueError("can't allocate memory"), None),
    ],
)  # fmt: skip
def test_a_failed_allocation_is_one_out_of_memory_line_and_nothing_else_is(exc, said):
    from aef_hpc.errors import OutOfMemory, out_of_memory

    found = out_of_memory(exc)
    if said is None:
        assert found is None
    else:
        assert isinstance(found, OutOfMemory) and str(found).startswith(said) and "zero3-lean.yaml" in str(found)
        assert "\n" not in str(found)
