"""Late fusion of a text-query model and a street-query model: s = w · s_text + (1 − w) · s_image.

For query i and tile j, the text-query model gives s_text(i, j) = <t_i, g_j> and the
street-query model s_image(i, j) = <p_i, h_j> (each with its own tile encoder: g, h). The fused
score is one dot product of concatenated embeddings,

    s(i, j) = w <t_i, g_j> + (1 − w) <p_i, h_j> = <[w t_i ; (1 − w) p_i], [g_j ; h_j]>,

so the CVG-Text protocol (:func:`~geotextloc.eval.metrics.evaluate_embeddings`) runs on them as
on any embeddings: w = 1 is the text query alone, w = 0 the street view alone.

The weight is chosen on validation queries: :func:`choose_weight` sees their embeddings only and
takes the highest R@1 over ``WEIGHTS`` (ties: higher R@5, then R@10, then w nearer ½); the test
split is then evaluated once, at that weight. (The early-fusion design, one query embedding
trained jointly, is :class:`geotextloc.models.query.Fusion`.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from geotextloc.errors import ConfigError
from geotextloc.eval.metrics import ProtocolReport, evaluate_embeddings

WEIGHTS = tuple(round(0.05 * i, 2) for i in range(21))  # w = 0, 0.05, ..., 1


@dataclass
class LateEmbeddings:
    """Both models' embeddings of one set of records: (queries x D) text queries and street
    queries, (gallery x D) tiles of each model, and the names the protocol keys them by."""

    text: np.ndarray
    text_tiles: np.ndarray
    street: np.ndarray
    street_tiles: np.ndarray
    queries: list[str]
    gallery: list[str]
    texts: list[str] | None = None

    def fused(self, w: float) -> tuple[np.ndarray, np.ndarray]:
        """(queries, gallery) whose dot products are w s_text + (1 − w) s_image."""
        if not 0.0 <= w <= 1.0:
            raise ConfigError(f"late-fusion weight w={w!r}; expected a number from 0 to 1")
        queries = np.concatenate([w * self.text, (1.0 - w) * self.street], axis=1)
        return queries, np.concatenate([self.text_tiles, self.street_tiles], axis=1)

    def report(self, w: float, scope: int | None = 100) -> ProtocolReport:
        """The protocol's report of the queries fused with weight ``w``."""
        queries, gallery = self.fused(w)
        return evaluate_embeddings(queries, gallery, self.queries, self.gallery, scope=scope, texts=self.texts)


def choose_weight(validation: LateEmbeddings, scope: int | None = 100,
                  weights: Sequence[float] = WEIGHTS) -> tuple[float, pd.DataFrame]:
    """(w, table): the weight of the best validation R@1 (ties: R@5, R@10, then w nearer ½) and
    the validation R@1/5/10 of every weight tried (one row per w)."""
    if not weights:
        raise ConfigError("choose_weight needs at least one weight")
    rows = []
    for w in weights:
        overall = validation.report(float(w), scope).to_dict()["overall"]
        rows.append({"w": float(w), **{key: overall[key] for key in ("R@1", "R@5", "R@10")}})
    table = pd.DataFrame(rows)
    best = max(rows, key=lambda row: (row["R@1"], row["R@5"], row["R@10"], -abs(row["w"] - 0.5)))
    return best["w"], table


def embed_late(text_model, street_model, records: Sequence, view: str, batch_size: int = 64,
               progress: bool = False) -> LateEmbeddings:
    """:class:`LateEmbeddings` of ``records`` (queries) and their ``view`` tiles (gallery, one per
    name); ``text_model`` and ``street_model`` are (module, tile transform, tokenizer) triples."""
    from geotextloc.data.images import image_paths, one_per_name
    from geotextloc.eval.embed import embed_images, embed_queries

    gallery = one_per_name(records)
    out = {}
    for kind, (model, transform, tokenizer) in (("text", text_model), ("street", street_model)):
        was_training = model.training
        model.eval()
        try:  # both embedders run without gradients
            out[f"{kind}_tiles"] = embed_images(model, image_paths(gallery, view), transform, batch_size,
                                                progress=progress).numpy()
            out[kind] = embed_queries(model, records, kind, tokenizer, batch_size, progress=progress).numpy()
        finally:
            model.train(was_training)
    return LateEmbeddings(**out, queries=[r.name for r in records], gallery=[r.name for r in gallery],
                          texts=[r.text for r in records])
