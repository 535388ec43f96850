"""``geotextloc data render-osm``: OpenStreetMap tiles in the standard style from an extract, rendered
locally with mapnik + openstreetmap-carto (:mod:`geotextloc.data.osm_render`)."""

from __future__ import annotations

import time
from pathlib import Path


def register(data_subparsers) -> None:
    p = data_subparsers.add_parser(
        "render-osm",
        help="render XYZ map tiles in the standard OpenStreetMap style from an .osm.pbf (mapnik + openstreetmap-carto)",
        description="Load the extract into a private PostGIS database (osm2pgsql, openstreetmap-carto's schema) "
        "and render the tiles of --bbox at --zoom with mapnik and the openstreetmap-carto style, labels included, "
        "into OUT/Z/X/Y.png (+ OUT/metadata.json). Resumes: tiles already there are kept. Needs the stack "
        "installed by `make osm-stack` (Debian's osm2pgsql, PostgreSQL + PostGIS, python3-mapnik, "
        "openstreetmap-carto). The sea comes from the extract's own coastline (the style's downloaded water "
        "polygons are not used).",
    )
    p.add_argument("--pbf", type=Path, required=True, metavar="EXTRACT", help="the OSM extract (.osm.pbf)")
    p.add_argument("--bbox", required=True, metavar="W,S,E,N", help="area in degrees: west,south,east,north")
    p.add_argument("--zoom", required=True, metavar="Z", help="zoom level, range or list: 16, 14-17, 15,17")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="tile folder (Z/X/Y.png)")
    p.add_argument("--tile-size", type=int, default=256, choices=(256, 512),
                   help="tile side in pixels; 512 draws the same area at twice the scale (default 256)")
    p.add_argument("--metatile", type=int, default=8, metavar="N",
                   help="render N x N tiles at once so labels agree across tile edges (default 8, as renderd)")
    p.add_argument("--processes", type=int, default=1, metavar="K", help="mapnik processes (default 1)")
    p.add_argument("--pg-dir", type=Path, default=None, metavar="DIR",
                   help="folder of the private PostgreSQL cluster (kept between runs; default "
                   "$GEOTEXTLOC_CACHE/osm-carto, ~/.cache/geotextloc/osm-carto, or /var/tmp/geotextloc-osm-carto as root)")
    p.set_defaults(func=render_osm_command)


def render_osm_command(args) -> int:
    from geotextloc.data import osm_render

    bbox = osm_render.parse_bbox(args.bbox)
    zooms = osm_render.parse_zooms(args.zoom)
    start = time.perf_counter()
    report = osm_render.render_tiles(args.pbf, bbox, zooms, args.out, tile_size=args.tile_size,
                                     metatile=args.metatile, processes=args.processes, pg_dir=args.pg_dir)
    meta = report.metadata
    print(f"rendered {report.rendered} tile(s), {report.skipped} already there, zoom {','.join(map(str, zooms))}, "
          f"in {time.perf_counter() - start:.1f} s: {args.out}/{{z}}/{{x}}/{{y}}.png")
    print(f"style: openstreetmap-carto {meta['versions']['openstreetmap-carto']}, mapnik {meta['versions']['mapnik']}, "
          f"osm2pgsql {meta['versions']['osm2pgsql']}")
    print(f"coastline: {meta['coastline']}")
    print(f"metadata: {args.out / 'metadata.json'} ({meta['attribution']})")
    return 0
