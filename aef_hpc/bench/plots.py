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
    width, height, left, bottom = max(160 * len(names) + 190, 460), 360, 70, 300
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    top = max((r["ms_p50"] for r in chosen), default=1.0) or 1.0
    batch = chosen[0]["batch"] if chosen else "?"
    draw.text((10, 5), f"{mode} pass: median time per call, batch {batch}, size {size} (lower is better)", fill="black")
    draw.line([(left - 10, 40), (left - 10, bottom)], fill="black")  # the y axis, its label written upwards
    label = Image.new("RGB", (bottom - 40, 14), "white")
    ImageDraw.Draw(label).text((0, 0), "median time (ms)", fill="black")
    image.paste(label.rotate(90, expand=True), (8, 40))
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
        draw.rectangle([width - 90, 24 + 15 * j, width - 80, 34 + 15 * j], fill=COLOURS.get(provider, "gray"))
        draw.text((width - 75, 22 + 15 * j), provider, fill="black")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path
