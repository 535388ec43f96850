"""``geotextloc data build-geoloc`` (a GeoLoc dataset from an orthophoto) and ``data synth-orthophoto``."""

from __future__ import annotations

import sys
from pathlib import Path

from geotextloc.errors import ConfigError


def _floats(text: str, option: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"{option} {text!r}: give numbers separated by commas, e.g. 80,120,180") from None
    if not values:
        raise ConfigError(f"{option} {text!r}: give at least one number")
    return values


def register(data_subparsers) -> None:
    from geotextloc.data import materialize
    from geotextloc.data.geoloc_build import GeoLocSettings
    from geotextloc.data.geoloc_sources import SATELLITE_SOURCES, STREET_SOURCES

    d = GeoLocSettings()
    p = data_subparsers.add_parser(
        "build-geoloc", help="build a GeoLoc dataset (GeoBridge) from a geo-referenced UAV orthophoto",
        description="The paper's construction end to end: sliding-window footprints -> seeds -> street views at "
        "the seeds (inside the UAV coverage) -> reverse crops at several scales -> >50%% overlap dedup -> BH/C/UN "
        "gates (rejects kept with their scores) -> aligned satellite tiles -> one unified description per "
        "location -> geoloc/<NAME>/{train,test}.jsonl. Resumable (same arguments, same --out). Offline, on an "
        "orthophoto of an embedded region (geotextloc data synth-orthophoto), street views and satellite tiles "
        "come from the region's renderers (--street-provider/--satellite-provider embedded).",
    )
    p.add_argument("--orthophoto", required=True, type=Path, metavar="FILE.tif", help="geo-referenced orthophoto")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder (resumed when it holds a build)")
    p.add_argument("--name", help="the manifest's region name (default: the orthophoto's file name in CamelCase)")
    p.add_argument("--region", help="embedded region of the orthophoto (helsinki, kouvola, monaco); default: its "
                   "GEOTEXTLOC_REGION tag")
    p.add_argument("--crs", help="CRS of an orthophoto whose own is missing or user-defined, e.g. EPSG:3067")
    p.add_argument("--nodata", type=float, help="nodata value (default: the file's mask: nodata tag or alpha band)")
    p.add_argument("--resolution-m", type=float, metavar="M", help="read the orthophoto at about M metres per pixel "
                   "(default: native; UAV mosaics at 2-10 cm are worth reading at 0.3)")
    p.add_argument("--window-m", type=float, default=d.window_m, help=f"sliding window (default {d.window_m:g})")
    p.add_argument("--stride-m", type=float, default=d.stride_m, help=f"its step (default {d.stride_m:g})")
    p.add_argument("--scales", default=",".join(f"{s:g}" for s in d.scales_m), metavar="M,M,...",
                   help="reverse-crop sides in metres (default %(default)s; the paper: 80 to 180)")
    p.add_argument("--search-radius-m", type=float, default=d.search_radius_m,
                   help=f"street view nearest to a seed within this (default {d.search_radius_m:g}, as the API)")
    p.add_argument("--max-overlap", type=float, default=d.max_overlap, help="dedup threshold (default 0.5)")
    p.add_argument("--blur-min", type=float, default=d.blur_min, help=f"BH gate (default {d.blur_min:g})")
    p.add_argument("--contrast-min", type=float, default=d.contrast_min, help=f"C gate (default {d.contrast_min:g})")
    p.add_argument("--entropy-min", type=float, default=d.entropy_min, help=f"UN gate (default {d.entropy_min:g})")
    p.add_argument("--crop-px", type=int, default=d.crop_px, help=f"drone crops' side in pixels (default {d.crop_px})")
    p.add_argument("--test-fraction", type=float, default=d.test_fraction)
    p.add_argument("--block-m", type=float, default=d.block_m, help="split blocks (default %(default)s)")
    p.add_argument("--buffer-m", type=float, default=d.buffer_m, help="train kept this far from test (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--street-provider", choices=STREET_SOURCES, default="embedded")
    p.add_argument("--satellite-provider", choices=SATELLITE_SOURCES, default="embedded")
    p.add_argument("--satellite-footprint-m", type=float, default=120.0, help="embedded satellite tile side (default 120)")
    p.add_argument("--satellite-px", type=int, default=256, help="embedded satellite tile pixels (default 256)")
    p.add_argument("--endpoint", metavar="URL", help=f"Google base URL (default ${materialize.GOOGLE_ENDPOINT_ENV} "
                   f"or {materialize.GOOGLE_ENDPOINT})")
    p.add_argument("--template", metavar="URL", help="xyz/wmts satellite tile URL template")
    p.add_argument("--key-env", metavar="NAME", help=f"environment variable holding the key (default "
                   f"{materialize.GOOGLE_KEY_ENV})")
    p.add_argument("--zoom", type=int, default=19, help="provider satellite zoom (default 19)")
    p.add_argument("--street-size", metavar="WxH", help="Google street view size per view (default 640x640)")
    p.add_argument("--satellite-size", metavar="WxH", help="provider satellite size (default 512x512)")
    p.add_argument("--pano-views", type=int, default=4, help="Google views per panorama (default 4)")
    p.add_argument("--tile-size", type=int, default=256)
    p.add_argument("--tile-cache", type=Path, metavar="DIR")
    p.add_argument("--subdomains", default="abc")
    p.add_argument("--user-agent", default=materialize.DEFAULT_USER_AGENT)
    p.add_argument("--rate", type=float, default=5.0, help="provider requests per second (default 5)")
    p.add_argument("--writer", choices=("offline", "openai"), default="offline",
                   help="unified description: offline merge of the views' notes, or the paper's LMM prompt")
    p.add_argument("--model", default="gpt-4o", help="LMM for --writer openai (OPENAI_API_KEY, OPENAI_BASE_URL)")
    p.add_argument("--lmm-cache", type=Path, default=Path(".cache/lmm"), metavar="DIR")
    p.add_argument("--budget", type=int, default=200, help="LMM requests at most (default 200)")
    p.add_argument("--figure", type=Path, metavar="PNG", help="also save the figure of the steps here")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=build_geoloc_command)

    s = data_subparsers.add_parser(
        "synth-orthophoto", help="paint a geo-referenced UAV orthophoto (GeoTIFF) of an embedded region",
        description="A stand-in for an OpenAerialMap orthophoto: the aerial renderer over a bounding box of an "
        "embedded region, warped to the region's UTM zone (or --crs), RGBA with the flight's coverage as alpha.",
    )
    s.add_argument("--region", required=True, help="helsinki, kouvola or monaco")
    s.add_argument("--bbox", metavar="W,S,E,N", help="degrees (default: a --size-m square at the region's centre)")
    s.add_argument("--size-m", type=float, default=400.0, help="side of the default square (default 400)")
    s.add_argument("--resolution-m", type=float, default=0.3, help="ground metres per pixel (default 0.3)")
    s.add_argument("--crs", default="utm", help="'utm' (default) or EPSG:<code>, e.g. EPSG:3857")
    s.add_argument("--coverage", choices=("octagon", "full"), default="octagon")
    s.add_argument("--defects", action="store_true",
                   help="add a defocused strip and a washed-out patch (faults of real UAV mosaics) for the gates")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True, type=Path, metavar="FILE.tif")
    s.set_defaults(func=synth_orthophoto_command)


def _region(key: str | None):
    from geotextloc.data.embedded.regions import builtin_source, load_source

    return load_source(builtin_source(key.strip().lower()), require_pois=False) if key else None


def build_geoloc_command(args) -> int:
    from geotextloc.data.embedded.geoloc_views import aerial_facts
    from geotextloc.data.embedded.orthophoto import REGION_TAG
    from geotextloc.data.geoloc import orthophoto_tags
    from geotextloc.data.geoloc_build import GeoLocSettings, build_geoloc, lmm_writer, offline_writer
    from geotextloc.data.geoloc_sources import make_sources

    settings = GeoLocSettings(
        window_m=args.window_m, stride_m=args.stride_m, scales_m=_floats(args.scales, "--scales"),
        search_radius_m=args.search_radius_m, max_overlap=args.max_overlap, blur_min=args.blur_min,
        contrast_min=args.contrast_min, entropy_min=args.entropy_min, crop_px=args.crop_px,
        resolution_m=args.resolution_m, test_fraction=args.test_fraction, block_m=args.block_m,
        buffer_m=args.buffer_m, seed=args.seed, writer=args.writer)
    settings.check()
    tags = orthophoto_tags(args.orthophoto, crs=args.crs)  # a bad file stops here, in one line
    region = _region(args.region or tags.get(REGION_TAG))
    street, satellite, _ = make_sources(args, region, args.out, args.seed)
    aerial_notes = None
    if region is not None:
        def aerial_notes(pano, scale_m):
            return aerial_facts(region, *region.to_xy(pano.lat, pano.lon), scale_m)
    if args.writer == "offline":
        if region is None:
            raise ConfigError("--writer offline merges the views' notes, which only an embedded region's orthophoto "
                              "has (GEOTEXTLOC_REGION tag or --region); use --writer openai for real imagery")
        writer = offline_writer(settings.max_clauses)
    else:
        writer = lmm_writer(args.model, args.lmm_cache, args.budget)
    report = build_geoloc(args.orthophoto, args.out, street, satellite, settings, writer=writer, name=args.name,
                          crs=args.crs, nodata=args.nodata, aerial_notes=aerial_notes,
                          progress=not args.no_progress and sys.stderr.isatty())
    print(report.summary())
    print(f"manifest: {args.out / 'geoloc' / report.name}/{{train,test}}.jsonl; rejects: "
          f"{args.out / 'build' / 'rejects.jsonl'} and rejects_<STEP>.png; report: {args.out / 'build' / 'report.json'}")
    if args.figure:
        from geotextloc.data.geoloc_figures import steps_figure

        steps_figure(args.out, args.orthophoto, args.figure)
        print(f"figure: {args.figure}")
    return 0


def synth_orthophoto_command(args) -> int:
    from geotextloc.data.embedded.orthophoto import synth_orthophoto

    bbox = _floats(args.bbox, "--bbox") if args.bbox else None
    if bbox is not None and len(bbox) != 4:
        raise ConfigError(f"--bbox {args.bbox!r}: give WEST,SOUTH,EAST,NORTH in degrees")
    info = synth_orthophoto(_region(args.region), args.out, bbox=bbox, size_m=args.size_m,
                            resolution_m=args.resolution_m, crs=args.crs, coverage=args.coverage,
                            defects=args.defects, seed=args.seed)
    w, s, e, n = info.bbox
    print(f"{info.path}: {info.shape[1]} x {info.shape[0]} px at {info.resolution_m:g} m, {info.crs}, "
          f"bbox {w:.6f},{s:.6f},{e:.6f},{n:.6f}, coverage {info.coverage_share:.0%}")
    return 0
