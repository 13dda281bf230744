"""The bar chart of ``bench kernels`` (PIL: no plotting dependency)."""

from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = {"triton": (31, 119, 180), "eager": (255, 127, 14), "compile": (44, 160, 44)}


def bar_chart(rows: list[dict], path, ops, size: str = "3x64x64", mode: str = "full") -> Path:
    """Median ms (``ms_p50``) per op and provider at one size and mode (the first size measured if ``size`` was
    not); only rows whose ``op`` is in ``ops``."""
    chosen = [r for r in rows if r["mode"] == mode and r["op"] in ops]
    if not any(r["size"] == size for r in chosen):
        size = chosen[0]["size"] if chosen else size
    chosen = [r for r in chosen if r["size"] == size]
    names = list(dict.fromkeys(r["op"] for r in chosen))
    providers = list(dict.fromkeys(r["provider"] for r in chosen))
    width, height, left, bottom = 160 * max(1, len(names)) + 80, 360, 60, 300
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    top = max((r["ms_p50"] for r in chosen), default=1.0) or 1.0
    batch = chosen[0]["batch"] if chosen else "?"
    draw.text((10, 5), f"{mode}: median ms at batch {batch} x {size} (lower is better)", fill="black")
    for i, name in enumerate(names):
        x0 = left + 160 * i
        draw.text((x0, bottom + 10), name, fill="black")
        for j, provider in enumerate(providers):
            match = [r["ms_p50"] for r in chosen if r["op"] == name and r["provider"] == provider]
            if not match:
                continue
            bar = int((bottom - 40) * match[0] / top)
            draw.rectangle([x0 + 40 * j, bottom - bar, x0 + 40 * j + 30, bottom], fill=COLOURS.get(provider, "gray"))
            draw.text((x0 + 40 * j, bottom - bar - 12), f"{match[0]:.3g}", fill="black")
    for j, provider in enumerate(providers):
        draw.rectangle([width - 90, 20 + 15 * j, width - 80, 30 + 15 * j], fill=COLOURS.get(provider, "gray"))
        draw.text((width - 75, 18 + 15 * j), provider, fill="black")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path
