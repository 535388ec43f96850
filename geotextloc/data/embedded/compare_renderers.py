"""The embedded dataset's OSM view from both renderers side by side: the built-in one (PIL,
Carto colours) and mapnik + openstreetmap-carto (:mod:`geotextloc.data.osm_render`), for the
places of each region's contact sheet (``geotextloc data compare-osm-renderers``)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Sequence

from geotextloc.data import osm_render
from geotextloc.data.embedded import builder, dense
from geotextloc.data.embedded.contact_sheet import as_image, pick_locations, renderer_sheet
from geotextloc.data.embedded.layout import image_paths
from geotextloc.data.embedded.scene import Location
from geotextloc.errors import DataError


def compare_osm_renderers(out: str | Path, to: str | Path = "reports/figures", cities: Sequence[str] | None = None,
                          places: int = 6) -> list[tuple[Path, str]]:
    """For each region of the built embedded dataset ``out`` (or ``cities``), the OSM tiles of
    ``places`` places (:func:`pick_locations`: those of its contact sheet) from the built-in
    renderer beside the same footprints from mapnik + openstreetmap-carto
    (:func:`geotextloc.data.osm_render.render_views`), as ``<to>/osm_renderers_<Region>.png``.
    Returns (path, where the carto sea came from) per region."""
    out = Path(out)
    manifest = dense._manifest(out)
    settings = builder.BuildSettings(**manifest["settings"])
    known = sorted(manifest.get("regions", {}))
    for city in cities or []:
        if city not in known:
            raise DataError(f"{out}/build.json: no region {city!r} in this build (it has {', '.join(known)})")
    written = []
    for city in cities or known:
        recs = pick_locations(out, city, places, settings.seed)
        if not recs:
            raise DataError(f"{out}/geoloc/{city}: no places to compare; finish the build first "
                            f"(geotextloc data build-embedded --out {out})")
        locs = [Location(**rec["location"]) for rec in recs]
        source = dense.region_source(out, city, manifest["regions"][city])
        with tempfile.TemporaryDirectory(prefix="geotextloc-carto-") as tmp:
            views = [osm_render.MapView(loc.lat, loc.lon, rec["views"]["tile_footprint_m"], rec["views"]["size"],
                                        Path(tmp) / f"{loc.id}.png") for loc, rec in zip(locs, recs)]
            report = osm_render.render_views(source.path, views, progress=False)
            carto = [as_image(v.path) for v in views]
        if settings.osm_renderer == builder.BUILTIN:  # the build's own tiles
            builtin = [as_image(image_paths(out, loc, settings.seed)[f"{city}:osm"]) for loc in locs]
        else:  # a carto build: draw the built-in tiles now
            region = dense._region(out, city, manifest["regions"][city])
            builtin = [builder.osm_view(region, loc, builder.BuildSettings(**{**manifest["settings"], "osm_renderer":
                                                                             builder.BUILTIN}), out) for loc in locs]
        meta = report.metadata
        title = (f"{city}: the OSM view of {len(locs)} places, {settings.tile_footprint_m:g} m square, "
                 f"{settings.size} px, north up. Left: geotextloc's built-in renderer; right: mapnik "
                 f"{meta['versions']['mapnik']} + openstreetmap-carto {meta['versions']['openstreetmap-carto']} "
                 f"from {meta['extract']} (osm2pgsql {meta['versions']['osm2pgsql']}). Sea: {meta['coastline']}. "
                 f"{meta['attribution']}")
        pairs = [(f"{loc.id} ({loc.lat:.5f}, {loc.lon:.5f})", a, b) for loc, a, b in zip(locs, builtin, carto)]
        path = renderer_sheet(pairs, Path(to) / f"osm_renderers_{city}.png", title)
        written.append((path, meta["coastline"]))
    return written
