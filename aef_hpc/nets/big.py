"""The "big" VDVAE-like encoder/decoder of method.md §2.2, channel width = latent dim d (the paper's), or a width
``w`` of its own (``model.width``: a model larger than one process for ZeRO-3; a 1×1 convolution d → w starts the
decoder, the encoder's last block ends at 2d as before).

Block strings are generated for any square power-of-two resolution from 8 to 256: the encoder halves the
resolution down to 4, pools 4 → 1 and ends in a non-residual d → 2d block; the decoder mirrors it with
nearest upsampling. At 32×32 and 64×64 they equal the reference code's final strings.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError
from .base import Decoder, Encoder

BOTTLENECK = 0.25
MIN_RES, MAX_RES = 8, 256


def check_big_shape(image_shape) -> int:
    _, h, w = image_shape
    if h != w or h < MIN_RES or h > MAX_RES or h & (h - 1):
        raise ModelError(
            f"architecture 'big' needs a square power-of-two image from {MIN_RES} to {MAX_RES} pixels, got {h}x{w}:"
            " resize the data or use 'small' or 'mlp'"
        )
    return h


def encoder_block_string(res: int) -> str:
    """E.g. 32 → ``32x4,32d2,16x4,16d2,8x4,8d2,4x4,4d4,1x4``."""
    parts, r = [], res
    while r > 4:
        parts += [f"{r}x4", f"{r}d2"]
        r //= 2
    return ",".join(parts + ["4x4", "4d4", "1x4"])


def decoder_block_string(res: int) -> str:
    """E.g. 32 → ``1x4,4m1,4x4,8m4,8x4,16m8,16x4,32m16,32x4``."""
    parts, r = ["1x4", "4m1", "4x4"], 8
    while r <= res:
        parts += [f"{r}m{r // 2}", f"{r}x4"]
        r *= 2
    return ",".join(parts)


def parse_blocks(spec: str) -> list[tuple[int, str, int]]:
    """``"RxN"`` → N × (R, 'x', 0); ``"RdK"`` → (R, 'd', K); ``"RmM"`` → (R, 'm', M)."""
    out = []
    for token in spec.split(","):
        for kind in "xdm":
            if kind in token:
                res, arg = (int(v) for v in token.split(kind))
                out += [(res, "x", 0)] * arg if kind == "x" else [(res, kind, arg)]
                break
    return out


class _Conv(nn.Conv2d):
    """A same-size convolution with a zero bias and its default weight times ``scale``, set in its own ``__init__``
    (under ZeRO-3's ``zero.Init`` a module's parameters are partitioned when its own ``__init__`` returns, so a
    parent's later change to them would be lost)."""

    def __init__(self, c_in: int, c_out: int, k: int, scale: float = 1.0):
        super().__init__(c_in, c_out, k, padding=k // 2)
        nn.init.zeros_(self.bias)
        with torch.no_grad():
            self.weight.mul_(scale)


class Block(nn.Module):
    """GELU→1×1, GELU→3×3, GELU→3×3, GELU→1×1 (3×3s become 1×1 at resolution ≤ 2), optional residual."""

    def __init__(self, c_in: int, c_mid: int, c_out: int, use_3x3: bool, residual: bool, last_scale: float):
        super().__init__()
        k = 3 if use_3x3 else 1
        self.convs = nn.ModuleList(
            [
                _Conv(c_in, c_mid, 1),
                _Conv(c_mid, c_mid, k),
                _Conv(c_mid, c_mid, k),
                _Conv(c_mid, c_out, 1, last_scale),
            ]
        )
        self.residual = residual

    def forward(self, x):
        h = x
        for conv in self.convs:
            h = conv(F.gelu(h))
        return x + h if self.residual else h


def _blocks(spec: str, width: int, final_out: int | None = None) -> tuple[list, nn.ModuleList]:
    """Blocks of ``width`` channels, all residual; with ``final_out`` the last one maps ``width -> final_out`` and is
    not residual (the encoder's ``-> 2d``, whatever ``width`` is)."""
    layout = parse_blocks(spec)
    mid = max(1, math.floor(BOTTLENECK * width))
    scale = math.sqrt(1 / len(layout))
    blocks = nn.ModuleList()
    for i, (res, _, _) in enumerate(layout):
        last = i == len(layout) - 1 and final_out is not None
        blocks.append(Block(width, mid, final_out if last else width, res > 2, not last, scale))
    return layout, blocks


class BigEncoder(Encoder):
    """3×3 conv C → w, residual blocks with average pooling, last block w → 2d at 1×1 (w = d by default)."""

    def __init__(self, image_shape, latent_dim: int, width: int | None = None):
        super().__init__()
        res = check_big_shape(image_shape)
        width = width or latent_dim
        self.in_conv = nn.Conv2d(image_shape[0], width, 3, padding=1)
        self.layout, self.blocks = _blocks(encoder_block_string(res), width, 2 * latent_dim)

    def heads(self, y):
        h = self.in_conv(y)
        for (_, kind, arg), block in zip(self.layout, self.blocks, strict=True):
            h = block(h)
            if kind == "d":
                h = F.avg_pool2d(h, arg)
        mu, raw = h.flatten(1).chunk(2, dim=1)
        return mu, raw


class BigDecoder(Decoder):
    """z as d×1×1 (1×1 conv d → w when w ≠ d), residual blocks with nearest upsampling, per-channel gain and bias,
    1×1 conv w → C or 2C (w = d by default)."""

    def __init__(self, image_shape, latent_dim: int, variance: str, width: int | None = None):
        super().__init__(image_shape, variance, independent_init=1.0)
        res = check_big_shape(image_shape)
        width = width or latent_dim
        self.in_conv = nn.Conv2d(latent_dim, width, 1) if width != latent_dim else None
        self.layout, self.blocks = _blocks(decoder_block_string(res), width)
        self.gain = nn.Parameter(torch.ones(1, width, 1, 1))
        self.bias = nn.Parameter(torch.zeros(1, width, 1, 1))
        self.out_conv = nn.Conv2d(width, self.out_channels, 1)

    def trunk(self, z):
        h = z[:, :, None, None]
        if self.in_conv is not None:
            h = self.in_conv(h)
        for (res, kind, arg), block in zip(self.layout, self.blocks, strict=True):
            if kind == "m":
                h = F.interpolate(h, scale_factor=res // arg, mode="nearest")
            h = block(h)
        return self.out_conv(h * self.gain + self.bias)
