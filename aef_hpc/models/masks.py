"""Core masks of the partition family (method.md §1.3): which ``d`` of the ``C×H×W`` entries form the core.

Each mask walks candidate positions in its own order and takes the first ``d`` distinct in-bounds ones;
should a walk run out (odd or tiny images), the remaining entries follow in row-major order, so
``mask.sum() == d`` always. For the sizes in method.md's table the walks equal the reference code's.
"""

from collections.abc import Iterator

import torch

from ..errors import ModelError

MASKS = ("center", "corner", "checkerboard")


def _center_walk(c: int, h: int, w: int) -> Iterator[tuple[int, int, int]]:
    """Square spiral from (H//2-1, W//2-1): down, right, up, left, steps 1,1,2,2,3,3,...; all channels per pixel."""
    row, col, d_row, d_col, steps = h // 2 - 1, w // 2 - 1, 1, 0, 1
    for turn in range(4 * max(h, w) + 4):
        for _ in range(steps):
            for ch in range(c):
                yield ch, row, col
            row, col = row + d_row, col + d_col
        d_row, d_col = -d_col, d_row
        steps += turn % 2


def _corner_walk(c: int, h: int, w: int) -> Iterator[tuple[int, int, int]]:
    """(r,c), (r,W-1-c), (H-1-r,c), (H-1-r,W-1-c) per channel, then (r,c) advances along the edges inwards."""
    row = col = base = 0
    while base < (min(h, w) + 1) // 2:
        for ch in range(c):
            yield from ((ch, row, col), (ch, row, w - 1 - col), (ch, h - 1 - row, col), (ch, h - 1 - row, w - 1 - col))
        if row == col:
            row += 1
        elif row > col:
            row, col = base, row
            if col >= w // 2:
                base += 1
                row = col = base
        else:
            row, col = col + 1, base
            if row >= h // 2:
                base += 1
                row = col = base


def _checkerboard_walk(c: int, h: int, w: int, d: int) -> Iterator[tuple[int, int, int]]:
    """Entries with even ``c+h+w`` first, spread evenly over the image, then the odd ones likewise."""
    cells = [(ch, i, j) for ch in range(c) for i in range(h) for j in range(w)]
    even = [p for p in cells if sum(p) % 2 == 0]
    odd = [p for p in cells if sum(p) % 2 == 1]
    take_even = min(d, len(even))
    yield from (even[k * len(even) // take_even] for k in range(take_even))
    rest = d - take_even
    yield from (odd[k * len(odd) // rest] for k in range(rest))


def build_mask(kind: str, image_shape, latent_dim: int) -> torch.Tensor:
    """Boolean ``[C, H, W]`` mask with exactly ``latent_dim`` ones."""
    c, h, w = image_shape
    total = c * h * w
    if not 0 < latent_dim < total:
        raise ModelError(
            f"latent_dim={latent_dim} is impossible for a partition mask on a {c}x{h}x{w} image: "
            f"it must be between 1 and {total - 1} (the shell needs at least one entry)"
        )
    walks = {
        "center": lambda: _center_walk(c, h, w),
        "corner": lambda: _corner_walk(c, h, w),
        "checkerboard": lambda: _checkerboard_walk(c, h, w, latent_dim),
    }
    if kind not in walks:
        raise ModelError(f"unknown mask {kind!r}: choose one of {', '.join(MASKS)}")
    mask = torch.zeros(c, h, w, dtype=torch.bool)
    count = 0
    for ch, i, j in walks[kind]():
        if count == latent_dim:
            break
        if 0 <= i < h and 0 <= j < w and not mask[ch, i, j]:
            mask[ch, i, j] = True
            count += 1
    if count < latent_dim:
        free = (~mask).flatten().nonzero().flatten()[: latent_dim - count]
        mask.view(-1)[free] = True
    return mask
