"""Step 1 of the CVG-Text text pipeline: OCR of a street view -> text hits with positions.

CVG-Text reads shop names, bus stops and signs off each street view with PaddleOCR; we run
RapidOCR, which ships PaddleOCR's PP-OCRv4 detector and recogniser as ONNX models (the
``ocr`` extra: ``pip install rapidocr-onnxruntime``).

- The image is upscaled so that its short side is >= ``MIN_SIDE`` px (the embedded street
  views are small: signs are 6-10 px tall) and the detector runs at that size.
- A panorama wraps around: its first ``W / 2`` columns are appended on the right before
  detection, so that a sign across the seam is read whole; fragments of it at the left edge
  are then dropped.
- Neighbouring boxes on one text line over one plate (the colour between them is the plate's)
  are merged: PP-OCR often splits a sign at a wide space.
- Words run together (``HotelLilla``) are split at a lower-to-upper case change; a trailing
  ellipsis or full stop (a long name cut on its plate) is removed.
- A line touching the left or right border of a single view is marked ``extra["cut"]``: the
  photo's frame cuts that sign, so its text may be the start or end of a longer name.

Each :class:`TextHit` has its box, the plate's colour name, and its position relative to the
camera. In an equirectangular panorama the box centre ``cx`` of a ``W``-wide image lies at the
relative bearing ``r = 360 · (cx / W − ½)`` (the centre column faces the heading; positive =
to the right), and

    front: |r| <= 45,   right: 45 < r <= 135,   left: -135 <= r < -45,   back: otherwise;

in a single view of field of view ``fov`` (degrees), ``r = fov · (cx / W − ½)`` and the thirds
are ``left`` (r < -15), ``front``, ``right`` (r > 15): a 90° photo has no back.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from geotextloc.errors import ConfigError
from geotextloc.files import atomic_write_text

PANORAMA, SINGLE = "panorama", "single"
MIN_SIDE = 512  # px: the short side OCR sees (upscaled to it when smaller)
MIN_SCORE = 0.6  # recogniser confidence below which a hit is not kept
WRAP = 2  # a panorama's first W / WRAP columns (180°: signs near the camera are wide) go on the right
COLOURS = {  # plate colours by name (nearest in RGB)
    "white": (240, 240, 236), "black": (22, 22, 24), "grey": (128, 128, 128), "red": (200, 30, 30),
    "dark red": (140, 26, 32), "green": (40, 140, 60), "dark green": (24, 70, 48), "blue": (30, 90, 180),
    "navy": (22, 36, 84), "yellow": (232, 192, 40), "purple": (92, 40, 92), "brown": (110, 70, 40),
    "orange": (235, 130, 30), "cream": (236, 226, 190),
}


@dataclass
class TextHit:
    """One line of text read off a street view."""

    text: str
    score: float
    box: list[float]  # x0, y0, x1, y1 in pixels of the image as given
    bearing: float  # relative bearing of the box centre, degrees; positive = right
    direction: str  # front / right / back / left (panorama) or left / front / right (single view)
    colour: str | None = None  # the plate's colour name (:data:`COLOURS`)
    on: str | None = None  # the segment class under the box (set by segmentation)
    dropped: str | None = None  # why the hit is not used (e.g. on a vehicle), else None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def relative_bearing(cx: float, width: int, view: str, fov_deg: float = 90.0) -> float:
    """Relative bearing (degrees, positive = right) of image column ``cx`` (module docstring)."""
    span = 360.0 if view == PANORAMA else fov_deg
    r = span * (cx / width - 0.5)
    return round((r + 180.0) % 360.0 - 180.0, 1)


def direction(bearing: float, view: str) -> str:
    """The simple direction of a relative bearing: front/right/back/left in a panorama,
    left/front/right in a single view."""
    if view == SINGLE:
        return "left" if bearing < -15.0 else "right" if bearing > 15.0 else "front"
    if abs(bearing) <= 45.0:
        return "front"
    if 45.0 < bearing <= 135.0:
        return "right"
    if -135.0 <= bearing < -45.0:
        return "left"
    return "back"


def colour_name(rgb) -> str:
    """The nearest name of :data:`COLOURS` to an RGB triple."""
    names = list(COLOURS)
    ref = np.array([COLOURS[n] for n in names], np.float32)
    return names[int(np.argmin(((ref - np.asarray(rgb, np.float32)) ** 2).sum(1)))]


def split_words(text: str) -> str:
    """``HotelLilla Robert`` -> ``Hotel Lilla Robert``; spaces squeezed."""
    text = re.sub(r"(?<=[a-zäöåéü])(?=[A-ZÄÖÅÉÜ][a-zäöåéü])", " ", text)
    return " ".join(text.split()).rstrip(".…,;: ")


# ----------------------------------------------------------------------------- engine

_ENGINES: dict[int, object] = {}


def engine(det_limit_side_len: int = MIN_SIDE):
    """The RapidOCR engine (PP-OCRv4 det + rec, ONNX), one per detector size and process."""
    if det_limit_side_len not in _ENGINES:
        try:
            from rapidocr_onnxruntime import RapidOCR  # heavy: imported on first use
        except ImportError:
            raise ConfigError("OCR needs rapidocr-onnxruntime: pip install 'geotextloc[ocr]'") from None
        _ENGINES[det_limit_side_len] = RapidOCR(det_limit_side_len=det_limit_side_len)
    return _ENGINES[det_limit_side_len]


def _raw_ocr(image: Image.Image, wrap: bool) -> tuple[list[dict], np.ndarray]:
    """RapidOCR lines ``{text, score, box}`` in the (padded) image's pixels, and that image."""
    rgb = np.asarray(image.convert("RGB"))
    if wrap:
        rgb = np.concatenate([rgb, rgb[:, : rgb.shape[1] // WRAP]], axis=1)
    scale = max(1, math.ceil(MIN_SIDE / min(rgb.shape[:2])))
    big = Image.fromarray(rgb)
    if scale > 1:
        big = big.resize((big.width * scale, big.height * scale), resample=Image.BICUBIC)
    result, _ = engine()(np.asarray(big), use_cls=False)  # street signs are upright
    lines = []
    for box, text, score in result or []:
        xs, ys = [p[0] / scale for p in box], [p[1] / scale for p in box]
        lines.append({"text": str(text), "score": float(score), "box": [min(xs), min(ys), max(xs), max(ys)]})
    return lines, rgb


def _plate(rgb: np.ndarray, box) -> np.ndarray:
    """Median colour of a box (the plate: text strokes are the minority of its pixels)."""
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    h, w = rgb.shape[:2]
    patch = rgb[max(0, y0):min(h, y1 + 1), max(0, x0):min(w, x1 + 1)].reshape(-1, 3)
    return np.median(patch, axis=0) if len(patch) else np.zeros(3)


def _rows_overlap(a, b) -> bool:
    """Whether boxes ``a`` and ``b`` share at least half the height of the lower one."""
    return min(a[3], b[3]) - max(a[1], b[1]) >= 0.5 * min(a[3] - a[1], b[3] - b[1])


def _merge_lines(lines: list[dict], rgb: np.ndarray) -> list[dict]:
    """Merge left-to-right neighbours on one text line over one plate (module docstring)."""
    lines = sorted(lines, key=lambda d: (d["box"][0], d["box"][1]))
    out: list[dict] = []
    for line in lines:
        for prev in out:
            a, b = prev["box"], line["box"]
            ha, hb = a[3] - a[1], b[3] - b[1]
            overlap = min(a[3], b[3]) - max(a[1], b[1])
            gap = b[0] - a[2]
            if overlap < 0.6 * min(ha, hb) or max(ha, hb) > 1.5 * min(ha, hb) or not (-2 <= gap <= 1.6 * max(ha, hb)):
                continue
            ca, cb = _plate(rgb, a), _plate(rgb, b)
            between = _plate(rgb, [a[2], max(a[1], b[1]), max(b[0], a[2] + 1), min(a[3], b[3])])
            if np.abs(ca - cb).max() < 40 and np.abs(between - ca).max() < 40:
                prev["text"] = f"{prev['text']} {line['text']}"
                prev["score"] = min(prev["score"], line["score"])
                prev["box"] = [a[0], min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])]
                break
        else:
            out.append(dict(line))
    return out


def read_text(image: Image.Image, view: str, fov_deg: float = 90.0, min_score: float = MIN_SCORE) -> list[TextHit]:
    """The text lines of a street view (``view``: ``panorama`` | ``single``) as
    :class:`TextHit` s, left to right; lines with a score below ``min_score`` or fewer than
    three letters are left out."""
    if view not in (PANORAMA, SINGLE):
        raise ValueError(f"unknown view {view!r}")
    width = image.width
    lines, rgb = _raw_ocr(image, wrap=view == PANORAMA)
    lines = _merge_lines(lines, rgb)
    if view == PANORAMA:  # the seam: keep each sign once, where it starts
        seam = [d for d in lines if d["box"][0] < width < d["box"][2]]
        kept = []
        for d in lines:
            x0, x1 = d["box"][0], d["box"][2]
            if x0 >= width:
                continue  # all in the pad: read at the left edge too
            if x1 <= width // WRAP and any(s["box"][2] - width > x0 and _rows_overlap(s["box"], d["box"])
                                           for s in seam):
                continue  # the right part of a sign read whole across the seam
            kept.append(d)
        lines = kept
    hits = []
    for d in lines:
        text = split_words(d["text"])
        if d["score"] < min_score or sum(c.isalpha() for c in text) < 3:
            continue
        x0, y0, x1, y1 = d["box"]
        cx = ((x0 + x1) / 2) % width
        bearing = relative_bearing(cx, width, view, fov_deg)
        box = [round(x0, 1), round(y0, 1), round(x1, 1), round(y1, 1)]
        hit = TextHit(text, round(d["score"], 4), box, bearing, direction(bearing, view),
                      colour=colour_name(_plate(rgb, d["box"])))
        if view == SINGLE and (x0 <= 1.0 or x1 >= width - 1.0):
            hit.extra["cut"] = True
        hits.append(hit)
    return sorted(hits, key=lambda h: (h.box[0], h.box[1]))


def read_text_cached(path: Path, view: str, cache_dir: Path | None, fov_deg: float = 90.0) -> list[TextHit]:
    """:func:`read_text` of the image file ``path``, cached under ``cache_dir`` by the image's
    SHA-256 (and the view and field of view): a re-run reads no image twice."""
    raw = Path(path).read_bytes()
    key = hashlib.sha256(raw + f"|{view}|{fov_deg}|{MIN_SIDE}|{MIN_SCORE}".encode()).hexdigest()
    cache = Path(cache_dir) / key[:2] / f"{key}.json" if cache_dir is not None else None
    if cache is not None and cache.is_file():
        try:
            return [TextHit(**h) for h in json.loads(cache.read_text(encoding="utf-8"))]
        except (ValueError, TypeError):
            pass  # unreadable: read again
    import io

    with Image.open(io.BytesIO(raw)) as im:
        hits = read_text(im.convert("RGB"), view, fov_deg)
    if cache is not None:
        atomic_write_text(cache, json.dumps([h.to_dict() for h in hits], ensure_ascii=False))
    return hits
