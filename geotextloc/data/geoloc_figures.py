"""Figures of a GeoLoc build (:mod:`geotextloc.data.geoloc_build`): the rejects of each step, and the steps.

- :func:`reject_sheet`: a contact sheet of one step's rejects (dedup, BH, C, UN), each
  thumbnail labelled with its id, score and the threshold, worst first (PNG bytes, byte-stable);
- :func:`steps_figure`: one figure of the construction on a build — the orthophoto with the
  sliding-window footprints and seeds, the street-view captures and kept locations, one
  location's reverse crops at three scales with its street view and satellite tile, and one
  rejected crop per gate with its score.
"""

from __future__ import annotations

import io
import json
import textwrap
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHEET_COLUMNS = 6
SHEET_MAX = 24
CELL = 128
LABEL_H = 30


def _font(size: int):
    from geotextloc.data.embedded.raster import font

    return font(size)


def reject_sheet(out: Path, rejects: list[dict], step: str, threshold: float) -> bytes:
    """PNG of up to :data:`SHEET_MAX` rejects of ``step`` with a thumbnail, the farthest from
    the threshold first (the highest overlap for dedup, the lowest measure for a gate)."""
    shown = [r for r in rejects if r.get("thumbnail") and (Path(out) / r["thumbnail"]).is_file()]
    shown.sort(key=lambda r: (-r["score"] if step == "dedup" else r["score"], r["id"]))
    shown = shown[:SHEET_MAX]
    rows = max(1, -(-len(shown) // SHEET_COLUMNS))
    head = 26
    sheet = Image.new("RGB", (SHEET_COLUMNS * CELL, head + rows * (CELL + LABEL_H)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    rule = f"overlap > {threshold:g}" if step == "dedup" else f"{step} < {threshold:g}"
    draw.text((6, 5), f"{step} rejects ({rule}): {len(rejects)} in all, {len(shown)} shown", fill=(0, 0, 0),
              font=_font(14))
    if not shown:
        draw.text((6, head + 8), "none", fill=(90, 90, 90), font=_font(13))
    for k, r in enumerate(shown):
        x, y = (k % SHEET_COLUMNS) * CELL, head + (k // SHEET_COLUMNS) * (CELL + LABEL_H)
        with Image.open(Path(out) / r["thumbnail"]) as im:
            sheet.paste(im.convert("RGB").resize((CELL - 4, CELL - 4)), (x + 2, y + 2))
        draw.text((x + 3, y + CELL), f"{r['id'][-22:]}", fill=(60, 60, 60), font=_font(9))
        draw.text((x + 3, y + CELL + 12), f"{step} = {r['score']:.3g} ({r.get('scale_m', 0):g} m)",
                  fill=(170, 20, 20), font=_font(11))
    buf = io.BytesIO()
    sheet.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def steps_figure(out: str | Path, orthophoto: str | Path, path: str | Path, location: str | None = None,
                 resolution_m: float = 1.0):
    """Save the figure of a build's steps (module docstring) to ``path``; returns the figure.

    ``location``: the id of the kept location whose crops are shown (default: the one with the
    most passing scales, then the first)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.patches import Polygon as MplPolygon
    from matplotlib.patches import Rectangle

    from geotextloc.data.geoloc import read_orthophoto

    out = Path(out)
    ortho = read_orthophoto(orthophoto, resolution_m=resolution_m)
    report = json.loads((out / "build" / "report.json").read_text(encoding="utf-8"))
    settings = report["settings"]
    records = [json.loads(p.read_text(encoding="utf-8")) for p in sorted((out / "build" / "locations").glob("*.json"))]
    rejects = [json.loads(line) for line in (out / "build" / "rejects.jsonl").read_text(encoding="utf-8").splitlines()]
    kept = [r for r in records if r["status"] == "kept"]
    deduped = {(r["location"], r["scale_m"]): r for r in rejects if r["step"] == "dedup"}

    def scales_shown(rec):
        return sum(1 for c in rec["crops"]) + sum(1 for s in settings["scales_m"] if (rec["id"], s) in deduped)

    chosen = next((r for r in kept if r["id"] == location), None) or max(
        kept, key=lambda r: (len(r["drone_scales"]), scales_shown(r),
                             min(c["gates"]["BH"] for c in r["crops"] if not c["failed"])))

    def px(lon, lat):
        x, y = ortho.to_crs(np.asarray(lon, float), np.asarray(lat, float))
        return ortho.transform.colrow(x, y)

    def title(ax, text, size=8.5):
        ax.set_title("\n".join(textwrap.wrap(text, 62)), fontsize=size)

    rgba = np.asarray(ortho.rgb(slice(None), slice(None))).copy()
    rgba = np.dstack([rgba, np.where(ortho.valid(), 255, 0).astype(np.uint8)])
    fig = plt.figure(figsize=(16, 12), dpi=110)
    grid = fig.add_gridspec(3, 6, height_ratios=[1.5, 1, 1])

    ax = fig.add_subplot(grid[0, 0:2])
    ax.imshow(rgba)
    lookups = _read_lookups(out)
    w = settings["window_m"] / ortho.metres_per_pixel()[0]
    for k, (seed, row) in enumerate(sorted(lookups.items())):
        c, r = px(row["lon"], row["lat"])
        ax.add_patch(Rectangle((c - w / 2, r - w / 2), w, w, fill=False, lw=0.5, ec=(1, 1, 0, 0.35)))
        ax.plot(c, r, "o", ms=3, color="yellow" if row["pano"] else "red")
    c, r = px(*next(((v["lon"], v["lat"]) for v in lookups.values() if v["pano"]), (0, 0)))
    ax.add_patch(Rectangle((c - w / 2, r - w / 2), w, w, fill=False, lw=1.6, ec="yellow"))
    title(ax, f"1. {len(lookups)} sliding-window footprints ({settings['window_m']:g} m, step "
              f"{settings['stride_m']:g} m; one drawn bold) and their seeds (red: no street view within "
              f"{settings['search_radius_m']:g} m)")
    ax.axis("off")

    ax = fig.add_subplot(grid[0, 2:4])
    ax.imshow(rgba)
    for seed, row in lookups.items():
        if row["pano"]:
            c0, r0 = px(row["lon"], row["lat"])
            c1, r1 = px(row["pano"]["lon"], row["pano"]["lat"])
            ax.plot([c0, c1], [r0, r1], "-", lw=0.6, color="white")
    for rec in records:
        c, r = px(rec["lon"], rec["lat"])
        ax.plot(c, r, "o", ms=5, mec="black", color="lime" if rec["status"] == "kept" else "orange")
    for rej in rejects:
        if rej["step"] == "coverage":
            c, r = px(rej["lon"], rej["lat"])
            ax.plot(c, r, "x", ms=6, color="red")
    for crop in chosen["crops"]:
        corners = np.array([px(*ll) for ll in crop["corners_lonlat"]])
        ax.add_patch(MplPolygon(corners, closed=True, fill=False, lw=1.4, ec="cyan" if not crop["failed"] else "red"))
    title(ax, "2. seed → nearest street view (white); street-view locations: green kept, orange all crops "
              "gated, red x outside the coverage; cyan: one location's reverse crops")
    ax.axis("off")

    ax = fig.add_subplot(grid[0, 4:6])
    counts, th = report["counts"], report["thresholds"]
    table = [["footprints / seeds", counts["footprints"]], ["no street view", counts["street"]],
             ["street-view locations", counts["locations"]], ["outside coverage", counts["coverage"]],
             ["reverse crops", counts["crops"]], [f"dedup (overlap > {th['dedup']:g})", counts["dedup"]],
             [f"BH < {th['BH']:g}", counts["BH"]], [f"C < {th['C']:g}", counts["C"]],
             [f"UN < {th['UN']:g} bits", counts["UN"]], ["crops kept", counts["crops_kept"]],
             ["locations kept", counts["kept"]], ["train / test / excluded",
                                                  f"{counts['train']} / {counts['test']} / {counts['excluded']}"]]
    ax.axis("off")
    tab = ax.table(cellText=[[a, str(b)] for a, b in table], colLabels=["step", "count"], loc="center",
                   colWidths=[0.7, 0.3])
    tab.auto_set_font_size(False)
    tab.set_fontsize(9)
    tab.scale(1, 1.4)
    ax.set_title(f"{report['name']}: counts per step", fontsize=9)

    by_scale = {c["scale_m"]: c for c in chosen["crops"]}
    for k, scale in enumerate(sorted(settings["scales_m"])[:3]):
        ax = fig.add_subplot(grid[1, k])
        ax.axis("off")
        crop, dup = by_scale.get(scale), deduped.get((chosen["id"], scale))
        if crop is not None:
            g = crop["gates"]
            ax.imshow(Image.open(out / (crop.get("file") or crop["thumbnail"])))
            verdict = "kept" if not crop["failed"] else "dropped by " + "+".join(crop["failed"])
            ax.set_title(f"3. reverse crop {scale:g} m: {verdict}\nBH {g['BH']:.2f}  C {g['C']:.3f}  UN {g['UN']:.2f}",
                         fontsize=8.5)
        elif dup is not None and (out / dup["thumbnail"]).is_file():
            ax.imshow(Image.open(out / dup["thumbnail"]))
            ax.set_title(f"3. reverse crop {scale:g} m: duplicate\n{dup['detail']}", fontsize=8)
        else:
            ax.set_title(f"3. reverse crop {scale:g} m:\noutside the coverage", fontsize=8.5)
    ax = fig.add_subplot(grid[1, 3:5])
    ax.imshow(Image.open(out / chosen["street"]))
    ax.set_title("street view at the capture (the location)", fontsize=8.5)
    ax.axis("off")
    ax = fig.add_subplot(grid[1, 5])
    ax.imshow(Image.open(out / chosen["satellite"]))
    ax.set_title(f"satellite tile ({chosen['satellite_footprint_m']:g} m)", fontsize=8.5)
    ax.axis("off")

    for k, step in enumerate(("dedup", "BH", "C", "UN")):
        ax = fig.add_subplot(grid[2, k])
        ax.axis("off")
        mine = [r for r in rejects if r["step"] == step and r.get("thumbnail") and (out / r["thumbnail"]).is_file()]
        if not mine:
            ax.set_title(f"{step}: no reject", fontsize=8.5)
            continue
        worst = min(mine, key=lambda r: (-r["score"] if step == "dedup" else r["score"], r["id"]))
        ax.imshow(Image.open(out / worst["thumbnail"]))
        rule = f"overlap {worst['score']:.0%} > {th['dedup']:.0%}" if step == "dedup" else \
            f"{step} = {worst['score']:.3g} < {th[step]:g}"
        ax.set_title(f"4. rejected by {step}\n{rule} ({worst['scale_m']:g} m)", fontsize=8.5)
    ax = fig.add_subplot(grid[2, 4:6])
    ax.axis("off")
    ax.text(0, 1, "5. unified description:\n" + textwrap.fill(chosen["text"] or "(none)", 70), va="top", fontsize=8.5,
            family="DejaVu Sans")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return fig


def _read_lookups(out: Path) -> dict[str, dict]:
    rows = {}
    path = out / "build" / "lookups.jsonl"
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        rows[row["seed"]] = row
    return rows
