"""Offline explainer: the ERM chain without an LMM, from what can be read off the OSM tiles.

Same output as the LMM explainer (:class:`~geotextloc.explain.schema.Explanation`):

1. *Key cues* of the text: names (runs of capitalised words), place categories from a small
   lexicon, road features, and the direction word (left/right/front/back) of the sentence.
2. *Per candidate*: the OSM tile's labels are read with OCR (RapidOCR, PaddleOCR's PP-OCRv4
   models), and each label is searched in the text with a fuzzy match (texts carry OCR-like
   misspellings, OCR makes its own). Category cues are checked against what the tile shows in
   OSM Carto colours: POI icons (food/drink orange, shop purple, health red, transport blue,
   ...), parks (green fills), water (blue fills). A satellite tile read as it is
   (``use_osm=False``) shows no labels or icons: only vegetation and water are checked there.
   Directions: a north-up tile does not tell the observer's heading, so one cue's direction
   cannot be checked; two matched names with directions can: their bearings from the tile
   centre must differ like their directions do (left vs right: ~180°, front vs left: ~90°).
3. *Confidence* from the evidence only (no evidence -> the floor, and the rationale says so):

       conf = 0.05 + 0.9 · (1 - Π_i (1 - p_i)) · 0.75^(#inconsistent direction pairs)

   with p = 0.6 · sim · prox for a matched name (sim = fuzzy ratio, prox = 1 - 0.5·d, d the
   label's distance from the centre as a fraction of the half-tile, capped at 1),
   p = 0.1 for each category seen, p = 0.15 for each consistent direction pair.

For satellite candidates the labels come from ``Candidate.osm`` (the OSM tile of the same
place) when given: a satellite tile has no labels to read. OCR results are cached per image
content hash (in memory for the process, and on disk under ``cache_dir`` when given).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from geotextloc.files import atomic_write_text
from geotextloc.explain.schema import Candidate, CandidateExplanation, Cue, Explanation

MATCH_THRESHOLD = 0.8  # fuzzy ratio for a label to count as a name in the text
MIN_OCR_SCORE = 0.6
# text word -> what shows it on a Carto tile: an icon group or an area kind
CATEGORY_WORDS = {
    **dict.fromkeys(["restaurant", "pizzeria", "diner", "fast food", "burger"], "food"),
    **dict.fromkeys(["cafe", "coffee", "bar", "pub"], "drink"),
    **dict.fromkeys(["shop", "store", "boutique", "supermarket", "kiosk", "bakery"], "shop"),
    **dict.fromkeys(["pharmacy", "clinic", "hospital", "dentist", "doctor"], "health"),
    **dict.fromkeys(["bus stop", "tram stop", "parking", "bike rental", "taxi"], "transport"),
    **dict.fromkeys(["bank", "atm"], "money"),
    **dict.fromkeys(["museum", "church", "theatre", "library", "cinema", "gallery"], "culture"),
    **dict.fromkeys(["hotel", "hostel"], "lodging"),
    **dict.fromkeys(["park", "garden", "lawn", "grass", "trees", "forest", "greenery"], "green"),
    **dict.fromkeys(["water", "river", "sea", "lake", "harbour", "harbor", "canal", "pond"], "water"),
}
ROAD_WORDS = re.compile(r"\b(crossings?|crosswalks?|intersections?|junctions?|roundabouts?|"
                        r"tram(?: tracks?| lines?)?|railway|rail tracks?|\w+[ -]lanes?|one-way)\b")
DIRECTION_WORDS = {"left": "left", "right": "right", "front": "front", "ahead": "front",
                   "behind": "back", "back": "back"}
DIRECTION_ANGLE = {"front": 0.0, "right": 90.0, "back": 180.0, "left": 270.0}
STOP = set("a an the on in at to of and or your you there this that it its next behind ahead left "
           "right further across along opposite near beside straight overall here around from with "
           "above below as is are be by for further just looking facing street view".split())


def _norm(text: str) -> str:
    """Accents off, case folded, punctuation to spaces: 'Kahvila Sävy!' -> 'kahvila savy'."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(ch for ch in text if not unicodedata.combining(ch)).casefold()
    return " ".join(re.sub(r"[^\w]+", " ", text).split())


@dataclass
class _Word:
    norm: str
    start: int
    end: int


def _words(text: str) -> list[_Word]:
    return [_Word(_norm(m.group()), m.start(), m.end()) for m in re.finditer(r"[^\W_][\w'’-]*", text)
            if _norm(m.group())]


def _direction_near(text: str, start: int, end: int) -> str | None:
    """The direction word of the clause around [start, end) (split at , ; and 'and'), else the
    nearest one in its sentence, else None."""
    for stops in (r"[.!?;\n,]|\band\b|\bwhile\b|\bwhereas\b", r"[.!?;\n]"):
        s0 = max([m.end() for m in re.finditer(stops, text[:start])] or [0])
        m1 = re.search(stops, text[end:])
        s1 = end + m1.start() if m1 else len(text)
        best = None
        for m in re.finditer(r"\b(left|right|front|ahead|behind|back)\b", text[s0:s1], re.I):
            dist = min(abs(s0 + m.start() - end), abs(s0 + m.end() - start))
            if best is None or dist < best[0]:
                best = (dist, DIRECTION_WORDS[m.group().lower()])
        if best:
            return best[1]
    return None


def _names(text: str) -> list[tuple[str, int, int]]:
    """Runs of capitalised words (``Kahvila Sävy``, ``Mannerheimintie``), leading stop words
    dropped; a lone word that opens a sentence counts only if it is capitalised elsewhere too."""
    spans, run = [], []
    matches = list(re.finditer(r"[^\W_][\w'’-]*", text))

    def flush():
        if not run:
            return
        start, end = run[0].start(), run[-1].end()
        opens = text[:start].rstrip()[-1:] in ("", ".", "!", "?", "\n")
        if len(run) == 1 and opens and not any(
                m.group() == run[0].group() and m.start() != start for m in matches):
            return
        spans.append((text[start:end].rstrip("'’"), start, end))

    for m in matches:
        capital = m.group()[0].isupper()
        if capital and run and text[run[-1].end():m.start()] == " ":
            run.append(m)
            continue
        flush()
        run = [m] if capital and m.group().lower() not in STOP else []
    flush()
    return spans


def text_cues(text: str) -> list[Cue]:
    """Key cues of a description: names, categories, road features (with directions)."""
    cues, seen = [], set()
    for name, start, end in _names(text):
        if _norm(name) not in seen and len(_norm(name)) >= 3:
            seen.add(_norm(name))
            cues.append(Cue(name, "name", _direction_near(text, start, end)))
    norm = " " + _norm(text) + " "
    for word in CATEGORY_WORDS:
        if f" {word} " in norm and word not in seen:
            seen.add(word)
            at = _norm_index(text, word)
            cues.append(Cue(word, "category", _direction_near(text, at, at + len(word))))
    for m in ROAD_WORDS.finditer(text.lower()):
        if m.group() not in seen:
            seen.add(m.group())
            cues.append(Cue(m.group(), "road", _direction_near(text, m.start(), m.end())))
    return cues


def _norm_index(text: str, word: str) -> int:
    m = re.search(r"\b" + re.escape(word).replace(r"\ ", r"\W+"), text, re.I)
    return m.start() if m else 0


class OfflineExplainer:
    """``explain(query, candidates) -> Explanation`` from OCR of the OSM tiles; no network."""

    name = "offline"

    def __init__(self, cache_dir: Path | str | None = None, use_osm: bool = True, memo: bool = True):
        self.cache_dir = Path(cache_dir) / "ocr" if cache_dir is not None else None
        self.use_osm = use_osm
        self.memo = memo  # False (and no cache_dir): OCR runs for every tile, e.g. to time it cold
        self.ocr_runs = 0  # tiles actually read by OCR (not served from a cache)

    def __repr__(self) -> str:
        return f"OfflineExplainer(cache_dir={self.cache_dir!r}, use_osm={self.use_osm})"

    # -- OCR ------------------------------------------------------------------------------
    def read_labels(self, image: Path | bytes) -> tuple[list[dict], tuple[int, int]]:
        """OCR of a tile: ``[{text, score, box:[x0, y0, x1, y1]}]`` and the tile size (w, h)."""
        from geotextloc import viz

        raw = image if isinstance(image, bytes) else Path(image).read_bytes()
        tile = viz.load_image(raw)
        key = hashlib.sha256(raw).hexdigest()
        path = self.cache_dir / f"{key}.json" if self.cache_dir else None
        on_disk = path is not None and path.exists()
        if self.memo and key in _OCR_MEMO:
            labels = _OCR_MEMO[key]
        elif on_disk:
            labels = json.loads(path.read_text(encoding="utf-8"))
        else:
            labels = _ocr(tile)
            self.ocr_runs += 1
        if self.memo:
            _OCR_MEMO[key] = labels
        if path is not None and not on_disk:
            atomic_write_text(path, json.dumps(labels, ensure_ascii=False))
        return labels, tile.size

    # -- explanation -----------------------------------------------------------------------
    def explain(self, query: str, candidates: Sequence[Candidate]) -> Explanation:
        from geotextloc import viz

        cues = text_cues(query)
        words = _words(query)
        out = []
        for rank, cand in enumerate(candidates, start=1):
            source = cand.osm if (self.use_osm and cand.osm is not None) else cand.image
            labels, size = self.read_labels(source)
            matches = _match_labels(labels, size, words, query)
            seen = _visible(np.asarray(viz.load_image(source)))
            out.append(_judge(cand.name, rank, cues, labels, matches, seen))
        return Explanation(query, self.name, cues=cues, comparison=_compare(out), candidates=out)


def _ocr(tile) -> list[dict]:
    """RapidOCR on the tile, upscaled so that the side is >= 512 px (small map fonts).

    Detection runs at that size (RapidOCR's default would upscale again to 736 px) and the
    180° classifier is skipped (map labels are never upside down): a third faster on a CPU,
    with the same labels read on the embedded tiles."""
    scale = max(1, math.ceil(512 / min(tile.size)))
    big = tile.resize((tile.width * scale, tile.height * scale), resample=3) if scale > 1 else tile
    result, _ = _engine()(big, use_cls=False)
    labels = []
    for box, text, score in result or []:
        xs, ys = [p[0] / scale for p in box], [p[1] / scale for p in box]
        labels.append({"text": text, "score": round(float(score), 4),
                       "box": [min(xs), min(ys), max(xs), max(ys)]})
    return labels


_OCR_MEMO: dict[str, list[dict]] = {}  # image sha256 -> labels, for this process


def _engine():
    """RapidOCR at a 512 px detector: the text pipeline's engine (:func:`geotextloc.text.ocr.engine`)."""
    from geotextloc.text import ocr

    return ocr.engine(512)


@dataclass
class _Match:
    label: str
    text: str  # the span of the description it matched
    sim: float
    bearing: float  # degrees clockwise from north, from the tile centre to the label
    dist: float  # distance from the centre as a fraction of the half-tile (capped at 1)
    direction: str | None
    start: int


def _match_labels(labels: list[dict], size, words: list[_Word], text: str) -> list[_Match]:
    """Each readable label against every window of the text with as many (±1) words."""
    found: list[_Match] = []
    w, h = size
    for lab in labels:
        norm = _norm(lab["text"])
        if lab["score"] < MIN_OCR_SCORE or len(norm.replace(" ", "")) < 4 or norm.isdigit():
            continue
        n = len(norm.split())
        best = (0.0, 0, 0)
        for m in {max(1, n - 1), n, n + 1}:
            for i in range(len(words) - m + 1):
                window = " ".join(x.norm for x in words[i:i + m])
                sm = difflib.SequenceMatcher(None, norm, window)
                if sm.real_quick_ratio() > best[0] and sm.quick_ratio() > best[0]:
                    r = sm.ratio()
                    if r > best[0]:
                        best = (r, words[i].start, words[i + m - 1].end)
        if best[0] < MATCH_THRESHOLD:
            continue
        x0, y0, x1, y1 = lab["box"]
        dx, dy = (x0 + x1) / 2 - w / 2, (y0 + y1) / 2 - h / 2
        found.append(_Match(lab["text"], text[best[1]:best[2]], best[0],
                            math.degrees(math.atan2(dx, -dy)) % 360,
                            min(1.0, math.hypot(dx, dy) / (min(w, h) / 2)),
                            _direction_near(text, best[1], best[2]), best[1]))
    # one place may be read as several lines or twice: keep the best match per text span
    found.sort(key=lambda m: -m.sim)
    kept: list[_Match] = []
    for m in found:
        if all(abs(m.start - k.start) > 2 and m.text.lower() != k.text.lower() for k in kept):
            kept.append(m)
    return kept


def _visible(rgb: np.ndarray) -> dict[str, bool]:
    """Which icon groups / areas a tile shows, by their colours: on a Carto map tile the
    icons, green fills and water of the OSM style; on an aerial (satellite) tile, which has no
    icons, only vegetation (green dominates) and water (dark blue-grey) can be seen."""
    from geotextloc.data.embedded import render_map as carto

    rgb = rgb[..., :3].astype(np.int32)
    colours, counts = np.unique((rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2],
                                return_counts=True)
    palette = np.stack([colours >> 16, (colours >> 8) & 255, colours & 255], axis=-1)

    def count(colour, tol):  # pixels within ``tol`` of ``colour`` in every channel
        return int(counts[np.abs(palette - np.array(colour)).max(-1) <= tol].sum())

    n_px = rgb.shape[0] * rgb.shape[1]
    style = {carto.LAND, carto.BUILDING_FILL, carto.BUILDING_LINE, carto.WATER, (176, 215, 154),
             *(v[0] for v in carto.AREA_STYLE.values()), *(v[0] for v in carto.ROAD_STYLE.values()),
             *(v[1] for v in carto.ROAD_STYLE.values())}
    if sum(count(c, 3) for c in style) < 0.4 * n_px:  # not a map (>= 76 % on the embedded tiles): aerial
        r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
        seen = dict.fromkeys(carto.GROUP_COLOUR, False)
        seen["green"] = float(((g > r + 12) & (g > b + 12)).mean()) >= 0.04
        seen["water"] = float(((b > r + 15) & (b >= g) & (b < 140)).mean()) >= 0.04
        return seen
    icon_min = max(6, int(1e-4 * n_px))
    seen = {group: count(c[0], 25) >= icon_min for group, c in carto.GROUP_COLOUR.items()}
    greens = [carto.AREA_STYLE[k][0] for k in ("park", "grass", "forest", "allotments")]
    greens.append((176, 215, 154))  # tree canopy dots
    seen["green"] = sum(count(c, 8) for c in greens) >= 0.02 * n_px
    seen["water"] = count(carto.WATER, 8) >= 0.02 * n_px
    return seen


def mentioned_labels(text: str, labels: Sequence[dict], size: tuple[int, int]) -> list[dict]:
    """The OCR ``labels`` of a tile (as :meth:`OfflineExplainer.read_labels` gives them, with the
    tile ``size``) that a name in ``text`` matches, by the explainer's own fuzzy matching."""
    matched = {m.label for m in _match_labels(list(labels), size, _words(text), text)}
    return [lab for lab in labels if lab["text"] in matched]


def map_layers(tile, labels: Sequence[dict] = ()) -> dict[str, np.ndarray]:
    """Boolean masks (H, W) of what an OSM Carto tile of the embedded renderer shows:
    ``label`` (the boxes of OCR ``labels``, as :meth:`OfflineExplainer.read_labels` gives them),
    ``road`` (road fills), ``building``, ``green`` (park, grass, forest, ... fills and tree
    dots) and ``water``. For checking where a relevance map sits (the satellite tile of a
    place covers the same footprint, so its OSM tile's masks apply to it too)."""
    from geotextloc import viz
    from geotextloc.data.embedded import render_map as carto

    rgb = np.asarray(viz.load_image(tile), dtype=np.int32)

    def near(colours, tol):
        out = np.zeros(rgb.shape[:2], dtype=bool)
        for colour in colours:
            out |= np.abs(rgb - np.array(colour)).max(-1) <= tol
        return out

    greens = [carto.AREA_STYLE[k][0] for k in ("park", "grass", "meadow", "garden", "forest",
                                               "wood", "allotments", "scrub", "cemetery")]
    layers = {"label": np.zeros(rgb.shape[:2], dtype=bool),
              "road": near({v[0] for v in carto.ROAD_STYLE.values()}, 3),
              "building": near([carto.BUILDING_FILL, carto.BUILDING_LINE], 3),
              "green": near(greens + [(176, 215, 154)], 6),
              "water": near([carto.WATER], 6)}
    h, w = rgb.shape[:2]
    for lab in labels:
        if lab["score"] < MIN_OCR_SCORE:
            continue
        x0, y0, x1, y1 = (int(round(v)) for v in lab["box"])
        layers["label"][max(0, y0):min(h, y1 + 1), max(0, x0):min(w, x1 + 1)] = True
    return layers


def _compass(bearing: float) -> str:
    return ["north", "north-east", "east", "south-east", "south", "south-west", "west",
            "north-west"][round(bearing / 45) % 8]


ICON_WORDS = {"food": "an orange food/drink icon", "drink": "an orange food/drink icon",
              "shop": "a purple shop icon", "health": "a red health icon",
              "transport": "a blue transport/lodging icon", "lodging": "a blue transport/lodging icon",
              "money": "a brown icon", "culture": "a brown icon", "green": "a green area (park, "
              "grass, trees)", "water": "water"}


def _judge(name, rank, cues, labels, matches, seen) -> CandidateExplanation:
    """Rationale and confidence of one candidate from its matches (formula in the module doc)."""
    p, evidence, found, notes, factor = [], [], [], [], 1.0
    for m in matches:
        p.append(0.6 * m.sim * (1 - 0.5 * m.dist))
        where = "at the centre" if m.dist < 0.15 else f"{_compass(m.bearing)} of the centre"
        evidence.append(f"name '{m.text}'")
        found.append(f"label '{m.label}' reads as '{m.text}' ({m.sim:.0%}), {where}")
    for cue in (c for c in cues if c.kind == "category"):
        if seen.get(CATEGORY_WORDS[cue.text]):
            p.append(0.1)
            evidence.append(f"category '{cue.text}'")
            found.append(f"'{cue.text}' in the text and {ICON_WORDS[CATEGORY_WORDS[cue.text]]} "
                         "on the tile")
    directed = [m for m in matches if m.direction]
    for i, a in enumerate(directed):
        for b in directed[i + 1:]:
            expected = DIRECTION_ANGLE[b.direction] - DIRECTION_ANGLE[a.direction]
            off = abs((b.bearing - a.bearing - expected + 180) % 360 - 180)
            pair = f"'{a.text}' ({a.direction}) and '{b.text}' ({b.direction})"
            if min(a.dist, b.dist) < 0.15:
                continue  # a label at the centre has no reliable bearing
            if off <= 60:
                p.append(0.15)
                evidence.append(f"directions of {pair}")
                found.append(f"{pair} lie at bearings from the centre that fit (off by {off:.0f}°)")
            else:
                factor *= 0.75
                notes.append(f"{pair} do not fit the bearings of their labels (off by {off:.0f}°).")
    confidence = 0.05 + 0.9 * (1 - math.prod(1 - x for x in p)) * factor
    readable = [lab["text"] for lab in labels if lab["score"] >= MIN_OCR_SCORE]
    shown = ", ".join(readable[:6]) + (", ..." if len(readable) > 6 else "")
    parts = [f"Read {len(readable)} label(s) on the map tile" + (f" ({shown})." if readable else ".")]
    if found:
        parts.append("Supported by: " + "; ".join(found) + ".")
    else:
        parts.append("No label matches a name in the text and no mentioned category is visible: "
                     "nothing supports this candidate, so confidence is low.")
    names = [c.text for c in cues if c.kind == "name"]
    missing = [n for n in names if not any(_norm(n) in _norm(m.text) or _norm(m.text) in _norm(n)
                                           for m in matches)]
    if matches and missing:
        parts.append(f"Named in the text but not read on the tile: {', '.join(missing[:5])}.")
    parts.extend(notes)
    if len(directed) == 1:
        parts.append(f"The direction of '{directed[0].text}' alone cannot be checked: "
                     "the tile is north-up and the heading is unknown.")
    return CandidateExplanation(name, rank, " ".join(parts), round(confidence, 4), evidence)


def _compare(expl: list[CandidateExplanation]) -> str:
    if not expl:
        return "No candidates."
    best = max(expl, key=lambda c: c.confidence)
    none = [str(c.rank) for c in expl if not c.evidence]
    if not best.evidence:
        return "No candidate shows any cue of the text; the retrieval order is kept as it is."
    text = (f"Candidate {best.rank} has the most support ({len(best.evidence)} matched cue(s), "
            f"confidence {best.confidence:.2f}).")
    if none:
        text += f" Candidate(s) {', '.join(none)} match no cue."
    return text
