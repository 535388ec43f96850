"""The small public API, re-exported at the top level (``geotextloc.load`` etc.):

    import geotextloc
    model = geotextloc.load("runs/tiny/osm/interpolate-full/seed0/best.pt")   # either paper's checkpoint
    tiles = geotextloc.embed(model, images=["a.png", "b.png"])              # (2, D), L2-normalised
    query = geotextloc.embed(model, texts=["a bus stop on my right ..."])
    report = geotextloc.evaluate(model, records)                             # the CVG-Text protocol
    hits = geotextloc.search("index/", "a pharmacy across the road", k=5)    # a saved gallery index
    hits = geotextloc.search("index/", "a pharmacy ...", image="street.jpg")  # fused (a fusion run's index)

Everything here is a thin layer over :mod:`geotextloc.models.factory`,
:mod:`geotextloc.eval.embed` and :mod:`geotextloc.eval.index`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from geotextloc.views import query_kind


@dataclass
class Model:
    """A loaded checkpoint: a CLIP-style ``module`` (for GeoBridge: one image view and the shared
    text tower), its image ``preprocess``, ``tokenizer``, training ``config`` (None for bare
    released weights) and ``task`` (crosstext2loc | geobridge)."""

    module: Any
    preprocess: Any
    tokenizer: Any
    config: dict | None
    view: str

    @property
    def task(self) -> str:
        return (self.config or {}).get("task", "crosstext2loc")


def load(path: str | Path, view: str | None = None, device: str = "cpu", name: str | None = None) -> Model:
    """Either paper's checkpoint (our ``best.pt``/``last.pt``, or released CrossText2Loc
    weights, then ``name`` is their open_clip model); ``view``: the gallery view
    (``sat``/``osm``; GeoBridge: ``sat``, ``drone`` or ``street``), default the checkpoint's."""
    from geotextloc.models.factory import from_checkpoint

    module, _, preprocess, tokenizer, config = from_checkpoint(str(path), name=name, device=device, view=view)
    return Model(module.eval(), preprocess, tokenizer, config, view or (config or {}).get("view") or "sat")


def embed(model: Model, texts: Sequence[str] | None = None, images: Sequence[str | Path] | None = None,
          batch_size: int = 64, progress: bool = False) -> np.ndarray:
    """L2-normalised float32 embeddings of ``texts`` or of the image files ``images`` (one of them)."""
    from geotextloc.eval.embed import embed_images, embed_texts
    from geotextloc.errors import ConfigError

    if (texts is None) == (images is None):
        raise ConfigError("embed: give texts or images (one of them)")
    if texts is not None:
        return embed_texts(model.module, list(texts), model.tokenizer, batch_size, progress).numpy()
    return embed_images(model.module, [Path(p) for p in images], model.preprocess, batch_size,
                        progress=progress).numpy()


def evaluate(model: Model, records: Sequence, scope: int | None = 100, view: str | None = None,
             progress: bool = False):
    """The CVG-Text protocol's report of ``model`` on ``records`` (their texts as queries, or their
    street views, or both fused, as the run was trained; their ``view`` tiles, one per place, as
    the gallery)."""
    from geotextloc.eval.embed import evaluate_model

    return evaluate_model(model.module, records, view or model.view, model.preprocess, model.tokenizer,
                          scope=scope, progress=progress, query=query_kind(model.config))


def search(index: str | Path, text: str | Sequence[str] | None = None, k: int = 5,
           near: tuple[float, float] | None = None, scope: int = 100, radius_km: float | None = None,
           image: str | Path | Sequence[str | Path] | None = None):
    """Top-``k`` tiles of a saved gallery index for one description (or several), one street-view
    image file (or several), or both (one text and one image per query, fused: an index built
    from a fusion run); ``near`` (lat, lon): rank only the ``scope`` tiles nearest to it, or with
    ``radius_km`` every tile within that many km."""
    from geotextloc.eval.index import GalleryIndex

    texts = [text] if isinstance(text, str) else None if text is None else list(text)
    images = [image] if isinstance(image, (str, Path)) else None if image is None else list(image)
    return GalleryIndex.load(index).search_query(texts, images, k=k, near=near, scope=scope, radius_km=radius_km)
