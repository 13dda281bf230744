"""PNG grids of images (samples, originals and reconstructions)."""

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw


def save_grid(
    rows: list[torch.Tensor], path: str | Path, scale: int = 4, pad: int = 1, labels: list[str] | None = None
) -> Path:
    """Write each ``[N, C, H, W]`` tensor of ``rows`` as one row of tiles, clamped to [0, 1], upscaled ``scale``×;
    ``labels`` name the rows (written to their left, e.g. "original" / "reconstruction").

    The file is written under a temporary name and renamed, so a partial PNG never appears.
    """
    width = max(r.shape[0] for r in rows)
    c, h, w = rows[0].shape[1:]
    canvas = np.ones(((h + pad) * len(rows) + pad, (w + pad) * width + pad, c), dtype=np.float32)
    for i, row in enumerate(rows):
        tiles = row.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
        for j, tile in enumerate(tiles):
            top, left = pad + i * (h + pad), pad + j * (w + pad)
            canvas[top : top + h, left : left + w] = tile
    pixels = (canvas * 255).round().astype(np.uint8)
    image = Image.fromarray(pixels[..., 0] if c == 1 else pixels)
    image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    if labels:
        image = _labelled(image, labels, (h + pad) * scale, pad * scale)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    image.save(tmp, format="PNG")
    os.replace(tmp, path)
    return path


def _labelled(image: Image.Image, labels: list[str], row_height: int, top: int) -> Image.Image:
    """``image`` with a white margin on its left holding one label per row, centred on the row."""
    margin = 7 * max(len(label) for label in labels) + 12
    out = Image.new(image.mode, (image.width + margin, image.height), "white")
    out.paste(image, (margin, 0))
    draw = ImageDraw.Draw(out)
    for i, label in enumerate(labels):
        draw.text((6, top + i * row_height + row_height // 2 - 6), label, fill="black")
    return out
