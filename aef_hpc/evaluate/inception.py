"""The FID InceptionV3 (pytorch-fid's ``fid_inception_v3``) in plain torch: pool3 features, no torchvision.

The layout and parameter names are torchvision's ``Inception3`` with pytorch-fid's FID patches (every average
pool ignores padding; Mixed_7c's pool branch is a max pool), so the state dict of
``pt_inception-2015-12-05-6726825d.pth`` loads key for key. Only the convolutional trunk is built: the
classifier (``fc``, 1008 classes) and the auxiliary head are never used for pool3 and are ignored when loading.
"""

from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, DataError

__all__ = ["FIDInceptionV3", "load_inception", "FEATURE_DIM"]

FEATURE_DIM = 2048
"""pool3 width: the features FID and IFE are computed on."""

_IGNORED_PREFIXES = ("fc.", "AuxLogits.")
_FC_SHAPE = (1008, 2048)


class BasicConv2d(nn.Module):
    """relu(bn(conv(x))): a convolution without bias, then BatchNorm (eps 1e-3), then ReLU."""

    def __init__(self, cin: int, cout: int, **conv):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **conv)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _avg_pool(x):
    """3×3 average pool, stride 1, over the unpadded pixels only (TensorFlow's SAME pooling)."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """35×35 block: [1×1 | 1×1→5×5 | 1×1→3×3→3×3 | avgpool→1×1], 224 + pool_features channels out."""

    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(cin, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, kernel_size=1)

    def forward(self, x):
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch5x5_2(self.branch5x5_1(x)),
                self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                self.branch_pool(_avg_pool(x)),
            ],
            1,
        )


class InceptionB(nn.Module):
    """35→17 reduction: [3×3/2 | 1×1→3×3→3×3/2 | maxpool/2] concatenated, 384 + 96 + cin channels."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x):
        return torch.cat(
            [
                self.branch3x3(x),
                self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                F.max_pool2d(x, kernel_size=3, stride=2),
            ],
            1,
        )


class InceptionC(nn.Module):
    """17×17 block with factorized 7×7 convolutions (c7 inner channels); 4 × 192 = 768 channels out."""

    def __init__(self, cin: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        row, col = dict(kernel_size=(1, 7), padding=(0, 3)), dict(kernel_size=(7, 1), padding=(3, 0))
        self.branch1x1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, **row)
        self.branch7x7_3 = BasicConv2d(c7, 192, **col)
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, **col)
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, **row)
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, **col)
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, **row)
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        b7dbl = x
        for i in range(1, 6):
            b7dbl = getattr(self, f"branch7x7dbl_{i}")(b7dbl)
        return torch.cat([self.branch1x1(x), b7, b7dbl, self.branch_pool(_avg_pool(x))], 1)


class InceptionD(nn.Module):
    """17→8 reduction: [1×1→3×3/2 | 1×1→1×7→7×1→3×3/2 | maxpool/2], 320 + 192 + cin channels."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x):
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):
    """8×8 block with split 1×3 / 3×1 outputs; 320 + 768 + 768 + 192 = 2048 channels out.

    ``max_pool=True`` is pytorch-fid's FIDInceptionE_2 (Mixed_7c): its pool branch takes a 3×3 max pool.
    """

    def __init__(self, cin: int, max_pool: bool = False):
        super().__init__()
        self.max_pool = max_pool
        row, col = dict(kernel_size=(1, 3), padding=(0, 1)), dict(kernel_size=(3, 1), padding=(1, 0))
        self.branch1x1 = BasicConv2d(cin, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(cin, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, **row)
        self.branch3x3_2b = BasicConv2d(384, 384, **col)
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, **row)
        self.branch3x3dbl_3b = BasicConv2d(384, 384, **col)
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x):
        b3 = self.branch3x3_1(x)
        b3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _avg_pool(x)
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch3x3_2a(b3),
                self.branch3x3_2b(b3),
                self.branch3x3dbl_3a(b3dbl),
                self.branch3x3dbl_3b(b3dbl),
                self.branch_pool(pooled),
            ],
            1,
        )


class FIDInceptionV3(nn.Module):
    """Images ``[N, C, H, W]`` in [0, 1] (C = 1 or 3) → pool3 features ``[N, 2048]``.

    x → tile grayscale to 3 channels → bilinear resize to 299×299 (align_corners=False) → 2x − 1 → trunk →
    global average pool. Inputs are cast to the weights' dtype and device; values are not clamped.
    """

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280)
        self.Mixed_7c = InceptionE(2048, max_pool=True)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] not in (1, 3):
            raise DataError(f"Inception features need images [N, 1 or 3, H, W], got shape {list(images.shape)}")
        weight = self.Conv2d_1a_3x3.conv.weight
        x = images.to(device=weight.device, dtype=weight.dtype).expand(-1, 3, -1, -1)
        x = 2 * F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False) - 1
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(F.max_pool2d(x, kernel_size=3, stride=2)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return x.mean(dim=(2, 3))


def _ignored(key: str) -> bool:
    return key.startswith(_IGNORED_PREFIXES) or key.endswith("num_batches_tracked")


def load_inception(path, device="cpu") -> FIDInceptionV3:
    """The FID Inception with pytorch-fid's ``pt_inception-2015-12-05`` state dict at ``path``, float32, eval mode.

    Never downloads: a missing, unreadable or mismatched file is a one-line ``ConfigError`` naming
    ``eval.fid_weights``. Extra ``fc.*``, ``AuxLogits.*`` and ``*.num_batches_tracked`` entries are ignored.
    """
    hint = "point eval.fid_weights at a local copy of pytorch-fid's pt_inception-2015-12-05-6726825d.pth"
    if path is None:
        raise ConfigError(f"eval.fid_weights is not set (path None): {hint}; nothing is downloaded")
    where = f"eval.fid_weights={str(path)!r}"
    file = Path(path)
    if not file.exists():
        raise ConfigError(f"{where}: no such file; {hint}")
    if not file.is_file():
        raise ConfigError(f"{where}: not a file; {hint}")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # any unpickling failure means the same thing here
        reason = (str(e).strip().splitlines() or [""])[0][:200]
        raise ConfigError(f"{where}: cannot be loaded as a torch state dict ({type(e).__name__}: {reason})") from None
    if not isinstance(state, Mapping):
        raise ConfigError(f"{where}: holds a {type(state).__name__}, not a state dict of tensors")

    with torch.device("meta"):  # shapes only; the file provides every value
        net = FIDInceptionV3()
    own = net.state_dict()
    for key, ref in own.items():
        if _ignored(key):
            continue
        value = state.get(key)
        if value is None:
            missing = sum(1 for k in own if not _ignored(k) and k not in state)
            raise ConfigError(f"{where}: missing key {key!r} ({missing} required keys missing); not the FID weights")
        if not torch.is_tensor(value) or tuple(value.shape) != tuple(ref.shape):
            got = list(value.shape) if torch.is_tensor(value) else type(value).__name__
            raise ConfigError(f"{where}: key {key!r} has shape {got}, expected {list(ref.shape)}")
    fc = state.get("fc.weight")
    if torch.is_tensor(fc) and tuple(fc.shape) != _FC_SHAPE:
        raise ConfigError(
            f"{where}: fc.weight has shape {list(fc.shape)}, expected {list(_FC_SHAPE)} "
            "(torchvision's ImageNet Inception is not the FID network)"
        )
    unexpected = [k for k in state if k not in own and not _ignored(k)]
    if unexpected:
        raise ConfigError(f"{where}: unexpected key {unexpected[0]!r} ({len(unexpected)} in all); not the FID weights")

    zero = torch.zeros((), dtype=torch.long)
    net.load_state_dict({k: (zero.clone() if _ignored(k) else state[k]) for k in own}, assign=True)
    return net.to(device=device, dtype=torch.float32).eval().requires_grad_(False)
