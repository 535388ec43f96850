"""Label maps of an embedded build's street views, from the renderer (ground truth).

The text pipeline's segmentation step (:mod:`geotextloc.text.segment`) needs a label map per
street view. No pretrained segmenter can be had offline, but the embedded street views were
drawn by :func:`~geotextloc.data.embedded.render_street.render_panorama`, which can say what it
drew in each pixel. :class:`RendererSegmenter` renders a place's panorama again from the
build's OSM extract (settings from ``build.json``, the place from its facts file) with
``labels=True`` and checks that the image comes out byte-identical to the stored street view
(panorama, or its single-view crop) before it hands out the map: a build made by another
renderer version gets no map rather than a wrong one. Every map is marked
``ground_truth=True`` / source ``renderer``: it is what the scene holds, not a model's guess.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from geotextloc.data.embedded import regions as rg
from geotextloc.data.embedded.layout import location_id
from geotextloc.errors import DataError
from geotextloc.text.segment import RENDERER, Segmentation

log = logging.getLogger(__name__)


def is_embedded_build(root: str | Path) -> bool:
    """Whether ``root`` is an embedded build (``build.json`` and ``facts/`` next to ``CVG-text/``)."""
    root = Path(root)
    return (root / "build.json").is_file() and (root / "facts").is_dir()


class RendererSegmenter:
    """``segment(name, view, image_bytes) -> Segmentation | None`` for the street views of the
    embedded build ``root`` (module docstring). None: the place is unknown or its re-rendered
    view differs from the stored one (the reason is in :attr:`last_problem`)."""

    source = RENDERER

    def __init__(self, root: str | Path):
        root = Path(root)
        if not is_embedded_build(root):
            raise DataError(f"{root}: not an embedded build (no build.json and facts/); the renderer's label "
                            "maps exist only for geotextloc data build-embedded output: use --segmenter "
                            "transformers or none")
        self.root = root
        self.manifest = json.loads((root / "build.json").read_text(encoding="utf-8"))
        self.settings = self.manifest["settings"]
        self._facts = {p.stem: p for p in sorted(root.glob("facts/*/*.json"))
                       if not p.parent.name.endswith("-dense")}
        self._regions: dict = {}
        self.last_problem: str | None = None

    def _region(self, name: str):
        if name not in self._regions:
            entry = self.manifest["regions"].get(name)
            if entry is None:
                raise DataError(f"{self.root / 'build.json'}: region {name!r} not listed; rebuild the dataset")
            if entry.get("builtin"):
                source = rg.builtin_source(entry["builtin"])
            else:
                source = rg.user_source(entry["source"])
                source.sha256 = rg.file_sha256(source.path)
            if source.sha256 and entry.get("sha256") and source.sha256 != entry["sha256"]:
                raise DataError(f"{source.path}: not the extract {self.root} was built from (SHA-256 differs)")
            self._regions[name] = rg.load_source(source)
        return self._regions[name]

    def segment(self, name: str, view: str, image_bytes: bytes) -> Segmentation | None:
        from geotextloc.data.embedded import builder, render_street
        from geotextloc.data.embedded.scene import Location

        self.last_problem = None
        path = self._facts.get(location_id(name))
        if path is None:
            self.last_problem = f"no facts file for {name!r} in {self.root}/facts"
            return None
        loc = Location(**json.loads(path.read_text(encoding="utf-8"))["location"])
        s = self.settings
        pano = render_street.render_panorama(self._region(loc.region), loc, s["pano_width"], s["pano_width"] // 2,
                                             s["seed"], labels=True)
        labels = pano.info["labels"]
        image = pano
        if view == "single":
            image = render_street.crop_single_view(pano, loc.heading, fov_deg=90)
            labels = render_street.crop_labels(labels, pano.info["heading_deg"], loc.heading, fov_deg=90)
        if builder.image_bytes("street", image) != image_bytes:
            self.last_problem = (f"{name}: the re-rendered street view differs from the stored one (built by "
                                 "another renderer version?); no label map")
            log.warning(self.last_problem)
            return None
        return Segmentation(labels, render_street.LABEL_CLASSES, RENDERER, ground_truth=True)
