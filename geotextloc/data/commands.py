"""``geotextloc data ...``: ``data info PATH`` (and ``data build-embedded`` from the embedded builder).

``data info`` reads a release folder (or a saved / Hub-format dataset folder) and prints a
summary: records per version, split, view type and image kind, and description lengths in
CLIP tokens. Bad input stops it with one line; ``--skip-bad`` skips bad items instead, writes
them to a report (``--report``, JSON or CSV) and says how many there were.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from geotextloc.data import materialize
from geotextloc.data.embedded import commands as embedded_commands
from geotextloc.data import describe_commands, geoloc_commands, osm_commands
from geotextloc.data.release import (IMAGE_KINDS, PANORAMA, SINGLE, SPLITS, BadItemError, Skipped,
                                     discover_versions, read_release)
from geotextloc.errors import DataError
from geotextloc.files import atomic_path

CONTEXT = 77  # CLIP's text context, start and end tokens included
DEFAULT_REPORT = Path("geotextloc-skipped.json")


def register(subparsers) -> None:
    data = subparsers.add_parser("data", help="inspect and build CVG-Text-style datasets")
    data_subparsers = data.add_subparsers(dest="data_command", metavar="COMMAND", required=True)
    info = data_subparsers.add_parser(
        "info", help="summarise a release folder (or a saved dataset folder)",
        description="Counts per version, split, view type and image kind; text lengths in CLIP tokens.",
    )
    info.add_argument("path", type=Path, help="release root (holding CVG-text/) or a dataset folder")
    info.add_argument("--version", action="append", dest="versions", metavar="VERSION",
                      help="only this version (repeatable), e.g. NewYork-mixed")
    info.add_argument("--split", action="append", dest="splits", metavar="SPLIT",
                      help="only this split (repeatable; default: train and test)")
    info.add_argument("--skip-bad", action="store_true",
                      help="skip bad files/records instead of stopping, and report them")
    info.add_argument("--report", type=Path, metavar="FILE",
                      help="where --skip-bad lists what it skipped "
                      f"(.json or .csv; default {DEFAULT_REPORT})")
    info.set_defaults(func=info_command)
    embedded_commands.register(data_subparsers)
    osm_commands.register(data_subparsers)
    materialize.register(data_subparsers)
    geoloc_commands.register(data_subparsers)
    describe_commands.register(data_subparsers)
    register_publish(data_subparsers)


def register_publish(data_subparsers) -> None:
    p = data_subparsers.add_parser(
        "publish", help="publish a release or embedded build as a Hugging Face dataset repo",
        description="Write the Hub folder (Parquet shards with Image features per version and split, a "
        "data card with one config per version, licences and attribution) and make the dataset repo "
        "hold it, in one commit (none when nothing changed). The token comes from HF_TOKEN only; "
        "HF_ENDPOINT points at a mirror.",
    )
    p.add_argument("dir", type=Path, metavar="DIR", help="release root (holding CVG-text/) or an embedded build")
    p.add_argument("--repo-id", required=True, metavar="OWNER/NAME", help="the dataset repo, e.g. me/cvg-text")
    p.add_argument("--private", action="store_true",
                   help="create the repo private (an existing public repo is refused, not changed)")
    p.add_argument("--versions", nargs="+", metavar="VERSION", help="only these versions (default: all on disk)")
    p.add_argument("--views", nargs="+", choices=IMAGE_KINDS, metavar="KIND",
                   help="image columns to publish (default: all of an embedded build; of a release all but "
                   "satellite and street, Google imagery that may not be redistributed)")
    p.add_argument("--revision", default="main", metavar="BRANCH",
                   help="branch to commit to, created from main if missing (default main)")
    p.add_argument("--dry-run", action="store_true",
                   help="build the Hub folder and list what would be uploaded; send nothing, need no token")
    p.add_argument("--hub-folder", type=Path, metavar="DIR",
                   help="write the Hub folder here and keep it (default: a temporary folder)")
    p.set_defaults(func=publish_command)


def publish_command(args) -> int:
    from geotextloc.data import hub  # imports datasets only when needed

    published = hub.publish(args.dir, args.repo_id, versions=args.versions, views=args.views,
                            private=args.private, revision=args.revision, dry_run=args.dry_run,
                            folder=args.hub_folder)
    print(published.summary())
    return 0


def info_command(args) -> int:
    path: Path = args.path
    if not path.exists():
        raise DataError(
            f"{path}: folder not found; pass a release root (holding CVG-text/) or a dataset folder"
        )
    skipped: list[Skipped] = []
    if path.is_dir() and discover_versions(path):
        try:
            contents = read_release(path, args.versions, args.splits or SPLITS, skip_bad=args.skip_bad)
        except BadItemError as err:
            raise BadItemError(f"{err} (or pass --skip-bad to skip and report bad items)") from None
        rows = [(r.version, r.split, r.view, r.text, set(r.images)) for r in contents.records]
        skipped = contents.skipped
        kind = "release"
    else:
        from geotextloc.data.hub import load_cvgtext  # imports datasets only when needed

        rows = list(_dataset_rows(load_cvgtext(path)))
        rows = [row for row in rows if (not args.versions or row[0] in args.versions)
                and (not args.splits or row[1] in args.splits)]
        kind = "dataset"
    print(summary(rows, f"CVG-Text {kind} {path}"))
    if args.skip_bad or args.report:
        report = write_report(args.report or DEFAULT_REPORT, skipped)
        print()
        for item, reason in skipped[:5]:
            print(f"  skipped {item}: {reason}")
        print(f"skipped {len(skipped)} bad item(s); report: {report}")
    return 0


def _dataset_rows(dd) -> Iterable[tuple]:
    for split, ds in dd.items():
        kinds = [k for k in IMAGE_KINDS if k in ds.column_names]
        for batch in ds.with_format("arrow").iter(batch_size=1000):  # no image is decoded
            present = {k: batch.column(k).is_valid().to_pylist() for k in kinds}
            columns = [batch.column(c).to_pylist() for c in ("version", "view", "text")]
            for i, (version, view, text) in enumerate(zip(*columns)):
                yield version, split, view, text, {k for k in kinds if present[k][i]}


def clip_token_lengths(texts: Sequence[str]) -> np.ndarray:
    """Tokens per text with CLIP's BPE tokenizer, untruncated, start and end tokens included
    (:func:`geotextloc.text.describe.clip_token_count`: open_clip's vocabulary, no torch import)."""
    from tqdm.auto import tqdm

    from geotextloc.text.describe import clip_token_count

    return np.array([clip_token_count(t) for t in
                     tqdm(texts, desc="tokenizing", leave=False, disable=len(texts) < 5000)], dtype=int)


def summary(rows: list[tuple], title: str) -> str:
    """Counts per (version, split) and text-length statistics per version, as plain text."""
    versions = sorted({r[0] for r in rows})
    kinds = [k for k in IMAGE_KINDS if any(k in r[4] for r in rows)]
    lines = [f"{title}: {len(versions)} version(s), {len(rows)} record(s)", ""]
    head = ["version", "split", PANORAMA, SINGLE, "total", *kinds]
    table = []
    groups = Counter((r[0], r[1]) for r in rows)
    for version, split in sorted(groups, key=lambda g: (g[0], g[1] != "train", g[1])):
        sel = [r for r in rows if r[0] == version and r[1] == split]
        table.append([version, split, *_counts(sel, kinds)])
    table.append(["all", "", *_counts(rows, kinds)])
    lines += _format(head, table)
    if rows:
        lengths = clip_token_lengths([r[3] for r in rows])
        lines += ["", f"text length in CLIP tokens (untruncated, start/end included; context {CONTEXT})"]
        table = []
        for version in [*versions, "all"]:
            sel = lengths[[version in ("all", r[0]) for r in rows]]
            table.append([version, f"{sel.mean():.1f}", f"{np.median(sel):.0f}", str(sel.max()),
                          f"{100 * (sel > CONTEXT).mean():.1f}%"])
        lines += _format(["version", "mean", "median", "max", f"> {CONTEXT}"], table)
    return "\n".join(lines)


def _counts(rows: list[tuple], kinds: list[str]) -> list[str]:
    views = Counter(r[2] for r in rows)
    return [str(views[PANORAMA]), str(views[SINGLE]), str(len(rows)),
            *(str(sum(k in r[4] for r in rows)) for k in kinds)]


def _format(head: list[str], table: list[list[str]]) -> list[str]:
    widths = [max(len(str(row[i])) for row in [head, *table]) for i in range(len(head))]
    return ["  ".join(str(c).ljust(w) if i < 2 else str(c).rjust(w)
                      for i, (c, w) in enumerate(zip(row, widths))) for row in [head, *table]]


def write_report(path: Path, skipped: list[Skipped]) -> Path:
    """What was skipped, as ``.csv`` (item, reason) or JSON (any other suffix), written atomically."""
    with atomic_path(path) as tmp:
        if path.suffix.lower() == ".csv":
            with open(tmp, "w", newline="", encoding="utf-8") as f:
                writer = csv.writer(f)
                writer.writerow(["item", "reason"])
                writer.writerows(skipped)
        else:
            doc = {"count": len(skipped), "skipped": [s._asdict() for s in skipped]}
            tmp.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return path
