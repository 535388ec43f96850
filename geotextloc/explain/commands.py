"""``geotextloc explain``: why were these tiles retrieved for this text?

    geotextloc explain --checkpoint runs/tiny/best.pt --data data/embedded --version Helsinki \\
        --query "On your left a cafe named ..." [--near 60.17,24.94] [--view osm|satellite] \\
        [--explainer offline|openai] --out runs/explain/q1
    geotextloc explain --checkpoint runs/tiny/best.pt --data data/embedded --version Helsinki \\
        --record "60.1699,24.9384_..."      # a test query: its text, truth and geo scope

Writes ``top5.png``, ``query_relevance.png``, ``heatmaps/<rank>.png`` and ``explanation.json``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from geotextloc.errors import ConfigError, DataError

VIEWS = {"osm": "osm", "satellite": "sat", "sat": "sat"}


def register(subparsers) -> None:
    p = subparsers.add_parser("explain", help="relevance maps, rationale and ERM re-ranking for a text query")
    p.add_argument("--checkpoint", required=True, help="a training checkpoint (best.pt/last.pt)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--query", help="the description to localise")
    which.add_argument("--record", help="name of a record of the split: use its text and ground truth")
    p.add_argument("--data", default="data/embedded", help="release root (holding CVG-text/)")
    p.add_argument("--version", help="release version (default: the checkpoint's first)")
    p.add_argument("--split", default="test", help="records forming the gallery (default: test)")
    p.add_argument("--view", choices=sorted(VIEWS), help="gallery view (default: the checkpoint's)")
    p.add_argument("--near", help="'LAT,LON': search the --scope tiles nearest to it (default: all)")
    p.add_argument("--scope", type=int, default=100, help="candidates: the M nearest tiles")
    p.add_argument("--explainer", choices=("offline", "openai"), default="offline")
    p.add_argument("--lmm-model", default="gpt-4o", help="model name for --explainer openai")
    p.add_argument("--base-url", help="OpenAI-compatible endpoint (default: OPENAI_BASE_URL or OpenAI)")
    p.add_argument("--budget", type=int, default=20, help="max LMM requests")
    p.add_argument("--start-layer", type=int, default=-1, help="first block of the relevance rollout")
    p.add_argument("--weight", type=float, default=1.0, help="λ of the confidence re-ranking")
    p.add_argument("--cache", default=".cache/explain", help="OCR / LMM cache folder")
    p.add_argument("--out", default="runs/explain", help="output folder")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=run_explain)


def _near(text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    try:
        lat, lon = (float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"--near {text!r}: expected 'LAT,LON', e.g. 60.1699,24.9384") from None
    return lat, lon


def run_explain(args: argparse.Namespace) -> int:
    from geotextloc.data.release import read_release
    from geotextloc.explain import make_explainer
    from geotextloc.explain.pipeline import explain_query, save
    from geotextloc.models.factory import from_checkpoint
    from geotextloc.data.images import image_paths, one_per_name
    from geotextloc.eval.embed import embed_images

    near = _near(args.near)
    cached = Path(args.cache) / "lmm"
    if args.explainer == "openai" and not os.environ.get("OPENAI_API_KEY") and not (
            cached.is_dir() and any(cached.rglob("*.json"))):
        raise ConfigError("OPENAI_API_KEY is not set (and no cached LMM answers in "
                          f"{cached}): export it, or use --explainer offline")
    asked = VIEWS[args.view] if args.view else None
    model, _, preprocess, tokenizer, config = from_checkpoint(args.checkpoint, device=args.device, view=asked)
    view = asked or (config or {}).get("view")
    if view is None:
        raise ConfigError(f"{args.checkpoint}: the file does not say its view; pass --view osm|satellite")
    version = args.version or ((config or {}).get("versions") or [None])[0]
    if version is None:
        raise ConfigError(f"{args.checkpoint}: the file does not name a release version; pass --version")
    records = read_release(args.data, versions=[version], splits=(args.split,)).records
    gallery = one_per_name(records)
    if not gallery:
        raise DataError(f"{args.data}: version {version!r} has no {args.split} records")
    text, truth = args.query, None
    if args.record:
        record = next((r for r in records if r.name == args.record), None)
        if record is None:
            raise DataError(f"{args.data}: no {args.split} record named {args.record!r} in {version}")
        text, truth, near = record.text, record.name, near or (record.lat, record.lon)
    explainer = make_explainer(args.explainer, args.cache, **(
        {"model": args.lmm_model, "base_url": args.base_url, "budget": args.budget}
        if args.explainer == "openai" else {}))
    model.eval()
    features = embed_images(model, image_paths(gallery, view), preprocess)
    result = explain_query(model, preprocess, tokenizer, text, gallery, features, view, explainer,
                           scope=args.scope, near=near, truth=truth,
                           start_layer=args.start_layer, weight=args.weight)
    written = save(result, args.out)
    e = result.explanation
    where = f"the {args.scope} tiles nearest {near}" if near else "the whole gallery"
    print(f"{version} text -> {view}: top {len(result.candidates)} of {where}")
    for c in result.candidates:
        conf = f"  conf {c['confidence']:.2f} -> #{c['new_rank']}" if "confidence" in c else ""
        print(f"  sim {c['score']:.3f}{conf}  {c['name']}")
    if e.status != "ok":
        print(f"explainer {e.explainer}: {e.status}: {e.error}")
    print(json.dumps({k: round(v, 3) for k, v in result.seconds.items()}))
    print(f"wrote {len(written)} files under {args.out}")
    return 0
