"""Step 2 of the CVG-Text text pipeline: segmentation -> classes with positions; OCR hits on
moving objects dropped.

CVG-Text runs an open-world segmenter on each street view for the classes in view and where
they are, and drops OCR text lying on moving objects (a bus's advertisement says nothing about
the place). A :class:`Segmentation` is a per-pixel label map, its class names, and where it came
from. Two sources:

- ``renderer``: the embedded street renderer's own label map
  (:mod:`geotextloc.data.embedded.render_street`, ``labels=True``). No pretrained segmenter can
  be downloaded offline, so for the embedded street views the map the renderer knows is used:
  it is **ground truth**, marked ``ground_truth: true`` in every output, not a model's guess.
- ``transformers``: a semantic-segmentation model through ``transformers`` by name (default
  :data:`DEFAULT_MODEL`, SegFormer trained on ADE20K); its 150 ADE20K classes are mapped onto
  :data:`CLASSES` by name (:func:`ade_to_classes`). Loading needs the weights in the Hugging
  Face cache or the network; offline it raises :class:`~geotextloc.errors.OfflineError`.

:func:`summarise` turns a label map into what the writers use: per class its share of the image
and of each direction (front/right/back/left in a panorama, left/front/right in a single view,
by the column's relative bearing as in :mod:`~geotextloc.text.ocr`), and per direction the
buildings' angular height and, on a flat street seen from a camera ``CAMERA_HEIGHT_M`` above
it, their distance and height: a wall whose foot is seen ``e₀`` below the horizon and whose top
``e₁`` above it stands at ``d = cam / tan(−e₀)`` and is ``h = cam + d · tan(e₁)`` tall.
Rows are equirectangular: row ``r`` of an ``H``-row image spanning ``V`` degrees looks at the
elevation ``V · (½ − (r + ½) / H)`` (``V`` = 180 for a panorama, the field of view for the
single-view crop, which is as many degrees tall as wide).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from geotextloc.errors import OfflineError
from geotextloc.text.ocr import PANORAMA, SINGLE, TextHit, direction, relative_bearing

CLASSES = ("sky", "building", "road", "sidewalk", "vegetation", "ground", "water", "tree", "sign",
           "pole", "vehicle", "person", "other")
MOVING = ("vehicle", "person")  # OCR text on these is not about the place
CAMERA_HEIGHT_M = 2.5  # a street-view capture car's camera
DEFAULT_MODEL = "nvidia/segformer-b0-finetuned-ade-512-512"
RENDERER = "renderer"  # source of the embedded renderer's label maps
DIRECTIONS = {PANORAMA: ("front", "right", "back", "left"), SINGLE: ("left", "front", "right")}
FACADE_COLOURS = {  # facade colour names by chromaticity (brightness is compared apart)
    "white": (225, 225, 220), "cream": (215, 205, 180), "beige": (196, 182, 160), "sand-coloured": (202, 170, 130),
    "pale yellow": (226, 214, 170), "grey": (168, 166, 160), "brick-red": (176, 120, 96), "brown": (150, 110, 90),
    "pink": (214, 160, 160), "green": (120, 160, 120), "blue": (130, 150, 190),
}


ROOF_COLOURS = {  # roofs seen from the street (the renderer's roof palette, in shade)
    "red-tiled": (124, 66, 50), "terracotta": (146, 84, 62), "dark metal": (72, 74, 78), "black": (40, 40, 42),
    "copper-green": (96, 138, 120), "light grey": (160, 160, 158), "brown": (104, 88, 74), "grey": (120, 118, 112),
}


def roof_colour(rgb) -> str:
    """A roof colour name for a median RGB (nearest :data:`ROOF_COLOURS` entry, brightness normalised)."""
    rgb = np.asarray(rgb, np.float64)
    names = list(ROOF_COLOURS)
    ref = np.array([ROOF_COLOURS[n] for n in names], np.float64)
    scale = ref.mean(1, keepdims=True) / max(rgb.mean(), 1.0)
    dist = ((ref / scale - rgb) ** 2).sum(1) + 0.2 * ((ref.mean(1) - rgb.mean()) ** 2)
    return names[int(np.argmin(dist))]


def facade_colour(rgb) -> str:
    """A facade colour name for a median RGB: nearest :data:`FACADE_COLOURS` entry by
    chromaticity (``rgb / sum``), ``dark``/``light`` added from the brightness."""
    rgb = np.asarray(rgb, np.float64)
    chroma = rgb / max(rgb.sum(), 1.0)
    names = list(FACADE_COLOURS)
    ref = np.array([FACADE_COLOURS[n] for n in names], np.float64)
    name = names[int(np.argmin(((ref / ref.sum(1, keepdims=True) - chroma) ** 2).sum(1)))]
    light = rgb.mean()
    if light < 85 and name not in ("brown",):
        return f"dark {name}"
    return name


@dataclass
class Segmentation:
    """A label map (``H × W`` class indices into ``classes``) and where it came from."""

    labels: np.ndarray
    classes: tuple[str, ...]
    source: str  # "renderer" or "transformers:<model name>"
    ground_truth: bool  # True: the renderer's own map, not a model's prediction

    def class_at(self, box, width: int | None = None) -> str:
        """The most common class inside ``box`` (x0, y0, x1, y1 in pixels of an image ``width``
        wide; the label map may have another size)."""
        h, w = self.labels.shape
        k = w / (width or w)
        x0, y0, x1, y1 = (int(round(v * k)) for v in box)
        patch = self.labels[max(0, y0):min(h, y1 + 1), max(0, x0):min(w, x1 + 1)]
        if patch.size == 0:
            return "other"
        return self.classes[int(np.bincount(patch.ravel(), minlength=len(self.classes)).argmax())]

    def share_in(self, box, names, width: int | None = None) -> float:
        """Share of the pixels inside ``box`` whose class is one of ``names``."""
        h, w = self.labels.shape
        k = w / (width or w)
        x0, y0, x1, y1 = (int(round(v * k)) for v in box)
        patch = self.labels[max(0, y0):min(h, y1 + 1), max(0, x0):min(w, x1 + 1)]
        ids = [i for i, c in enumerate(self.classes) if c in names]
        return float(np.isin(patch, ids).mean()) if patch.size else 0.0


def drop_on_moving(hits: list[TextHit], seg: Segmentation | None, width: int, min_share: float = 0.5) -> list[TextHit]:
    """Set each hit's ``on`` (class under its box) and mark hits lying on a moving object
    (:data:`MOVING`: at least ``min_share`` of the box) as dropped. Returns the hits kept."""
    kept = []
    for hit in hits:
        if seg is None:
            kept.append(hit)
            continue
        hit.on = seg.class_at(hit.box, width)
        if seg.share_in(hit.box, MOVING, width) >= min_share:
            hit.dropped = f"on a moving object ({hit.on if hit.on in MOVING else '/'.join(MOVING)})"
        else:
            kept.append(hit)
    return kept


def elevations(height: int, view: str, fov_deg: float = 90.0) -> np.ndarray:
    """Elevation (degrees) of each row's centre (module docstring)."""
    span = 180.0 if view == PANORAMA else fov_deg
    return span * (0.5 - (np.arange(height) + 0.5) / height)


def summarise(seg: Segmentation, view: str, fov_deg: float = 90.0,
              camera_height_m: float = CAMERA_HEIGHT_M, image=None) -> dict:
    """What the label map says, for the writers (module docstring): ``source``,
    ``ground_truth``, ``share`` (class -> share of the image), ``by_direction`` (direction ->
    class -> share of that direction's pixels, classes over 0.5 %) and ``buildings``
    (direction -> columns with a building, median top elevation, and where the wall's foot
    is seen, distance and height in metres; with the ``image``, the facades' colour name)."""
    lab = seg.labels
    h, w = lab.shape
    rgb = None
    if image is not None:
        from PIL import Image

        image = image.convert("RGB")
        rgb = np.asarray(image.resize((w, h), Image.NEAREST) if image.size != (w, h) else image)
    idx = {c: i for i, c in enumerate(seg.classes)}
    bearings = np.array([relative_bearing(c + 0.5, w, view, fov_deg) for c in range(w)])
    dirs = np.array([direction(b, view) for b in bearings])
    el = elevations(h, view, fov_deg)
    counts = np.bincount(lab.ravel(), minlength=len(seg.classes)) / lab.size
    out: dict = {"source": seg.source, "ground_truth": seg.ground_truth,
                 "share": {c: round(float(counts[i]), 4) for i, c in enumerate(seg.classes) if counts[i] > 0},
                 "by_direction": {}, "buildings": {}}
    building = lab == idx.get("building", -1)
    ground = np.isin(lab, [idx[c] for c in ("road", "sidewalk", "ground", "vegetation", "water") if c in idx])
    for d in DIRECTIONS[view]:
        cols = np.flatnonzero(dirs == d)
        if len(cols) == 0:
            continue
        part = lab[:, cols]
        share = np.bincount(part.ravel(), minlength=len(seg.classes)) / part.size
        out["by_direction"][d] = {c: round(float(share[i]), 4) for i, c in enumerate(seg.classes) if share[i] >= 0.005}
        b = building[:, cols]
        has = b.any(axis=0)
        if has.mean() < 0.05:
            continue
        top = np.array([el[np.argmax(col)] for col in b.T[has]])  # first building row from the top
        foot_rows = np.array([h - 1 - np.argmax(col[::-1]) for col in b.T[has]])  # last building row
        # a wall's foot is on the ground where the pixel below it is ground (not a tree, a sign)
        below = np.minimum(foot_rows + 1, h - 1)
        on_ground = ground[below, cols[has]] & (el[foot_rows] < 0)
        runs = int(np.sum(np.diff(np.concatenate([[0], has.astype(np.int8), [0]])) == 1))
        entry = {"columns": round(float(has.mean()), 3), "top_deg": round(float(np.median(top)), 1), "runs": runs}
        if rgb is not None:
            part_rgb = rgb[:, cols]
            entry["colour"] = facade_colour(np.median(part_rgb[b], axis=0))
            # the top few building rows of each column: a pitched roof shows there above the eaves
            first = np.argmax(b, axis=0)[has]
            band = np.concatenate([part_rgb[f:f + 3, c][b[f:f + 3, c]] for f, c in zip(first, np.flatnonzero(has))])
            roof = roof_colour(np.median(band, axis=0)) if len(band) else None
            if roof is not None and np.abs(np.median(band, axis=0) - np.median(part_rgb[b], axis=0)).max() > 25:
                entry["roof"] = roof
        if on_ground.sum() >= 3:
            foot = el[foot_rows[on_ground]]
            dist = camera_height_m / np.tan(np.radians(-foot))
            height = camera_height_m + dist * np.tan(np.radians(np.clip(top[on_ground], -80, 80)))
            entry |= {"distance_m": round(float(np.median(dist)), 1),
                      "height_m": round(float(np.percentile(height, 75)), 1)}
        out["buildings"][d] = entry
    if view == PANORAMA:
        out["road"] = _road_edges(lab, idx, bearings, el, camera_height_m)
    return out


def _road_edges(lab: np.ndarray, idx: dict, bearings: np.ndarray, el: np.ndarray, cam: float) -> dict:
    """Where the road under the camera ends, per panorama column: from the bottom row up
    (through the capture car at the nadir) while the pixels are road; the last road row's
    elevation gives the distance ``cam / tan(-e)`` to the road's edge in that direction.
    Returns the distances to the left and right kerbs (median over +-15 degrees around -90
    and +90), their sum as the road's width, and per direction how far the road reaches
    (90th percentile): a side street shows as road reaching far to the left or right."""
    road, car = idx.get("road", -1), idx.get("vehicle", -1)
    h, w = lab.shape
    reach = np.zeros(w)
    for c in range(w):
        col = lab[:, c]
        r = h - 1
        while r >= 0 and col[r] == car:
            r -= 1
        last = None
        while r >= 0 and col[r] == road and el[r] < 0:
            last, r = r, r - 1
        reach[c] = cam / np.tan(np.radians(-el[last])) if last is not None else 0.0
    out: dict = {}
    for side, centre in (("left", -90.0), ("right", 90.0)):
        near = np.abs(bearings - centre) <= 15.0
        if near.any():
            out[f"{side}_edge_m"] = round(float(np.median(reach[near])), 1)
    if "left_edge_m" in out and "right_edge_m" in out:
        out["width_m"] = round(out["left_edge_m"] + out["right_edge_m"], 1)
    dirs = np.array([direction(b, PANORAMA) for b in bearings])
    out["reach_m"] = {d: round(float(np.percentile(reach[dirs == d], 90)), 1)
                      for d in DIRECTIONS[PANORAMA] if (dirs == d).any()}
    return out


# ----------------------------------------------------------------------------- transformers

ADE_RULES = (  # ADE20K class-name words -> our class (first match wins)
    ("sky", "sky"), ("building", "building"), ("house", "building"), ("skyscraper", "building"),
    ("wall", "building"), ("tower", "building"), ("hovel", "building"), ("windowpane", "building"),
    ("door", "building"), ("awning", "building"), ("column", "building"),
    ("road", "road"), ("runway", "road"), ("dirt track", "road"),
    ("sidewalk", "sidewalk"), ("path", "sidewalk"), ("floor", "sidewalk"), ("stairs", "sidewalk"),
    ("step", "sidewalk"), ("grass", "vegetation"), ("field", "vegetation"), ("plant", "vegetation"),
    ("flower", "vegetation"), ("tree", "tree"), ("palm", "tree"),
    ("earth", "ground"), ("land", "ground"), ("sand", "ground"), ("rock", "ground"), ("mountain", "ground"),
    ("hill", "ground"), ("water", "water"), ("sea", "water"), ("river", "water"), ("lake", "water"),
    ("pool", "water"), ("fountain", "water"), ("waterfall", "water"),
    ("signboard", "sign"), ("trade name", "sign"), ("poster", "sign"), ("bulletin board", "sign"),
    ("pole", "pole"), ("streetlight", "pole"), ("traffic light", "pole"),
    ("car", "vehicle"), ("bus", "vehicle"), ("truck", "vehicle"), ("van", "vehicle"), ("minibike", "vehicle"),
    ("bicycle", "vehicle"), ("boat", "vehicle"), ("ship", "vehicle"), ("airplane", "vehicle"),
    ("person", "person"),
)


def ade_to_classes(id2label: dict) -> np.ndarray:
    """A lookup table: model class id -> index into :data:`CLASSES`, by the ADE20K label names
    (``"car"`` -> vehicle, ``"signboard, sign"`` -> sign, anything else -> other)."""
    size = max(int(k) for k in id2label) + 1
    table = np.full(size, CLASSES.index("other"), np.uint8)
    for k, name in id2label.items():
        words = [w.strip() for w in str(name).lower().split(",")]
        for key, cls in ADE_RULES:
            if any(w == key or w.startswith(key + " ") or w.endswith(" " + key) for w in words):
                table[int(k)] = CLASSES.index(cls)
                break
    return table


class TransformersSegmenter:
    """A semantic-segmentation model from the Hugging Face Hub (by name), its ADE20K classes
    mapped onto :data:`CLASSES`. ``segment(name, view, image_bytes) -> Segmentation`` at the
    image's size (:meth:`segment_image` for a PIL image)."""

    def __init__(self, model: str = DEFAULT_MODEL, device: str = "cpu"):
        try:
            from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation
        except ImportError:
            raise OfflineError("segmentation with --segmenter transformers needs transformers: "
                               "pip install transformers") from None
        try:
            self.processor = AutoImageProcessor.from_pretrained(model)
            self.model = AutoModelForSemanticSegmentation.from_pretrained(model).to(device).eval()
        except (OSError, ValueError) as err:  # not cached and no network; not a model name
            raise OfflineError(f"cannot load the segmentation model {model!r} ({str(err).splitlines()[0][:120]}); "
                               "download it once with network access (it is then cached), or on the embedded "
                               "dataset use --segmenter renderer (the renderer's ground-truth label maps)") from None
        self.name, self.device = model, device
        self.table = ade_to_classes(self.model.config.id2label)

    def segment(self, name: str, view: str, image_bytes: bytes) -> Segmentation:
        import io

        from PIL import Image

        with Image.open(io.BytesIO(image_bytes)) as im:
            return self.segment_image(im.convert("RGB"))

    def segment_image(self, image) -> Segmentation:
        import torch

        inputs = self.processor(images=image.convert("RGB"), return_tensors="pt").to(self.device)
        with torch.no_grad():
            logits = self.model(**inputs).logits
        up = torch.nn.functional.interpolate(logits, size=(image.height, image.width), mode="bilinear",
                                             align_corners=False)
        ids = up.argmax(1)[0].cpu().numpy()
        return Segmentation(self.table[ids], CLASSES, f"transformers:{self.name}", ground_truth=False)
