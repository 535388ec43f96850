"""The CVG-Text progressive text pipeline over a release: OCR -> segmentation -> chain
prompting -> quality control, resumable, into a release-layout copy.

Per record (a street view and its name, which carries the coordinates):

1. :func:`extract` - OCR hits (:mod:`~geotextloc.text.ocr`), the label map's classes and
   positions (:mod:`~geotextloc.text.segment`), hits on moving objects dropped: the *extracted
   facts*, all a writer may use, with the record's coordinates and (panoramas) heading;
2. a writer (:mod:`~geotextloc.text.chain`) writes the three parts in the paper's order
   (road features -> building landmarks -> overall environment);
3. quality control (:mod:`~geotextloc.text.qc`): format filter -> self-review; a text that
   fails is written again (next attempt, up to ``attempts``); a 20 % sample goes to human
   review (:func:`~geotextloc.text.qc.export_review`), whose "fail" verdicts, once imported,
   make the next run write those texts again.

Output (``out``)::

    CVG-text/<version>/{train,test}.json     the new texts (release layout: the reader reads it)
    <version>-satellite/ -OSM/ -street/ ...  symbolic links to the source release's folders
    describe/records/<name stem>.json        per record: facts, chain parts, text, QC verdicts
    describe/ocr/                            OCR cache (by image SHA-256)
    describe/lmm/                            LMM answer cache (OpenAI writer / reviewer)
    describe/review/sample.{csv,jsonl}       the human-review sample (fill in ``verdict``)
    describe/report.json, statistics.csv     settings, pass rates per stage, statistics, timing

A record is done when its ``describe/records`` file exists (written last, atomically), so an
interrupted run - a crash, Ctrl-C, the LMM budget spent - picks up where it stopped.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from PIL import Image

from geotextloc.errors import ConfigError, DataError
from geotextloc.files import atomic_path, atomic_write_bytes, atomic_write_text
from geotextloc.text import ocr, segment

PANORAMA, SINGLE = ocr.PANORAMA, ocr.SINGLE


def heading_of(name: str) -> float | None:
    """The heading field ``d<deg>`` of a panorama name (``..._<panoid>_d62_z3.jpg`` -> 62), else None."""
    for part in Path(name).stem.split("_")[2:]:
        if re.fullmatch(r"d\d+(\.\d+)?", part):
            return float(part[1:])
    return None


def extract(name: str, view: str, image_path: Path, lat: float, lon: float, city: str,
            segmenter=None, ocr_cache: Path | None = None, fov_deg: float = 90.0) -> dict:
    """The extracted facts of one street view (module docstring, step 1)."""
    raw = Path(image_path).read_bytes()
    with Image.open(io.BytesIO(raw)) as im:
        image = im.convert("RGB")
    width, height = image.size
    hits = ocr.read_text_cached(image_path, view, ocr_cache, fov_deg)
    seg, problem = None, None
    if segmenter is not None:
        seg = segmenter.segment(name, view, raw)
        problem = getattr(segmenter, "last_problem", None) if seg is None else None
    segment.drop_on_moving(hits, seg, width)
    facts = {
        "name": name, "view": view, "city": city, "lat": lat, "lon": lon,
        "heading_deg": heading_of(name) if view == PANORAMA else None,
        "image": {"width": width, "height": height, "fov_deg": None if view == PANORAMA else fov_deg},
        "ocr": [h.to_dict() for h in hits],
        "segments": segment.summarise(seg, view, fov_deg, image=image) if seg is not None else None,
        "segmentation": ({"source": seg.source, "ground_truth": seg.ground_truth} if seg is not None
                         else {"source": None, "problem": problem or "no segmenter"}),
    }
    return facts


# ----------------------------------------------------------------------------- one release

log = logging.getLogger(__name__)
WRITERS = ("offline", "openai")
SEGMENTERS = ("auto", segment.RENDERER, "transformers", "none")
WORK = "describe"  # <out>/describe/: records, caches, review, report


@dataclass(frozen=True)
class DescribeSettings:
    """What changes the texts of a run (written to ``describe/settings.json``; a run into an
    ``out`` made with other settings is refused)."""

    writer: str = "offline"  # offline | openai
    model: str | None = None  # the LMM (openai writer)
    segmenter: str = "auto"  # auto | renderer | transformers | none
    segmentation_model: str | None = None  # transformers model name
    fov_deg: float = 90.0  # single views' field of view
    attempts: int = 3  # texts written per record until one passes the format filter and self-review
    review_share: float = 0.2  # human-review sample
    seed: int = 0
    send_image: bool = True  # the openai writer sends the street view with the facts


@dataclass
class DescribeReport:
    out: Path
    records: int = 0  # records of the versions asked for (distinct names)
    described: int = 0  # written in this run
    skipped_done: int = 0  # already done (resume)
    stopped: str | None = None  # why the run stopped early (budget), None when complete
    pass_rates: dict = field(default_factory=dict)
    statistics: object = None  # pandas DataFrame (source, city, view)
    seconds: float = 0.0
    review: list[Path] = field(default_factory=list)
    segmentation: dict = field(default_factory=dict)  # source -> records

    def summary(self) -> str:
        lines = [f"describe: {self.described} record(s) written, {self.skipped_done} already done, "
                 f"{self.records} in all; {self.seconds:.0f} s" + (f"; stopped: {self.stopped}" if self.stopped else "")]
        seg = ", ".join(f"{k}: {v}" for k, v in sorted(self.segmentation.items()))
        if seg:
            lines.append(f"segmentation: {seg}")
        pr = self.pass_rates
        if pr:
            f, r, h = pr["first_attempt"]["format"], pr["first_attempt"]["self_review"], pr["human"]
            lines.append(f"QC pass rates (first attempts): format {_rate(f)}, self-review {_rate(r)}; "
                         f"human review {_rate(h)}; final texts passing: "
                         f"{pr['final']['self_review']['passed']}/{pr['final']['format']['checked']}")
        if self.review:
            lines.append(f"human review sample: {self.review[0]} (fill in 'verdict', then --import-review FILE)")
        return "\n".join(lines)


def _rate(stage: dict) -> str:
    return "-" if not stage["checked"] else f"{stage['passed']}/{stage['checked']} ({100 * stage['pass_rate']:.1f} %)"


def record_path(out: Path, name: str) -> Path:
    return Path(out) / WORK / "records" / f"{Path(name).stem}.json"


def _check_settings(out: Path, settings: DescribeSettings) -> None:
    path = out / WORK / "settings.json"
    record = asdict(settings)
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        if old != record:
            diff = ", ".join(f"{k} {old.get(k)!r} -> {v!r}" for k, v in record.items() if old.get(k) != v)
            raise ConfigError(f"{out}: described before with other settings ({diff}); use a new --out folder")
    else:
        atomic_write_text(path, json.dumps(record, indent=1, sort_keys=True) + "\n")


def link_images(release_root: Path, out: Path, parts: list[str]) -> list[Path]:
    """``out/<folder>`` as a relative symbolic link to each image folder of the versions
    ``parts`` in the release: the copy references the images, it does not copy them."""
    from geotextloc.data.release import ReleaseLayout

    made = []
    for part in parts:
        for folder in ReleaseLayout().image_dirs(release_root, part).values():
            link = out / folder.name
            target = os.path.relpath(folder.resolve(), out.resolve())
            if link.is_symlink():
                if os.readlink(link) != target:
                    link.unlink()
                else:
                    continue
            elif link.exists():
                raise DataError(f"{link}: exists and is not a link to {folder}; use a new --out folder")
            link.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(target, link, target_is_directory=True)
            made.append(link)
    return made


def make_segmenter(settings: DescribeSettings, release_root: Path):
    """The segmenter of ``settings.segmenter`` (``auto``: the renderer's ground-truth label maps
    for an embedded build, else a transformers model)."""
    from geotextloc.data.embedded.street_labels import RendererSegmenter, is_embedded_build

    kind = settings.segmenter
    if kind == "auto":
        kind = segment.RENDERER if is_embedded_build(release_root) else "transformers"
    if kind == segment.RENDERER:
        return RendererSegmenter(release_root)
    if kind == "transformers":
        return segment.TransformersSegmenter(settings.segmentation_model or segment.DEFAULT_MODEL)
    if kind == "none":
        return None
    raise ConfigError(f"--segmenter {kind}: use one of {', '.join(SEGMENTERS)}")


def make_writer(settings: DescribeSettings, out: Path, budget: int | None, base_url: str | None = None):
    """(writer, reviewer, client) for ``settings.writer``."""
    from geotextloc.text import qc
    from geotextloc.text.chain import OpenAIWriter
    from geotextloc.text.offline_writer import OfflineWriter

    if settings.writer == "offline":
        return OfflineWriter(settings.seed), qc.RuleReviewer(), None
    if settings.writer == "openai":
        from geotextloc.lmm import ChatClient

        client = ChatClient(model=settings.model or "gpt-4o", base_url=base_url, cache_dir=out / WORK / "lmm",
                            budget=budget, temperature=0.7)
        return OpenAIWriter(client, send_image=settings.send_image), qc.LMMReviewer(client), client
    raise ConfigError(f"--writer {settings.writer}: use one of {', '.join(WRITERS)}")


def describe_one(facts: dict, image_path: Path, writer, reviewer, attempts: int, first_attempt: int = 0) -> dict:
    """Chain + QC for one record: up to ``attempts`` texts until one passes the format filter
    and the self-review. Returns the record's result part (parts, text, cues, QC per attempt)."""
    from geotextloc.text import qc

    tries = []
    result = None
    for attempt in range(first_attempt, first_attempt + attempts):
        result = writer.write(facts, image_path, attempt)
        fmt = qc.format_check(result.parts, facts["view"])
        review = reviewer.review(facts, result.parts, image_path) if not fmt else None
        tries.append({"attempt": attempt, "format_ok": not fmt, "format_problems": fmt,
                      "review_ok": None if review is None else not review, "review_problems": review or []})
        if not fmt and not review:
            break
    last = tries[-1]
    return {"attempt": last["attempt"], "parts": result.parts, "text": result.text, "cues": result.cues,
            "writer": result.writer, "reviewer": reviewer.name, "attempts": tries,
            "qc": {"format_ok": last["format_ok"], "review_ok": last["review_ok"], "reviewer": reviewer.name}}


def describe_release(release_root: str | Path, out: str | Path, versions: list[str] | None = None,
                     splits=("train", "test"), settings: DescribeSettings = DescribeSettings(),
                     budget: int | None = 200, base_url: str | None = None, limit: int | None = None,
                     progress: bool = True, segmenter=None, writer=None) -> DescribeReport:
    """Run the pipeline over the street views of ``versions`` of the release at ``release_root``
    into the release-layout copy ``out`` (module docstring); resumable. ``segmenter`` /
    ``writer`` (a (writer, reviewer) pair) override the ones ``settings`` name (tests)."""
    from tqdm.auto import tqdm

    from geotextloc.data import release
    from geotextloc.lmm import BudgetExhausted

    start = time.time()
    root, out = Path(release_root), Path(out)
    if not root.is_dir():
        raise DataError(f"{root}: release folder not found; pass the folder holding CVG-text/")
    if out.resolve() == root.resolve():
        raise ConfigError(f"--out {out}: that is the release itself; write the new texts to another folder")
    out.mkdir(parents=True, exist_ok=True)
    _check_settings(out, settings)
    on_disk = release.discover_versions(root)
    if not on_disk:
        raise DataError(f"{root}: no annotation files CVG-text/<version>/<split>.json; pass a release root")
    wanted = versions or [v for v in on_disk if not v.endswith("-dense")]
    parts = sorted({p for v in wanted for p in release.version_parts(root, v)})
    contents = release.read_release(root, versions=parts, splits=splits, check_images=False, require_images=False)
    items: dict[str, release.Record] = {}
    for r in contents.records:
        if "street" not in r.images:
            raise DataError(f"{root}: record {r.name!r} of {r.version} has no street view (looked in "
                            f"{r.version}-street/); the text pipeline reads the street views: pick versions that have them")
        items.setdefault(r.name, r)
    link_images(root, out, parts)
    if segmenter is None:
        segmenter = make_segmenter(settings, root)
    reviewer, client = None, None
    if writer is None:
        writer, reviewer, client = make_writer(settings, out, budget, base_url)
    else:
        writer, reviewer = writer
    report = DescribeReport(out, records=len(items))
    todo = []
    for name, r in items.items():
        path = record_path(out, name)
        if path.is_file():
            done = json.loads(path.read_text(encoding="utf-8"))
            if done.get("qc", {}).get("human") != "fail":
                report.skipped_done += 1
                continue
        todo.append(r)
    if limit is not None:
        todo = todo[:limit]
    ocr_cache = out / WORK / "ocr"
    bar = tqdm(todo, desc="describe", unit="text", disable=not progress)
    for r in bar:
        path = record_path(out, r.name)
        previous = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
        facts = extract(r.name, r.view, r.images["street"], r.lat, r.lon, r.city, segmenter, ocr_cache, settings.fov_deg)
        first = previous["attempt"] + 1 if previous else 0
        try:
            result = describe_one(facts, r.images["street"], writer, reviewer, settings.attempts, first)
        except BudgetExhausted:
            report.stopped = (f"the LMM budget of {budget} requests is spent; run again (with a larger --budget) "
                              "to continue where it stopped")
            break
        record = {"name": r.name, "view": r.view, "city": r.city, "split": r.split,
                  "image": os.path.relpath(Path(r.images["street"]).resolve(), out.resolve()),
                  "facts": facts} | result
        if previous:  # a human "fail" made this run write it again; keep what was reviewed
            record["history"] = previous.get("history", []) + [
                {k: previous.get(k) for k in ("attempt", "text", "qc")}]
        atomic_write_bytes(path, (json.dumps(record, ensure_ascii=False, indent=1, sort_keys=True) + "\n").encode("utf-8"))
        report.described += 1
    bar.close()
    report.seconds = round(time.time() - start, 1)
    finish(root, out, contents, settings, report)
    return report


def load_records(out: Path, names) -> dict[str, dict]:
    recs = {}
    for name in names:
        path = record_path(out, name)
        if path.is_file():
            recs[name] = json.loads(path.read_text(encoding="utf-8"))
    return recs


def finish(root: Path, out: Path, contents, settings: DescribeSettings, report: DescribeReport) -> None:
    """Annotation files, the human-review sample, pass rates, statistics and report.json from
    the record files (whatever is done so far)."""
    import pandas as pd

    from geotextloc.text import qc, stats

    records = load_records(out, {r.name for r in contents.records})
    ann: dict[tuple[str, str], dict] = {}
    for r in contents.records:
        ann.setdefault((r.version, r.split), {})
        if r.name in records:
            ann[(r.version, r.split)][r.name] = records[r.name]["text"]
    for (version, split), texts in sorted(ann.items()):
        body = json.dumps(texts, ensure_ascii=False, indent=1) + "\n"
        atomic_write_text(out / "CVG-text" / version / f"{split}.json", body)
    rows = []
    for r in contents.records:
        rec = records.get(r.name)
        passed = rec is not None and rec["qc"]["format_ok"] and rec["qc"]["review_ok"]
        if passed and qc.in_sample(r.name, settings.review_share, settings.seed):
            rows.append({"name": r.name, "version": r.version, "split": r.split, "view": r.view,
                         "image": str(Path(r.images["street"]).resolve()), "text": rec["text"], **rec["parts"],
                         "ocr_text": "; ".join(h["text"] for h in rec["facts"]["ocr"] if not h.get("dropped")),
                         "writer": rec["writer"], "verdict": rec["qc"].get("human", ""),
                         "note": rec["qc"].get("human_note", "")})
    rows = list({row["name"]: row for row in reversed(rows)}.values())[::-1]  # a name once, its first version
    report.review = list(qc.export_review(rows, out / WORK / "review"))
    recs = list(records.values())
    report.pass_rates = qc.pass_rates(recs)
    seg: dict[str, int] = {}
    for rec in recs:
        s = rec["facts"]["segmentation"]
        key = (s["source"] + (" (ground truth)" if s.get("ground_truth") else "")) if s["source"] else "none"
        seg[key] = seg.get(key, 0) + 1
    report.segmentation = seg
    frame = []
    seen = set()
    for r in contents.records:
        rec = records.get(r.name)
        if rec is None or r.name in seen:
            continue
        seen.add(r.name)
        names = [h["text"] for h in rec["facts"]["ocr"] if not h.get("dropped")]
        frame.append({"source": "old", "city": r.city, "view": r.view, "text": r.text,
                      "cues": [n for n in names if n in r.text]})
        frame.append({"source": "new", "city": r.city, "view": r.view, "text": rec["text"], "cues": rec["cues"]})
    if frame:
        df = pd.DataFrame(frame)
        tables = {src: stats.text_statistics(part.drop(columns="source"), by=["city", "view"], seed=settings.seed)
                  for src, part in df.groupby("source")}
        table = pd.concat(tables, names=["source"])
        paper = pd.DataFrame([stats.paper_row()], index=pd.MultiIndex.from_tuples([("paper", "CVG-Text", "all")],
                                                                                names=["source", "city", "view"]))
        report.statistics = pd.concat([table, paper])
        with atomic_path(out / WORK / "statistics.csv") as tmp:
            report.statistics.to_csv(tmp)
    body = {"release": str(root.resolve()), "settings": asdict(settings), "records": report.records,
            "described_this_run": report.described, "done": len(records), "stopped": report.stopped,
            "seconds_this_run": report.seconds, "pass_rates": report.pass_rates, "segmentation": seg,
            "reviewer": recs[0]["reviewer"] if recs else None,
            "statistics_method": stats.__doc__.split("Here, per group of texts:")[1].strip() if stats.__doc__ else ""}
    if report.statistics is not None:
        body["statistics"] = json.loads(report.statistics.reset_index().to_json(orient="records"))
    atomic_write_text(out / WORK / "report.json", json.dumps(body, indent=1, ensure_ascii=False) + "\n")


def import_verdicts(out: str | Path, path: str | Path) -> dict:
    """Read a filled-in review file into the record files (``qc.human``, ``qc.human_note``).
    A verdict for a text that has changed since the export is skipped. Returns counts."""
    from geotextloc.text import qc

    out = Path(out)
    verdicts = qc.import_review(Path(path))
    counts = {"pass": 0, "fail": 0, "stale": 0, "unknown": 0}
    for name, v in verdicts.items():
        rp = record_path(out, name)
        if not rp.is_file():
            counts["unknown"] += 1
            continue
        rec = json.loads(rp.read_text(encoding="utf-8"))
        if v["text"] and v["text"] != rec["text"]:
            counts["stale"] += 1
            continue
        rec["qc"]["human"], rec["qc"]["human_note"] = v["verdict"], v["note"]
        atomic_write_text(rp, json.dumps(rec, ensure_ascii=False, indent=1, sort_keys=True) + "\n")
        counts[v["verdict"]] += 1
    return counts
