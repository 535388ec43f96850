"""Figures for explainable retrieval: heatmaps on tiles, coloured descriptions, a top-5 grid.

- :func:`overlay_heatmap`  a relevance map blended onto its tile (hot = relevant);
- :func:`words_image`      the description, each word on a background coloured by its relevance;
- :func:`top5_figure`      query text + top-k candidates (ground truth framed in green) + their
                           heatmaps + similarity / confidence, in one matplotlib figure.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFont

FONT_PATH = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"


def load_image(image: Path | str | bytes | Image.Image | np.ndarray) -> Image.Image:
    """An RGB PIL image from a path, encoded bytes, a PIL image or an (H, W, 3) uint8 array."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, np.ndarray):
        return Image.fromarray(image).convert("RGB")
    if isinstance(image, bytes):
        return Image.open(io.BytesIO(image)).convert("RGB")
    with Image.open(image) as im:
        return im.convert("RGB")


def normalise(heatmap: np.ndarray) -> np.ndarray:
    """Min-max scale a map to [0, 1] (a constant map becomes all zeros)."""
    h = np.asarray(heatmap, dtype=np.float32)
    span = float(h.max() - h.min()) if h.size else 0.0
    return (h - h.min()) / span if span > 0 else np.zeros_like(h)


def overlay_heatmap(image, heatmap: np.ndarray, alpha: float = 0.6, cmap: str = "jet") -> Image.Image:
    """Blend a relevance map onto its tile: out = (1 - a·h)·tile + a·h·cmap(h), h = minmax(map).

    Weighting the blend by h keeps irrelevant parts of the tile readable (labels, roads),
    while relevant parts turn hot.
    """
    tile = load_image(image)
    h = normalise(heatmap)
    if h.shape != (tile.height, tile.width):
        h = np.asarray(
            Image.fromarray(h).resize((tile.width, tile.height), Image.BILINEAR), dtype=np.float32
        )
    colour = matplotlib.colormaps[cmap](h)[..., :3]
    weight = (alpha * h)[..., None]
    out = (1.0 - weight) * (np.asarray(tile, dtype=np.float32) / 255.0) + weight * colour
    return Image.fromarray((np.clip(out, 0, 1) * 255).astype(np.uint8))


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(FONT_PATH), size)


def words_image(words: Sequence[tuple[str, float | None]], width: int = 900, font_size: int = 17,
                cmap: str = "YlOrRd", title: str | None = None) -> Image.Image:
    """The description as wrapped text, each word on a background coloured by its relevance
    (min-max over the words, so the least relevant is pale and the most relevant dark);
    words the model did not see (``None``, cut by the context length) are grey and struck
    through."""
    font, small = _font(font_size), _font(max(11, font_size - 4))
    seen = [r for _, r in words if r is not None]
    low, span = (min(seen), max(seen) - min(seen)) if seen else (0.0, 0.0)
    span = span if span > 0 else 1.0
    pad, gap, line_h = 12, font_size // 3, int(font_size * 1.55)
    placed, x, y = [], pad, pad + (line_h if title else 0)
    for word, rel in words:
        w = font.getlength(word)
        if x + w > width - pad and x > pad:
            x, y = pad, y + line_h
        placed.append((x, y, word, rel, w))
        x += w + gap + 3
    legend_y = y + line_h + 6
    image = Image.new("RGB", (width, legend_y + 26), "white")
    draw = ImageDraw.Draw(image)
    if title:
        draw.text((pad, pad), title, fill=(40, 40, 40), font=font)
    colours = matplotlib.colormaps[cmap]
    for x, y, word, rel, w in placed:
        if rel is None:
            draw.text((x, y), word, fill=(165, 165, 165), font=font)
            draw.line([(x, y + font_size * 0.6), (x + w, y + font_size * 0.6)], fill=(165, 165, 165))
            continue
        rgba = colours(0.05 + 0.95 * (rel - low) / span)
        fill = tuple(int(255 * c) for c in rgba[:3])
        draw.rounded_rectangle([x - 2, y - 2, x + w + 2, y + font_size + 4], radius=4, fill=fill)
        dark = 0.299 * rgba[0] + 0.587 * rgba[1] + 0.114 * rgba[2] < 0.5
        draw.text((x, y), word, fill="white" if dark else "black", font=font)
    # legend: low -> high relevance
    for i in range(160):
        c = tuple(int(255 * v) for v in colours(0.05 + 0.95 * i / 159)[:3])
        draw.line([(pad + 110 + i, legend_y + 4), (pad + 110 + i, legend_y + 16)], fill=c)
    draw.text((pad, legend_y + 2), "relevance: low", fill=(60, 60, 60), font=small)
    draw.text((pad + 278, legend_y + 2), "high   (grey: beyond the context length)",
              fill=(60, 60, 60), font=small)
    return image


def top5_figure(query_words: Sequence[tuple[str, float | None]], candidates: Sequence[dict],
                truth: dict | None = None, title: str | None = None):
    """Query text (coloured by relevance), then per candidate its tile and heatmap overlay.

    ``candidates``: dicts with ``name``, ``image``, ``heatmap`` (or None), ``score`` and
    optionally ``confidence`` and ``new_rank`` (after ERM re-ranking); the ground truth
    (``truth["name"]``) is framed in green. If it is not among them, ``truth`` (``name``,
    ``image``, optional ``rank``) gets an extra column.
    """
    from matplotlib.figure import Figure

    truth_name = truth["name"] if truth else None
    columns = list(candidates)
    extra = truth is not None and all(c["name"] != truth_name for c in columns)
    if extra:
        columns.append({**truth, "heatmap": truth.get("heatmap"), "extra": True})
    n = len(columns)
    text = words_image(query_words, width=max(900, 300 * n), title="Query")
    text_h = 3.0 * n * text.height / text.width
    fig = Figure(figsize=(3.0 * n, text_h + 6.6), layout="constrained")
    grid = fig.add_gridspec(3, n, height_ratios=[text_h, 3.0, 3.0])
    ax = fig.add_subplot(grid[0, :])
    ax.imshow(text)
    ax.set_axis_off()
    for j, cand in enumerate(columns):
        tile = load_image(cand["image"])
        top, bottom = fig.add_subplot(grid[1, j]), fig.add_subplot(grid[2, j])
        top.imshow(tile)
        if cand.get("heatmap") is not None:
            bottom.imshow(overlay_heatmap(tile, cand["heatmap"]))
        else:
            bottom.text(0.5, 0.5, "no heatmap", ha="center", va="center", transform=bottom.transAxes)
        is_truth = cand["name"] == truth_name
        if cand.get("extra"):
            head = "ground truth" + (f" (rank {cand['rank']})" if cand.get("rank") else " (not in scope)")
        else:
            head = f"#{j + 1}  sim {cand['score']:.3f}"
            if cand.get("confidence") is not None:
                head += f"\nconfidence {cand['confidence']:.2f}"
            if cand.get("new_rank") is not None:
                head += f"  → ERM #{cand['new_rank']}"
        top.set_title(head + ("\n✓ ground truth" if is_truth and not cand.get("extra") else ""),
                      fontsize=10, color="green" if is_truth else "black")
        bottom.set_xlabel(_short(cand["name"]), fontsize=7)
        for axis in (top, bottom):
            axis.set_xticks([])
            axis.set_yticks([])
            colour, width = ("green", 5) if is_truth else ("0.7", 1)
            for spine in axis.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(width)
        if j == 0:
            top.set_ylabel("retrieved tile", fontsize=10)
            bottom.set_ylabel("relevance: where the model\nlooked for this text (red)", fontsize=10)
    if title:
        fig.suptitle(title)
    return fig


def _short(name: str, width: int = 38) -> str:
    return name if len(name) <= width else name[: width - 3] + "..."
