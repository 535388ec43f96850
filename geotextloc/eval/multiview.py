"""GeoBridge evaluation: any view -> any other view, and text -> any view, over the test gallery.

Directions (query -> gallery; d = drone, p = street-view panorama, s = satellite, t = text):
D2S, S2D, P2S, S2P, D2P, P2D (the paper's six) and T2D, T2P, T2S. For direction u -> v the
queries are the test locations that have both u and v, the gallery is every test location
that has v (one item per location, keyed by its name), and the similarity is the cosine
s_ij = z_u,i . z_v,j of L2-normalised embeddings, searched with the FAISS
:class:`geotextloc.eval.index.GalleryIndex` (``flat``: exact inner product).

Whole-gallery metrics, per direction, in percent:

    rank_i = position of query i's own location in the gallery sorted by s_ij (1 = best)
    R@k    = mean_i 1[rank_i <= k]                    (k = 1, 5, 10)
    AP     = mean_i AP_i,  AP_i = 1 / rank_i

AP is the mean average precision with exactly one relevant gallery item per query: the
average precision of a query is the precision at the ranks of its relevant items, averaged
over them; with one relevant item at rank r that is 1/r, so AP here equals the mean
reciprocal rank. Ranks within the top ``k`` come from the FAISS search (equal scores in the
order FAISS returns them); a rank beyond it is counted exactly as 1 + #{j : s_ij > s_i,true}.

Scoped metrics (where every location has coordinates): the CVG-Text protocol,
:func:`geotextloc.eval.evaluate`, on the same similarities - the ``scope`` gallery items
nearest to the query's true location are the candidates; R@1/5/10, L@50/100/150 (top-1
within m metres) and Deviation (km). Protocol names are ``<lat>,<lon>_<name>``, so real
GeoLoc names without coordinates work too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from geotextloc.errors import DataError
from geotextloc.files import atomic_path
from geotextloc.eval.embed import Embedded, embed_records
from geotextloc.eval.index import GalleryIndex, l2_normalise
from geotextloc.eval.metrics import evaluate
from geotextloc.views import DIRECTIONS, GEOBRIDGE_VIEWS, IMAGE_DIRECTIONS, LETTER, TEXT, TEXT_DIRECTIONS

RECALL_AT = (1, 5, 10)
WHOLE_KEYS = ("R@1", "R@5", "R@10", "AP", "Count")
SCOPED_KEYS = ("R@1", "R@5", "R@10", "L@50", "L@100", "L@150", "Deviation", "Count")
TOP_SHOWN = 5


@dataclass
class MultiviewReport:
    """``whole``: direction x (R@1, R@5, R@10, AP, Count), percent; ``scoped``: direction x the
    protocol's overall metrics (None without coordinates); ``per_query``: one row per query and
    direction (rank in the whole gallery, top-5 names)."""

    whole: pd.DataFrame
    scoped: pd.DataFrame | None
    per_query: pd.DataFrame
    scope: int | None

    @property
    def score(self) -> float:
        """Mean whole-gallery R@1 over the image directions evaluated (model selection)."""
        rows = [d for d in IMAGE_DIRECTIONS if d in self.whole.index]
        return float(self.whole.loc[rows, "R@1"].mean()) if rows else float("nan")

    def to_dict(self) -> dict:
        """{"whole": {direction: metrics}, "scoped": {...} | None, "scope", "mean_R@1"}: plain JSON values."""
        def plain(frame):
            return {d: {k: int(v) if k == "Count" else float(v) for k, v in row.items()} for d, row in frame.iterrows()}

        return {"whole": plain(self.whole), "scoped": None if self.scoped is None else plain(self.scoped),
                "scope": self.scope, "mean_R@1": self.score}

    def to_csv(self, path: str | Path) -> Path:
        """Write the per-query table (atomically); returns the path."""
        path = Path(path)
        with atomic_path(path) as tmp:
            self.per_query.to_csv(tmp, index=False)
        return path

    def __str__(self) -> str:
        text = "whole gallery\n" + self.whole.to_string(float_format=lambda v: f"{v:.2f}")
        if self.scoped is not None:
            text += f"\nscoped (CVG-Text protocol, scope {self.scope})\n"
            text += self.scoped.to_string(float_format=lambda v: f"{v:.2f}")
        return text


def ranks_in_gallery(index: GalleryIndex, queries: np.ndarray, truth: Sequence[str], k: int = 10):
    """(rank of each query's true gallery item, top names) in the whole gallery of ``index``.

    The top ``k`` come from FAISS; a true item outside them gets the exact count
    1 + #{j : s_ij > s_i,true} (at least k + 1).
    """
    position = {name: j for j, name in enumerate(index.names)}
    missing = [name for name in truth if name not in position]
    if missing:
        raise DataError(f"query {missing[0]!r} has no gallery item of the same name ({len(missing)} in all)")
    q = l2_normalise(queries)
    found = index.search(q, k=max(k, TOP_SHOWN))
    true_col = np.array([position[name] for name in truth], dtype=np.int64)
    hit = found.indices == true_col[:, None]
    within = hit.any(axis=1)
    rank = np.where(within, hit.argmax(axis=1) + 1, 0)
    outside = np.flatnonzero(~within)
    if len(outside):
        sims = q[outside] @ index.embeddings.T
        true_sim = sims[np.arange(len(outside)), true_col[outside]]
        rank[outside] = np.maximum(1 + (sims > true_sim[:, None]).sum(axis=1), found.indices.shape[1] + 1)
    return rank, [row[:TOP_SHOWN] for row in found.names]


def evaluate_embeddings(
    embeddings: Mapping[str, Embedded],
    coordinates: Mapping[str, tuple[float, float]] | None = None,
    directions: Sequence[str] | None = None,
    scope: int | None = 100,
    k: int = 10,
) -> MultiviewReport:
    """Whole-gallery (and scoped) metrics for each direction whose two kinds are embedded.

    ``embeddings``: kind ('drone' | 'street' | 'satellite' | 'text') -> :class:`Embedded`;
    ``coordinates``: name -> (lat, lon) for every name (None, or a name missing: no scoped part).
    """
    directions = list(directions or [d for d in DIRECTIONS if set(DIRECTIONS[d]) <= set(embeddings)])
    unknown = [d for d in directions if d not in DIRECTIONS]
    if unknown:
        raise DataError(f"unknown direction {unknown[0]!r}; use {', '.join(DIRECTIONS)}")
    names_all = {n for e in embeddings.values() for n in e.names}
    scoped_ok = coordinates is not None and names_all <= set(coordinates)
    whole, scoped, rows = {}, {}, []
    indexes: dict[str, GalleryIndex] = {}
    for direction in directions:
        u, v = DIRECTIONS[direction]
        if u not in embeddings or v not in embeddings:
            raise DataError(f"direction {direction} needs {u} and {v} embeddings; embed them or drop it")
        gallery = embeddings[v]
        if v not in indexes:  # names are the keys; (0, 0) stands in for unknown coordinates
            places = [coordinates[n] if scoped_ok else (0.0, 0.0) for n in gallery.names]
            indexes[v] = GalleryIndex(gallery.vectors, [{"name": n, "lat": float(lat), "lon": float(lon)}
                                                        for n, (lat, lon) in zip(gallery.names, places)])
        in_gallery = set(gallery.names)
        keep = [i for i, n in enumerate(embeddings[u].names) if n in in_gallery]
        if not keep:
            continue
        q_names = [embeddings[u].names[i] for i in keep]
        q_vectors = embeddings[u].vectors[keep]
        rank, top = ranks_in_gallery(indexes[v], q_vectors, q_names, k)
        whole[direction] = {**{f"R@{r}": 100.0 * float(np.mean(rank <= r)) for r in RECALL_AT},
                            "AP": 100.0 * float(np.mean(1.0 / rank)), "Count": len(q_names)}
        for name, r, t in zip(q_names, rank, top):
            rows.append({"direction": direction, "query": name, "rank": int(r),
                         **{f"top{j + 1}": t[j] if j < len(t) else "" for j in range(TOP_SHOWN)}})
        if scoped_ok:
            tag = {n: f"{coordinates[n][0]:.10f},{coordinates[n][1]:.10f}_{n}" for n in (*q_names, *gallery.names)}
            similarity = l2_normalise(q_vectors) @ indexes[v].embeddings.T
            report = evaluate(similarity, [tag[n] for n in q_names], [tag[n] for n in gallery.names], scope=scope)
            scoped[direction] = report.to_dict()["overall"]
    frame = pd.DataFrame.from_dict(whole, orient="index", columns=list(WHOLE_KEYS))
    frame["Count"] = frame["Count"].astype(int)
    scoped_frame = None
    if scoped_ok:
        scoped_frame = pd.DataFrame.from_dict(scoped, orient="index", columns=list(SCOPED_KEYS))
        scoped_frame["Count"] = scoped_frame["Count"].astype(int)
    return MultiviewReport(frame, scoped_frame, pd.DataFrame(rows), scope)


def evaluate_multiview(
    model, records: Sequence, transforms: Mapping, tokenizer, directions: Sequence[str] | None = None,
    scope: int | None = 100, batch_size: int = 64, num_workers: int = 0, progress: bool = True,
) -> MultiviewReport:
    """Embed the test ``records`` with ``model`` and evaluate every direction (module docstring).

    Names must be unique. The scoped protocol runs when every record has coordinates.
    """
    names = [r.name for r in records]
    if len(set(names)) != len(names):
        raise DataError("test records repeat a name; the gallery needs one item per location")
    directions = list(directions or DIRECTIONS)
    kinds = sorted({kind for d in directions for kind in DIRECTIONS[d]}, key=(*GEOBRIDGE_VIEWS, TEXT).index)
    embeddings = embed_records(model, records, transforms, tokenizer, kinds, batch_size, num_workers, progress)
    directions = [d for d in directions if set(DIRECTIONS[d]) <= set(embeddings)]
    coordinates = None
    if all(getattr(r, "lat", None) is not None and getattr(r, "lon", None) is not None for r in records):
        coordinates = {r.name: (r.lat, r.lon) for r in records}
    return evaluate_embeddings(embeddings, coordinates, directions, scope)
