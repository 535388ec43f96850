"""A contact sheet: every view and the text of a few locations, one location per row.

Each row shows the OSM tile, the satellite tile, the drone image, the panorama and the
single-view crop side by side, with the location's text(s) wrapped underneath. The embedded
builder writes one per region to ``<out>/contact_sheet_<Region>.png``
(:func:`build_contact_sheets`); :func:`copy_contact_sheets` puts them in ``reports/`` as
``embedded_<Region>_contact_sheet.png`` (CLI: ``geotextloc data contact-sheets``).
"""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path
from typing import Sequence, Union

from PIL import Image, ImageDraw

from geotextloc.data.embedded import raster
from geotextloc.data.embedded.layout import image_paths
from geotextloc.data.embedded.osm import stable_unit
from geotextloc.files import atomic_path

ImageLike = Union[Image.Image, str, Path]
VIEWS = ("OSM", "satellite", "drone", "panorama", "single view")
TILE = 224  # height of every image in the sheet
GAP = 8


def as_image(x: ImageLike) -> Image.Image:
    return x.convert("RGB") if isinstance(x, Image.Image) else Image.open(x).convert("RGB")


def _fit(img: Image.Image, height: int) -> Image.Image:
    w = max(1, round(img.width * height / img.height))
    return img.resize((w, height), Image.LANCZOS)


def contact_sheet(rows: Sequence[Sequence], out_path: str | Path, title: str | None = None) -> Path:
    """Write a PNG with one row per location and return its path.

    Each row is ``(osm, satellite, drone, panorama, single_view, text)``: images as PIL images
    or file paths, ``text`` a string or a sequence of strings (e.g. the panorama text and the
    single-view text; each is one wrapped paragraph; a ``"label: text"`` prefix stays as written).
    The file is written atomically (temporary file in the same folder, then renamed).
    """
    if not rows:
        raise ValueError("contact_sheet needs at least one row")
    head_font, text_font = raster.font(15, bold=True), raster.font(13)
    line_h = 17
    prepared = []
    for row in rows:
        if len(row) != 6:
            raise ValueError("each contact-sheet row is (osm, satellite, drone, panorama, single_view, text)")
        images = [_fit(as_image(x), TILE) for x in row[:5]]
        texts = [row[5]] if isinstance(row[5], str) else [str(t) for t in row[5]]
        prepared.append((images, texts))
    width = max(sum(im.width for im in images) + GAP * (len(images) + 1) for images, _ in prepared)
    chars = max(40, int((width - 2 * GAP) / 7.4))
    blocks = []
    for images, texts in prepared:
        lines: list[str] = []
        for t in texts:
            lines += textwrap.wrap(" ".join(t.split()), chars) or [""]
            lines.append("")
        blocks.append(lines[:-1])
    title_lines = textwrap.wrap(title, max(20, int((width - 2 * GAP) / 12.5))) if title else []
    top = GAP + 26 * len(title_lines) + (4 if title_lines else 0) + 20
    height = top + sum(TILE + GAP + len(lines) * line_h + 2 * GAP for lines in blocks)
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    y = GAP
    for line in title_lines:
        draw.text((GAP, y), line, font=raster.font(20, bold=True), fill=(20, 20, 20))
        y += 26
    y += 4 if title_lines else 0
    x = GAP
    for name, im in zip(VIEWS, prepared[0][0]):
        draw.text((x, y), name, font=head_font, fill=(60, 60, 60))
        x += im.width + GAP
    y += 20
    for (images, _), lines in zip(prepared, blocks):
        x = GAP
        for im in images:
            sheet.paste(im, (x, y))
            x += im.width + GAP
        y += TILE + GAP
        for line in lines:
            draw.text((GAP, y), line, font=text_font, fill=(30, 30, 30))
            y += line_h
        y += GAP
        draw.line([(GAP, y), (width - GAP, y)], fill=(200, 200, 200), width=1)
        y += GAP
    out = Path(out_path)
    with atomic_path(out) as tmp:
        sheet.save(tmp, format="PNG", compress_level=1, optimize=False)  # fast; level 6 saves only ~5%
    return out


# ----------------------------------------------------------------------------- built datasets


def sheet_path(out: str | Path, city: str) -> Path:
    return Path(out) / f"contact_sheet_{city}.png"


def pick_locations(out: str | Path, city: str, rows: int = 4, seed: int = 0) -> list[dict]:
    """The facts records of ``rows`` locations of ``city`` for its contact sheet, chosen
    deterministically: test locations whose panorama text names a shop or stop (a POI cue)
    first, then other test locations, then train ones; within each group in the order of a
    seeded hash of the location id."""
    out = Path(out)
    ranked = []
    for group, split in enumerate(("test", "train")):
        path = out / "geoloc" / city / f"{split}.jsonl"
        if not path.is_file():
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            loc_id = json.loads(line)["id"]
            rec = json.loads((out / "facts" / city / f"{loc_id}.json").read_text(encoding="utf-8"))
            poi_names = {p["name"] for p in rec["facts"]["pois"]}
            cues = rec["texts"]["panorama"]["cues"]
            named = any(c in poi_names for c in cues)
            rank = 2 * group + (0 if named else 1)
            ranked.append((rank, stable_unit(f"contact-sheet:{seed}:{city}:{loc_id}"), loc_id, split, rec))
    ranked.sort(key=lambda r: r[:3])
    return [dict(rec, split=split) for *_, split, rec in ranked[:rows]]


def _row(out: Path, rec: dict) -> tuple:
    from geotextloc.data.embedded.scene import Location

    loc = Location(**rec["location"])
    paths = image_paths(out, loc)
    city = loc.region
    head = (f"{loc.id} ({rec['split']}, {loc.lat:.5f}, {loc.lon:.5f}, heading {loc.heading:.0f}°)")
    texts = [f"{head} panorama: {rec['texts']['panorama']['text']}",
             f"single view: {rec['texts']['single']['text']}"]
    return (paths[f"{city}:osm"], paths[f"{city}:satellite"], paths[f"{city}:drone"],
            paths[f"{city}:street"], paths[f"{city}-photos:street"], texts)


def build_contact_sheets(out: str | Path, cities: Sequence[str], rows: int = 4, seed: int = 0) -> list[Path]:
    """Write ``<out>/contact_sheet_<City>.png`` for each city of a built embedded dataset."""
    out = Path(out)
    written = []
    for city in cities:
        chosen = pick_locations(out, city, rows, seed)
        if not chosen:
            continue
        title = (f"{city}: OSM tile, satellite, drone, street panorama, single view; synthetic views "
                 "over OpenStreetMap geometry (© OpenStreetMap contributors)")
        written.append(contact_sheet([_row(out, rec) for rec in chosen], sheet_path(out, city), title=title))
    return written


def copy_contact_sheets(out: str | Path, reports: str | Path = "reports") -> list[Path]:
    """Copy every ``<out>/contact_sheet_<City>.png`` to ``<reports>/embedded_<City>_contact_sheet.png``."""
    copied = []
    for src in sorted(Path(out).glob("contact_sheet_*.png")):
        city = src.stem.removeprefix("contact_sheet_")
        dst = Path(reports) / f"embedded_{city}_contact_sheet.png"
        with atomic_path(dst) as tmp:
            shutil.copyfile(src, tmp)
        copied.append(dst)
    return copied


# ----------------------------------------------------------------------------- OSM renderers side by side

RENDERER_LABELS = ("built-in (PIL, Carto colours)", "mapnik + openstreetmap-carto")


def renderer_sheet(pairs: Sequence[tuple[str, ImageLike, ImageLike]], out_path: str | Path, title: str,
                   per_row: int = 2) -> Path:
    """A PNG of ``(caption, builtin, carto)`` pairs, ``per_row`` pairs a row, every tile at its own size."""
    if not pairs:
        raise ValueError("renderer_sheet needs at least one pair")
    images = [(caption, as_image(a), as_image(b)) for caption, a, b in pairs]
    tile = max(max(a.width, a.height, b.width, b.height) for _, a, b in images)
    cell_w, cell_h = 2 * tile + GAP, 20 + 18 + tile
    cols = min(per_row, len(images))
    width = GAP + cols * (cell_w + 3 * GAP)
    title_lines = textwrap.wrap(title, max(30, int((width - 2 * GAP) / 7.4)))
    top = GAP + 17 * len(title_lines) + GAP
    rows = -(-len(images) // cols)
    sheet = Image.new("RGB", (width, top + rows * (cell_h + 2 * GAP)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, line in enumerate(title_lines):
        draw.text((GAP, GAP + 17 * i), line, font=raster.font(13, bold=i == 0), fill=(20, 20, 20))
    for k, (caption, a, b) in enumerate(images):
        x, y = GAP + (k % cols) * (cell_w + 3 * GAP), top + (k // cols) * (cell_h + 2 * GAP)
        draw.text((x, y), caption, font=raster.font(13, bold=True), fill=(40, 40, 40))
        for j, (label, im) in enumerate(zip(RENDERER_LABELS, (a, b))):
            draw.text((x + j * (tile + GAP), y + 20), label, font=raster.font(12), fill=(90, 90, 90))
            sheet.paste(im, (x + j * (tile + GAP), y + 38))
    out = Path(out_path)
    with atomic_path(out) as tmp:
        sheet.save(tmp, format="PNG", compress_level=6, optimize=False)
    return out
