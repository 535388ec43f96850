"""``geotextloc train``, ``geotextloc evaluate`` and ``geotextloc experiments`` (grids of runs,
:mod:`geotextloc.train.grid`).

    geotextloc train --config configs/tiny/crosstext2loc.yaml [--resume] [key=value ...]
    torchrun --nproc_per_node 4 -m geotextloc train --config configs/paper/crosstext2loc.yaml
    geotextloc evaluate --checkpoint runs/tiny/best.pt --data data/embedded --city Helsinki --view sat
    geotextloc evaluate --checkpoint runs/tiny/geobridge/best.pt --data data/embedded   # every GeoBridge direction
    geotextloc experiments --profile tiny --views osm,sat --variants truncate,interpolate --seeds 0,1,2
    geotextloc experiments --task geobridge --profile tiny --modes image-only,text-only,fused --seeds 0,1,2
    geotextloc late-fusion --text runs/tiny/osm/interpolate-full/seed0 --street runs/tiny/osm/street/seed0
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from geotextloc import config as profiles
from geotextloc.errors import ConfigError, DataError
from geotextloc.views import query_kind


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

    p = subparsers.add_parser(
        "experiments", help="run a grid of runs, resumable: CrossText2Loc (views x queries x EPE variants x text "
        "sources x seeds) or GeoBridge (modes x missing shares x seeds)",
        description="Finished runs are skipped, interrupted ones resumed; several processes can share a grid. "
                    "CrossText2Loc: stage-1 runs first where the profile has a stage 1 (scratch), then the "
                    "variants. Writes <runs-dir>/results.csv (CrossText2Loc: one row per run, city and query "
                    "group) or <runs-dir>/geobridge_results.csv (one row per run and direction).")
    p.add_argument("--task", default="crosstext2loc", choices=("crosstext2loc", "geobridge"))
    p.add_argument("--profile", default="tiny", choices=profiles.PROFILES)
    p.add_argument("--data-dir", help="release root (default: the profile's data_root)")
    p.add_argument("--runs-dir", help="where runs go (default runs/<profile>)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds")
    ct = p.add_argument_group("CrossText2Loc")
    ct.add_argument("--views", default="osm", help="comma-separated: sat,osm")
    ct.add_argument("--queries", default="text", help="comma-separated: text,street,fusion (street view, "
                    "street view + description; from the profile's crosstext2loc_<query>.yaml)")
    ct.add_argument("--baselines", default="", help="comma-separated comparison models trained beside the grid: "
                    "clip,siglip,blip,vilt (the profile's crosstext2loc_<baseline>.yaml)")
    ct.add_argument("--variants", default="interpolate", help="comma-separated EPE variants")
    ct.add_argument("--text-sources", default="full", help="comma-separated: full,direct")
    ct.add_argument("--pretrain-seed", type=int, default=None,
                    help="start every stage-2 run from the stage-1 run of this seed (default: its own seed)")
    gb = p.add_argument_group("GeoBridge")
    gb.add_argument("--modes", default="fused", help="comma-separated: image-only,text-only,fused")
    gb.add_argument("--missing-shares", default="0", help="comma-separated shares of training locations "
                    "without their satellite tile, e.g. 0,0.5")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides; CrossText2Loc: pretrain.key=value / finetune.key=value for one stage")
    p.set_defaults(func=run_experiments)

    p = subparsers.add_parser(
        "late-fusion", help="fuse a text-query run and a street-query run: s = w s_text + (1 - w) s_image, "
        "w chosen on their validation places, then the test split per city",
        description="Both runs need best.pt and the same val_share and versions (the same validation places). "
        "Writes <out>/late.json and the fused queries' per-query tables <out>/eval/<City>-<view>-queries.csv; "
        "a second call with unchanged checkpoints reads them back.")
    p.add_argument("--text", required=True, help="run folder of a query=text run (holding best.pt)")
    p.add_argument("--street", required=True, help="run folder of a query=street run of the same view")
    p.add_argument("--out", help="output folder (default: <view>/late-<text run's folder name> beside the text run)")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=run_late_fusion)


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
    query = query_kind(config)  # street and fusion runs: their own queries
    report = evaluate_model(model, test, view, preprocess, tokenizer, scope=args.scope, batch_size=args.batch_size,
                            query=query)

    out = Path(args.out or Path(args.checkpoint).parent / "eval")
    stem = f"{args.city}-{view}"
    summary = report.to_dict()
    atomic_write_text(out / f"{stem}.json", json.dumps(
        {"checkpoint": str(args.checkpoint), "version": version, "view": view, "scope": args.scope, **summary},
        indent=2))
    report.to_csv(out / f"{stem}-queries.csv")
    print(f"{version} {query} -> {view} (scope {args.scope}, {len(test)} queries)")
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


def _items(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _numbers(text: str, kind, flag: str) -> list:
    try:
        return [kind(item) for item in _items(text)]
    except ValueError:
        raise ConfigError(f"{flag} {text!r}: expected comma-separated {kind.__name__} values") from None


def run_experiments(args: argparse.Namespace) -> int:
    import torch

    from geotextloc.eval.compare import format_mean_std, mean_std
    from geotextloc.files import atomic_write_text
    from geotextloc.train import grid

    if args.threads:
        torch.set_num_threads(args.threads)
    seeds = _numbers(args.seeds, int, "--seeds")
    if args.task == "geobridge":
        specs = grid.plan_geobridge(_items(args.modes), seeds, _numbers(args.missing_shares, float, "--missing-shares"))
        by, metrics, name = ["mode", "missing_share", "direction"], ("R@1", "R@10", "AP"), "geobridge_results.csv"
    else:
        specs = grid.plan(args.profile, _items(args.views), _items(args.variants), seeds,
                          _items(args.text_sources), pretrain_seed=args.pretrain_seed, queries=_items(args.queries),
                          baselines=_items(args.baselines))
        by, metrics, name = ["view", "query", "baseline", "epe", "text_source", "city", "group"], ("R@1", "R@5", "R@10", "L@50"), "results.csv"
    runs_dir = Path(args.runs_dir or f"runs/{args.profile}")
    table = grid.run_grid(specs, args.profile, runs_dir, args.data_dir, profiles.parse_overrides(args.overrides))
    atomic_write_text(runs_dir / name, table.to_csv(index=False))
    if len(table):
        print(format_mean_std(mean_std(table, by, metrics)).to_string())
    print(f"wrote {runs_dir / name}")
    return 0


def run_late_fusion(args: argparse.Namespace) -> int:
    from geotextloc.train.late_fusion import late_dir, late_fusion_run

    out = Path(args.out) if args.out else late_dir(args.text)
    result = late_fusion_run(args.text, args.street, out, args.device)
    best = next(row for row in result["validation"] if row["w"] == result["weight"])
    print(f"w = {result['weight']:g} (the text similarity's weight), validation R@1 {best['R@1']:.2f}")
    rows = {where: {kind: result["test"][kind][where]["R@1"] for kind in ("text", "street", "late")}
            for where in result["test"]["late"]}
    print(f"{'test R@1 (%)':28s} {'text':>7s} {'street':>7s} {'late':>7s}")
    for where, row in rows.items():
        print(f"{where:28s} {row['text']:7.2f} {row['street']:7.2f} {row['late']:7.2f}")
    print(f"wrote {out / 'late.json'} and {out / 'eval'}/")
    return 0
