"""``geotextloc train`` and ``geotextloc evaluate``.

    geotextloc train --config configs/tiny/crosstext2loc.yaml [--resume] [key=value ...]
    torchrun --nproc_per_node 4 -m geotextloc train --config configs/paper/crosstext2loc.yaml
    geotextloc evaluate --checkpoint runs/tiny/best.pt --data data/embedded --city Helsinki --view sat
    geotextloc evaluate --checkpoint runs/tiny/geobridge/best.pt --data data/embedded   # every GeoBridge direction
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from geotextloc.errors import ConfigError, DataError


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train CrossText2Loc or GeoBridge (the config's task; DDP under torchrun, resumable)")
    p.add_argument("--config", required=True, help="YAML profile, e.g. configs/tiny/crosstext2loc.yaml")
    p.add_argument("--resume", action="store_true", help="continue the run in out_dir from last.pt")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. epochs=3")
    p.set_defaults(func=run_train)

    p = subparsers.add_parser(
        "evaluate", help="embed a city's test split and run the CVG-Text protocol (either paper's checkpoint)",
        description="CrossText2Loc checkpoints: text -> tile of --view on --city's test split. GeoBridge "
        "checkpoints: the same with their satellite (or --view drone/street) encoder when --city is given, "
        "else every retrieval direction (D2S ... T2S) on the GeoLoc manifest's test split under --data.")
    p.add_argument("--checkpoint", required=True, help="our best.pt/last.pt or released CrossText2Loc weights")
    p.add_argument("--data", required=True, help="release root (the folder holding CVG-text/ and/or geoloc/)")
    p.add_argument("--city", help="city/region, e.g. NewYork or Helsinki (required but for GeoBridge's all-directions run)")
    p.add_argument("--regions", help="GeoBridge, all directions: comma-separated GeoLoc regions (default: all)")
    p.add_argument("--view", choices=("sat", "osm", "drone", "street"),
                   help="gallery view (default: the checkpoint's; GeoBridge: sat, drone or street)")
    p.add_argument("--version", help="release version (default: <city>-mixed, else <city>)")
    p.add_argument("--model", help="open_clip name for bare state dicts (default ViT-L-14-336-quickgelu)")
    p.add_argument("--context-length", type=int, help="text positions for bare state dicts (default: the file's)")
    p.add_argument("--scope", type=int, default=100, help="candidates per query (M nearest tiles)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", help="output folder (default: <checkpoint folder>/eval)")
    p.set_defaults(func=run_evaluate)


def run_train(args: argparse.Namespace) -> int:
    import torch.distributed as dist

    from geotextloc.train.config import load_config
    from geotextloc.train.loop import train

    cfg = load_config(args.config, args.overrides + (["resume=true"] if args.resume else []))
    try:
        summary = train(cfg)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if int(os.environ.get("RANK", 0)) == 0:
        print(json.dumps(summary))
    return 0


def city_version(root: str, city: str) -> str:
    """``<city>-mixed`` (panorama + single-view texts) when both parts exist, else what does."""
    from geotextloc.data.release import discover_versions

    on_disk = discover_versions(root)
    for version in (f"{city}-mixed", city, f"{city}-photos"):
        parts = {city, f"{city}-photos"} if version.endswith("-mixed") else {version}
        if version in on_disk or parts <= set(on_disk):
            return version
    raise DataError(f"{root}: no release version for city {city!r} (on disk: {', '.join(on_disk) or 'none'})")


def run_evaluate(args: argparse.Namespace) -> int:
    from geotextloc.data.release import read_release
    from geotextloc.files import atomic_write_text
    from geotextloc.models.factory import from_checkpoint
    from geotextloc.train.loop import setup_distributed
    from geotextloc.eval.embed import evaluate_model

    device, _, _ = setup_distributed(args.device)
    if args.city is None:
        return evaluate_directions(args, str(device))
    model, _, preprocess, tokenizer, config = from_checkpoint(
        args.checkpoint, args.model, args.context_length, device=str(device), view=args.view
    )
    view = args.view or (config or {}).get("view")
    if view is None:
        raise ConfigError(f"{args.checkpoint}: a bare state dict does not say its view; pass --view sat|osm")
    version = args.version or city_version(args.data, args.city)
    test = [r for r in read_release(args.data, versions=[version], splits=("test",)).records if r.split == "test"]
    if not test:
        raise DataError(f"{args.data}: version {version!r} has no test records")
    report = evaluate_model(model, test, view, preprocess, tokenizer, scope=args.scope, batch_size=args.batch_size)

    out = Path(args.out or Path(args.checkpoint).parent / "eval")
    stem = f"{args.city}-{view}"
    summary = report.to_dict()
    atomic_write_text(out / f"{stem}.json", json.dumps(
        {"checkpoint": str(args.checkpoint), "version": version, "view": view, "scope": args.scope, **summary},
        indent=2))
    report.to_csv(out / f"{stem}-queries.csv")
    print(f"{version} text -> {view} (scope {args.scope}, {len(test)} queries)")
    print(report)
    print(f"wrote {out / f'{stem}.json'} and {out / f'{stem}-queries.csv'}")
    return 0


def evaluate_directions(args: argparse.Namespace, device: str) -> int:
    """``geotextloc evaluate`` of a GeoBridge checkpoint without --city: every direction."""
    from geotextloc.data.geoloc_manifest import read_geoloc
    from geotextloc.eval.multiview import evaluate_multiview
    from geotextloc.files import atomic_write_text
    from geotextloc.train.loop import load_checkpoint

    model, preprocess, tokenizer, cfg = load_checkpoint(args.checkpoint, device)
    if cfg.task != "geobridge":
        raise ConfigError(f"{args.checkpoint}: a {cfg.task} checkpoint needs --city (the release's city to evaluate)")
    regions = [r.strip() for r in args.regions.split(",") if r.strip()] if args.regions else None
    test = [r for r in read_geoloc(args.data, regions) if r.split == "test"]
    if not test:
        raise DataError(f"{args.data}: the GeoLoc manifest has no test locations"
                        f"{' in ' + args.regions if args.regions else ''}")
    report = evaluate_multiview(model, test, preprocess, tokenizer, scope=args.scope, batch_size=args.batch_size)
    out = Path(args.out or Path(args.checkpoint).parent / "eval")
    atomic_write_text(out / "directions.json", json.dumps(
        {"checkpoint": str(args.checkpoint), "regions": regions, "scope": args.scope, **report.to_dict()}, indent=2))
    report.to_csv(out / "directions-queries.csv")
    print(f"GeoBridge ({cfg.mode}), {len(test)} test locations, every direction")
    print(report)
    print(f"wrote {out / 'directions.json'} and {out / 'directions-queries.csv'}")
    return 0
