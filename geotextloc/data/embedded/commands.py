"""``geotextloc data build-embedded`` (the embedded default dataset from OSM extracts), ``data densify``
(its dense training-only versions), ``data contact-sheets`` (a few locations' views and texts per region)
and ``data compare-osm-renderers`` (the built-in OSM tiles beside mapnik + openstreetmap-carto's)."""

from __future__ import annotations

import json
import time
from pathlib import Path

DEFAULT_OUT = Path("data/embedded")
DEFAULT_REGIONS = ("helsinki", "kouvola", "monaco")  # builder.DEFAULT_REGIONS (not imported: keeps --help fast)
DEFAULT_MAX_PLACES = 2500  # dense.DEFAULT_MAX_PLACES


def register(data_subparsers) -> None:
    p = data_subparsers.add_parser(
        "build-embedded",
        help="build the offline multi-view dataset from real OSM extracts (Helsinki, Kouvola, Monaco, your .osm.pbf)",
        description="Sample street locations, render OSM/satellite/drone tiles and street-view "
        "panoramas, write scene facts and descriptions in the CVG-Text release layout. "
        "Resumes an interrupted build; the same arguments give byte-identical files.",
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    p.add_argument("--regions", default=",".join(DEFAULT_REGIONS),
                   help="comma-separated built-in regions: helsinki, kouvola, monaco ('' for none; default all "
                   "three; monaco is fetched once with pip from PyPI: the osrm-bindings==26.10.0 source package)")
    p.add_argument("--pbf", action="append", default=[], metavar="PATH",
                   help="an extra region from your own .osm.pbf (repeatable)")
    p.add_argument("--max-locations", type=int, default=None, metavar="N",
                   help="at most N places in total, shared by the regions (CI builds; default: all)")
    p.add_argument("--size", type=int, default=256, metavar="PX", help="tile side in pixels (default 256)")
    p.add_argument("--pano-width", type=int, default=512, metavar="W",
                   help="panorama width; height is W/2 (default 512)")
    p.add_argument("--spacing", type=float, default=25.0, metavar="M",
                   help="metres between street places: the street-level benchmark <City>-<M>m (default 25)")
    p.add_argument("--separation", type=float, default=100.0, metavar="M",
                   help="least distance between released train/test places of <City> (default 100)")
    p.add_argument("--street-test-places", type=int, default=600, metavar="N",
                   help="street-level test places per region, whole blocks of the test area (default 600; 0: all)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="seed for rendering, texts and split")
    p.add_argument("--workers", type=int, default=1, metavar="K", help="worker processes (default 1)")
    p.add_argument("--no-hf", action="store_true", help="skip saving the datasets.DatasetDict folders")
    p.add_argument("--allow-no-pois", action="store_true",
                   help="accept an extract without named POIs (texts then name streets only)")
    p.add_argument("--osm-renderer", choices=("builtin", "carto"), default="builtin",
                   help="who draws the OSM view: builtin (PIL, Carto colours; default) or carto (mapnik + "
                   "openstreetmap-carto from the extract, labels as on openstreetmap.org; needs `make osm-stack`)")
    p.set_defaults(func=build_embedded_command)

    d = data_subparsers.add_parser(
        "densify",
        help="add training-only <City>-dense versions: more places, sampled densely away from the test split",
        description="Sample extra training places every --spacing metres along the streets of a built "
        "embedded dataset, keep those at least one tile footprint from every test place, and write "
        "their satellite/OSM tiles and descriptions as the training-only versions <City>-dense "
        "(the tiny profile's stage 1 trains on them). Resumes; the same arguments give the same files.",
    )
    d.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"the built dataset (default {DEFAULT_OUT})")
    d.add_argument("--spacing", type=float, default=8.0, metavar="M",
                   help="metres between dense places along a street (default 8)")
    d.add_argument("--max-places", type=int, default=DEFAULT_MAX_PLACES, metavar="N",
                   help=f"at most N dense places per region, strided along the streets (default {DEFAULT_MAX_PLACES}; "
                   "0: all)")
    d.add_argument("--workers", type=int, default=1, metavar="K", help="worker processes (default 1)")
    d.set_defaults(func=densify_command)

    c = data_subparsers.add_parser(
        "contact-sheets",
        help="(re)draw the contact sheets of a built embedded dataset and copy them to reports/",
        description="Draw <out>/contact_sheet_<Region>.png for every region of a built embedded "
        "dataset (all views and both texts of a few test locations) and copy each to "
        "<to>/embedded_<Region>_contact_sheet.png.",
    )
    c.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"the built dataset (default {DEFAULT_OUT})")
    c.add_argument("--to", type=Path, default=Path("reports"), help="where to copy them (default reports)")
    c.add_argument("--rows", type=int, default=4, metavar="N", help="locations per sheet (default 4)")
    c.set_defaults(func=contact_sheets_command)

    o = data_subparsers.add_parser(
        "compare-osm-renderers",
        help="the built-in OSM tiles of a built embedded dataset beside mapnik + openstreetmap-carto's, per region",
        description="For a few places of each region of a built embedded dataset (those of its contact sheet), "
        "put the OSM tile the build holds beside the same footprint rendered with mapnik + openstreetmap-carto "
        "(needs `make osm-stack`) and write <to>/osm_renderers_<Region>.png.",
    )
    o.add_argument("--data", type=Path, default=DEFAULT_OUT, help=f"the built dataset (default {DEFAULT_OUT})")
    o.add_argument("--to", type=Path, default=Path("reports/figures"), help="where to write (default reports/figures)")
    o.add_argument("--regions", default="", help="comma-separated regions, e.g. Monaco (default: all of the build)")
    o.add_argument("--places", type=int, default=6, metavar="N", help="places per region (default 6)")
    o.set_defaults(func=compare_osm_renderers_command)


def build_embedded_command(args) -> int:
    from geotextloc.data.embedded.builder import BuildSettings, build
    from geotextloc.errors import ConfigError

    for flag, value, low in (("--size", args.size, 32), ("--pano-width", args.pano_width, 64),
                             ("--workers", args.workers, 1)):
        if value < low:
            raise ConfigError(f"{flag} {value}: must be at least {low}")
    if min(args.spacing, args.separation) <= 0 or (args.max_locations is not None and args.max_locations < 1):
        raise ConfigError("--spacing and --separation must be positive and --max-locations at least 1")
    if args.street_test_places < 0:
        raise ConfigError(f"--street-test-places {args.street_test_places}: must be at least 0 (0: all)")
    settings = BuildSettings(size=args.size, pano_width=args.pano_width, spacing=args.spacing,
                             separation_m=args.separation, street_test_places=args.street_test_places or None,
                             seed=args.seed, osm_renderer=args.osm_renderer)
    regions = [r for r in args.regions.split(",") if r.strip()]
    start = time.perf_counter()
    report = build(args.out, regions, args.pbf, args.max_locations, settings, workers=args.workers,
                   hf=not args.no_hf, allow_no_pois=args.allow_no_pois)
    took = time.perf_counter() - start
    for city, counts in report.locations.items():
        nn = report.stats["versions"][city]["test_nearest_neighbour_m"]
        print(f"{city}: {counts['train']} train, {counts['test']} test places (test places' median "
              f"nearest neighbour {nn:g} m)")
    for city, r in report.stats["regions"].items():
        print(f"{city}: {r['locations']['excluded']} street places excluded (within {settings.buffer_m:g} m "
              "of the test area)")
    text = report.stats.get("text", {}).get("panorama", {})
    print(f"rendered {report.rendered} locations, {report.skipped_done} already done, in {took:.1f} s")
    if text:
        print("panorama texts: " + json.dumps({k: text[k] for k in ("mean_tokens", "share_over_77_with_cue_after_77",
                                                                     "type_token_ratio", "inter_text_similarity")}))
    for sheet in report.contact_sheets:
        print(f"contact sheet: {sheet}")
    if args.osm_renderer == "carto":
        carto = json.loads((args.out / "build.json").read_text(encoding="utf-8")).get("osm_renderer", {})
        for city, r in sorted(carto.get("regions", {}).items()):
            print(f"{city}: OSM views by mapnik + openstreetmap-carto; coastline: {r['coastline']}")
    print(f"wrote {args.out} (read it with: geotextloc data info {args.out}; "
          f"copy the contact sheets to reports/ with: geotextloc data contact-sheets --out {args.out})")
    return 0


def densify_command(args) -> int:
    from geotextloc.data.embedded.dense import densify
    from geotextloc.errors import ConfigError

    if args.workers < 1 or args.max_places < 0:
        raise ConfigError(f"--workers {args.workers} / --max-places {args.max_places}: workers must be at least 1, "
                          "max-places at least 0 (0: all)")
    start = time.perf_counter()
    report = densify(args.out, args.spacing, workers=args.workers, max_places=args.max_places or None)
    for city, counts in report.counts.items():
        print(f"{city}-dense: {counts['kept']} training places ({counts['near_test']} dropped: "
              "within one tile footprint of a test place)")
    print(f"rendered {report.rendered} places, {report.skipped_done} already done, "
          f"in {time.perf_counter() - start:.1f} s; wrote {args.out}/dense.json")
    return 0


def contact_sheets_command(args) -> int:
    from geotextloc.data.embedded.contact_sheet import build_contact_sheets, copy_contact_sheets
    from geotextloc.errors import ConfigError, DataError

    build = args.out / "build.json"
    if not build.is_file():
        raise DataError(f"{build}: not found; build the dataset first with geotextloc data build-embedded "
                        f"--out {args.out}")
    if args.rows < 1:
        raise ConfigError(f"--rows {args.rows}: must be at least 1")
    manifest = json.loads(build.read_text(encoding="utf-8"))
    cities = sorted(manifest.get("regions", {}))
    seed = manifest.get("settings", {}).get("seed", 0)
    build_contact_sheets(args.out, cities, rows=args.rows, seed=seed)
    for path in copy_contact_sheets(args.out, args.to):
        print(f"wrote {path}")
    return 0


def compare_osm_renderers_command(args) -> int:
    from geotextloc.data.embedded.compare_renderers import compare_osm_renderers
    from geotextloc.errors import ConfigError

    if args.places < 1:
        raise ConfigError(f"--places {args.places}: must be at least 1")
    regions = [r.strip() for r in args.regions.split(",") if r.strip()] or None
    for path, note in compare_osm_renderers(args.data, args.to, regions, args.places):
        print(f"wrote {path} ({note})")
    return 0
