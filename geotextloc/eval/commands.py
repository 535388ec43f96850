"""``geotextloc index`` (build a gallery index from a checkpoint), ``geotextloc search`` and
``geotextloc baselines`` (chance and map-label retrieval on an embedded dataset)."""

from __future__ import annotations

import argparse
from pathlib import Path

from geotextloc.errors import ConfigError, DataError


def lat_lon(value: str) -> tuple[float, float]:
    """'LAT,LON' in degrees -> (lat, lon)."""
    try:
        lat, lon = (float(part) for part in value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LAT,LON in degrees, e.g. 40.7529,-73.9796; got {value!r}") from None
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
        raise argparse.ArgumentTypeError(f"{value!r} is outside -90..90, -180..180")
    return lat, lon


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "search",
        help="find the gallery tiles that best match a description, a street view, or both",
        description="Search a saved gallery index with a text description, a street-view image (--image), or "
        "both (one fused query; the index must be built from a run trained for such queries: query: street "
        "or fusion). With --near, only the --scope tiles nearest to that point are ranked (the evaluation "
        "protocol's rule), or with --radius every tile within that distance. Write a negative latitude as "
        "--near=-27.47,153.02.",
    )
    parser.add_argument("text", nargs="?", help="the description to search for")
    parser.add_argument("--image", type=Path, metavar="PATH",
                        help="a street view (panorama or single photo) of the place, alone or beside the text")
    parser.add_argument("--index", required=True, type=Path, metavar="DIR", help="a saved GalleryIndex folder")
    parser.add_argument("--k", type=int, default=5, help="number of matches to print (default 5)")
    parser.add_argument("--near", type=lat_lon, metavar="LAT,LON", help="rank only tiles near this point")
    parser.add_argument("--scope", type=int, help="with --near: how many nearest tiles to rank (default 100)")
    parser.add_argument("--radius", type=float, metavar="KM",
                        help="with --near: rank every tile within KM kilometres (instead of the nearest --scope)")
    parser.set_defaults(func=run_search)

    build = subparsers.add_parser(
        "index",
        help="embed a release version's tiles with a checkpoint into a gallery index (for search)",
        description="Either paper's checkpoint: a GeoBridge checkpoint embeds the tiles with its satellite "
        "encoder (--view sat) and the queries with its shared text tower. The build measures recall@10 "
        "against exact search on 500 held-out queries (gallery rows plus noise) and, for an approximate "
        "index, widens its search until that reaches 0.95. Memory: a 1M x 512 gallery costs 2 GiB of "
        "float32 embeddings.npy plus a FAISS copy of 2 GiB (flat, ivf; hnsw 2.3 GiB), about 4 GiB on "
        "disk and in RAM; --compress float16 halves the vectors in both files (3 GiB RAM: the embeddings are upcast "
        "when loaded), --compress pq keeps 64 bytes a tile in FAISS (about 1.1 GiB on disk, 2.1 GiB RAM) "
        "and re-scores its shortlist exactly with the float16 embeddings.",
    )
    build.add_argument("--checkpoint", required=True, help="a training checkpoint (best.pt) or released weights")
    build.add_argument("--model", help="open_clip name for a bare state dict (default: the paper's ViT-L-14-336)")
    build.add_argument("--data", required=True, type=Path, help="release root (the folder holding CVG-text/)")
    build.add_argument("--version", required=True, help="release version, e.g. Helsinki-mixed or NewYork")
    build.add_argument("--view", choices=("osm", "sat"), default="osm", help="gallery tiles (default osm)")
    build.add_argument("--split", action="append", choices=("train", "test"),
                       help="splits whose tiles form the gallery (repeatable; default: both)")
    build.add_argument("--kind", choices=("auto", "flat", "hnsw", "ivf"), default="auto",
                       help="FAISS index: exact (flat), approximate (hnsw, ivf), or auto (default): flat up to "
                       "30,000 tiles, ivf above")
    build.add_argument("--compress", choices=("none", "float16", "pq"), default="none",
                       help="none (float32, default), float16 (half the bytes), or pq (ivf with 1/32 of the "
                       "bytes in FAISS, exact re-ranking)")
    build.add_argument("--out", required=True, type=Path, metavar="DIR", help="folder to write the index to")

    base = subparsers.add_parser(
        "baselines",
        help="chance and map-label retrieval on the test split of each version of a built embedded dataset",
        description="Run the CVG-Text protocol with random similarities and with a bag of words of the "
        "labels printed on each OSM tile (geotextloc.eval.baselines) on the test split of each version.",
    )
    base.add_argument("--data", "--out", dest="data", type=Path, default=Path("data/embedded"),
                      help="the built embedded dataset (default data/embedded)")
    base.add_argument("--versions", default=None, metavar="V,V",
                      help="comma-separated versions (default: every <City>, <City>-photos, <City>-25m, ... on disk)")
    base.add_argument("--scope", type=int, default=100, help="candidates per query (default 100, the paper's)")
    base.add_argument("--seed", type=int, default=0, help="seed of the random similarities and tie-breaking jitter")
    base.set_defaults(func=run_baselines_command)
    build.add_argument("--device", default="cpu")
    build.set_defaults(func=run_index)


QUERY_USAGE = {"text": '"a description"', "street": "--image street.jpg",
               "fusion": '"a description" (and/or --image street.jpg)'}  # what a run's index answers


def run_index(args: argparse.Namespace) -> int:
    """Gallery = one tile per name of the chosen splits; queries are later embedded with the
    same checkpoint (the index's ``open_clip`` encoder spec)."""
    from geotextloc.data.release import read_release
    from geotextloc.eval.index import GalleryIndex
    from geotextloc.models.factory import from_checkpoint
    from geotextloc.data.images import image_paths
    from geotextloc.eval.embed import embed_images

    splits = args.split or ["train", "test"]
    records = {r.name: r for r in reversed(read_release(args.data, versions=[args.version], splits=splits).records)}
    tiles = sorted(records.values(), key=lambda r: r.name)
    model, _, preprocess, _, config = from_checkpoint(args.checkpoint, name=args.model, device=args.device,
                                                      view=args.view)
    model.eval()
    features = embed_images(model, image_paths(tiles, args.view), preprocess)
    meta = [{"name": r.name, "lat": r.lat, "lon": r.lon, "version": r.version, "split": r.split} for r in tiles]
    encoder = {"kind": "open_clip", "checkpoint": str(Path(args.checkpoint).resolve())}
    if args.model:
        encoder["model"] = args.model
    index = GalleryIndex(features.numpy(), meta, encoder=encoder, kind=args.kind, compress=args.compress,
                         progress=True)
    index.save(args.out)
    stored = sum((args.out / name).stat().st_size for name in ("embeddings.npy", "index.faiss")) / len(index)
    params = ", ".join(f"{key} {value}" for key, value in index.params.items())
    print(f"wrote {args.out}: {len(tiles)} {args.view} tiles of {args.version} ({', '.join(splits)}); "
          f"{index.kind} index ({params or 'exact'}), compress {index.compress}, {stored:,.0f} bytes a tile; "
          f"recall@10 {index.recall_at_10:.3f} against exact search on {index.recall_sample} held-out queries; "
          f"search it with: geotextloc search --index {args.out} {QUERY_USAGE[(config or {}).get('query', 'text')]}")
    return 0


def run_search(args: argparse.Namespace) -> int:
    from geotextloc.eval.index import GalleryIndex  # imports FAISS: only when searching

    if args.scope is not None and args.near is None:
        raise ConfigError("--scope needs --near LAT,LON (the point whose nearest tiles are ranked)")
    if args.radius is not None and args.near is None:
        raise ConfigError("--radius needs --near LAT,LON (the centre of the circle whose tiles are ranked)")
    if args.radius is not None and args.scope is not None:
        raise ConfigError("give --radius or --scope, not both (--radius ranks every tile within it)")
    if args.radius is not None and not 0 < args.radius < float("inf"):
        raise ConfigError(f"--radius must be a positive number of kilometres, got {args.radius}")
    if args.k < 1 or (args.scope is not None and args.scope < 1):
        raise ConfigError("--k and --scope must be positive integers")
    if args.text is None and args.image is None:
        raise ConfigError('give a description, --image PATH, or both, e.g. geotextloc search --index DIR "a bus stop"')
    if args.image is not None:
        from geotextloc.data.images import load_image

        if not args.image.is_file():
            raise DataError(f"--image {args.image}: no such file; give the path of a street-view image")
        load_image(args.image)  # not an image: one line now, before the model loads
    index = GalleryIndex.load(args.index)
    scope = args.scope if args.scope is not None else 100
    result = index.search_query(texts=None if args.text is None else [args.text],
                                images=None if args.image is None else [args.image],
                                k=args.k, near=args.near, scope=scope, radius_km=args.radius)
    if not any(result.names[0]):
        print(f"no tile within {args.radius:g} km of {args.near[0]},{args.near[1]}")
        return 0
    header = f"{'rank':>4}  {'score':>7}  {'lat':>11}  {'lon':>12}"
    header += f"  {'km':>7}" if args.near else ""
    print(header + "  name")
    for j, name in enumerate(result.names[0]):
        if not name:
            continue
        line = f"{j + 1:>4}  {result.scores[0, j]:>7.4f}  {result.lat[0, j]:>11.6f}  {result.lon[0, j]:>12.6f}"
        line += f"  {result.distance_km[0, j]:>7.3f}" if args.near else ""
        print(f"{line}  {name}")
    return 0


def run_baselines_command(args: argparse.Namespace) -> int:
    import pandas as pd

    from geotextloc.data.release import discover_versions
    from geotextloc.errors import DataError
    from geotextloc.eval.baselines import run_baselines, summary

    if not (args.data / "facts").is_dir():
        raise DataError(f"{args.data}/facts: not found; the map-label baseline needs an embedded dataset "
                        f"(geotextloc data build-embedded --out {args.data})")
    on_disk = discover_versions(args.data)
    versions = ([v.strip() for v in args.versions.split(",") if v.strip()] if args.versions
                else [v for v in on_disk if not v.endswith(("-mixed", "-dense"))])
    reports = run_baselines(args.data, versions, scope=args.scope, seed=args.seed)
    if not reports:
        raise DataError(f"{args.data}: no test records in {', '.join(versions)}; pick versions with a test split")
    with pd.option_context("display.width", 200, "display.max_rows", None, "display.max_columns", None):
        print(summary(reports)[["R@1", "R@5", "R@10", "L@50", "L@100", "Deviation", "Count"]].round(2))
    return 0
