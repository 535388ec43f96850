"""``geotextloc data describe RELEASE --out DIR``: the CVG-Text text pipeline over a release.

OCR -> segmentation -> chain prompting -> quality control (:mod:`geotextloc.data.text_pipeline`)
for the street views of the release's versions, into a release-layout copy ``DIR`` (new texts,
image folders linked), resumable, then the text statistics against the old texts and the paper.
``--import-review FILE`` reads a filled-in human-review sample back (texts failed there are
written again by the next run).
"""

from __future__ import annotations

from pathlib import Path

from geotextloc.data import text_pipeline as pipeline
from geotextloc.errors import ConfigError


def register(data_subparsers) -> None:
    p = data_subparsers.add_parser(
        "describe", help="write a release's texts with the CVG-Text pipeline (OCR, segmentation, chain, QC)",
        description="OCR of each street view (RapidOCR, PP-OCRv4) -> segmentation (the embedded renderer's "
        "ground-truth label maps, or a transformers model) with OCR text on vehicles dropped -> the chain "
        "road features -> building landmarks -> overall environment (offline writer or an OpenAI-compatible "
        "LMM) -> format filter, self-review, a 20%% human-review sample. Writes a release-layout copy (texts; "
        "image folders linked, not copied) and prints the text statistics against the old texts and the paper's.",
    )
    p.add_argument("release", type=Path, metavar="RELEASE", help="release root (holding CVG-text/), e.g. data/embedded")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="the new release-layout copy (resumable)")
    p.add_argument("--writer", choices=pipeline.WRITERS, default="offline",
                   help="offline (no network) or openai (OPENAI_API_KEY from the environment; default offline)")
    p.add_argument("--version", action="append", dest="versions", metavar="V",
                   help="only this version (repeatable; default: all on disk with street views)")
    p.add_argument("--split", action="append", dest="splits", metavar="SPLIT", help="only this split (repeatable)")
    p.add_argument("--model", default=None, help="the LMM for --writer openai (default gpt-4o)")
    p.add_argument("--base-url", default=None, help="OpenAI-compatible endpoint (default: OPENAI_BASE_URL or OpenAI)")
    p.add_argument("--budget", type=int, default=200, metavar="N",
                   help="most LMM requests this run (retries included; default 200); the run stops cleanly when "
                   "spent and the next run continues")
    p.add_argument("--no-image", action="store_true", help="openai writer: send the extracted facts only, not the image")
    p.add_argument("--segmenter", choices=pipeline.SEGMENTERS, default="auto",
                   help="auto (default): the renderer's ground-truth label maps for an embedded build, else "
                   "transformers; none: no segmentation (no vehicle filter)")
    p.add_argument("--segmentation-model", default=None, metavar="NAME",
                   help="transformers model for --segmenter transformers "
                   "(default nvidia/segformer-b0-finetuned-ade-512-512)")
    p.add_argument("--fov", type=float, default=90.0, help="single views' horizontal field of view, degrees (default 90)")
    p.add_argument("--attempts", type=int, default=3, help="texts written per record until one passes QC (default 3)")
    p.add_argument("--review-share", type=float, default=0.2, help="share sampled for human review (default 0.2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, metavar="N", help="describe at most N records this run")
    p.add_argument("--import-review", type=Path, default=None, metavar="FILE",
                   help="read the verdicts of a filled-in review file (describe/review/sample.csv or .jsonl) first")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=describe_command)


def describe_command(args) -> int:
    if args.attempts < 1:
        raise ConfigError(f"--attempts {args.attempts}: give at least 1 (texts written per record until one passes QC)")
    if args.import_review is not None:
        counts = pipeline.import_verdicts(args.out, args.import_review)
        print(f"imported verdicts: {counts['pass']} pass, {counts['fail']} fail (written again below), "
              f"{counts['stale']} for texts changed since the export (skipped), {counts['unknown']} unknown names")
    settings = pipeline.DescribeSettings(
        writer=args.writer, model=args.model if args.writer == "openai" else None, segmenter=args.segmenter,
        segmentation_model=args.segmentation_model, fov_deg=args.fov, attempts=args.attempts,
        review_share=args.review_share, seed=args.seed, send_image=not args.no_image)
    report = pipeline.describe_release(args.release, args.out, versions=args.versions,
                                       splits=args.splits or ("train", "test"), settings=settings, budget=args.budget,
                                       base_url=args.base_url, limit=args.limit, progress=not args.no_progress)
    print(report.summary())
    if report.statistics is not None:
        print()
        print("text statistics (tokens: CLIP BPE, open_clip; TTR: per text, averaged; similarity: TF-IDF cosine; "
              "cue: an OCR-read name)")
        print(report.statistics.to_string(float_format=lambda x: f"{x:.3f}", na_rep="-"))
    print(f"\nnew release copy: {args.out} (texts in CVG-text/, records and report in {args.out}/describe/)")
    return 0
