"""Masks reproduce method.md §1.3's table exactly, and always hold exactly latent_dim entries."""

import pytest
import torch

from aef_hpc.errors import ModelError
from aef_hpc.models import build_mask


def cells(*groups):
    out = set()
    for rows, cols in groups:
        rows = rows if isinstance(rows, range) else [rows]
        cols = cols if isinstance(cols, range) else [cols]
        out |= {(r, c) for r in rows for c in cols}
    return out


R = range
TABLE = {
    ("center", 2): cells((13, 13), (14, 13)),
    ("center", 4): cells((R(13, 15), R(13, 15))),
    ("center", 8): cells((12, R(12, 15)), (13, R(12, 15)), (14, 13), (14, 14)),
    ("center", 16): cells((R(12, 16), R(12, 16))),
    ("center", 32): cells((R(11, 15), R(11, 16)), (15, R(11, 17)), (16, R(11, 17))),
    ("corner", 2): cells((0, 0), (0, 27)),
    ("corner", 4): cells((0, 0), (0, 27), (27, 0), (27, 27)),
    ("corner", 8): cells((0, 0), (0, 27), (1, 0), (1, 27), (26, 0), (26, 27), (27, 0), (27, 27)),
    ("corner", 16): cells(
        (0, 0),
        (0, 1),
        (0, 26),
        (0, 27),
        (1, 0),
        (1, 27),
        (2, 0),
        (2, 27),
        (25, 0),
        (25, 27),
        (26, 0),
        (26, 27),
        (27, 0),
        (27, 1),
        (27, 26),
        (27, 27),
    ),
    ("corner", 32): cells(
        (0, R(0, 4)),
        (0, R(24, 28)),
        (R(1, 5), 0),
        (R(1, 5), 27),
        (R(23, 27), 0),
        (R(23, 27), 27),
        (27, R(0, 4)),
        (27, R(24, 28)),
    ),
}


@pytest.mark.parametrize("kind,d", sorted(TABLE))
def test_table_1x28x28(kind, d):
    mask = build_mask(kind, (1, 28, 28), d)
    got = {tuple(rc) for rc in mask[0].nonzero().tolist()}
    assert got == TABLE[(kind, d)]


@pytest.mark.parametrize(
    "kind,d,counts",
    [
        ("center", 64, (22, 21, 21)),
        ("center", 128, (43, 43, 42)),
        ("center", 256, (86, 85, 85)),
        ("corner", 64, (24, 20, 20)),
        ("corner", 128, (44, 44, 40)),
        ("corner", 256, (88, 84, 84)),
    ],
)
@pytest.mark.parametrize("size", [32, 64])
def test_per_channel_counts_3_channels(kind, d, counts, size):
    mask = build_mask(kind, (3, size, size), d)
    assert tuple(mask.sum(dim=(1, 2)).tolist()) == counts


def test_center_64_block_position():
    for size in (32, 64):
        mask = build_mask("center", (3, size, size), 64)
        rows, cols = mask.any(0).nonzero().T
        off = size // 2 - 1
        assert (rows.min().item(), rows.max().item(), cols.min().item(), cols.max().item()) == (
            off - 2,
            off + 2,
            off - 2,
            off + 2,
        )


SHAPES = [(1, 1, 2), (1, 3, 3), (2, 5, 7), (3, 4, 4), (1, 8, 8), (3, 6, 5), (1, 1, 9)]


@pytest.mark.parametrize("kind", ["center", "corner", "checkerboard"])
@pytest.mark.parametrize("shape", SHAPES)
def test_mask_sum_equals_latent_dim_everywhere(kind, shape):
    total = shape[0] * shape[1] * shape[2]
    for d in sorted(d for d in {1, 2, 3, total // 2, total - 1} if 1 <= d < total):
        mask = build_mask(kind, shape, d)
        assert mask.dtype == torch.bool and mask.shape == shape
        assert int(mask.sum()) == d, (kind, shape, d)


def test_checkerboard_prefers_one_colour_and_spreads():
    mask = build_mask("checkerboard", (1, 8, 8), 32)
    i, j = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    assert torch.equal(mask[0], (i + j) % 2 == 0)
    rows = build_mask("checkerboard", (1, 8, 8), 8)[0].nonzero()[:, 0]
    assert len(set(rows.tolist())) >= 4, "8 entries spread over the image, not packed in the first rows"


@pytest.mark.parametrize("d", [0, 4, 5])
def test_impossible_latent_dim(d):
    with pytest.raises(ModelError, match=f"latent_dim={d}"):
        build_mask("center", (1, 2, 2), d)


def test_unknown_mask():
    with pytest.raises(ModelError, match="unknown mask 'spiral'"):
        build_mask("spiral", (1, 4, 4), 2)
