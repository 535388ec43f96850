"""FAISS gallery index: the gallery tiles' embeddings with their records, searched by text.

Similarity is cosine: gallery embeddings g_j and a query embedding q are L2-normalised, so
s_j = <q, g_j>. Whole-gallery search (``near=None``) uses the FAISS index of ``kind``:

- ``flat``: ``IndexFlatIP``, exact;
- ``hnsw``: ``IndexHNSWFlat(dim, m, METRIC_INNER_PRODUCT)``, approximate (``m``, ``ef_construction``,
  ``ef_search``);
- ``ivf``: ``IndexIVFFlat`` over an ``IndexFlatIP`` quantizer, approximate (``nlist``, ``nprobe``);
  k-means on at most ``TRAIN_PER_LIST`` rows per list;
- ``auto``: ``flat`` up to ``flat_max`` tiles (default ``FLAT_MAX``, where one exact query
  still takes under 5 ms on one core), ``ivf`` above (benchmarks/RESULTS.md, bench_search).

Every build measures recall@10 of whole-gallery search against exact search on held-out
queries (:func:`recall_queries`: perturbed gallery rows, fixed seed) and, while an approximate
index falls short of ``RECALL_TARGET``, doubles ``nprobe`` (up to ``nlist``; with ``pq`` also
``rerank``) or ``ef_search`` (up to ``EF_SEARCH_MAX``) and measures again; the final parameter and recall are kept
(``recall_at_10``, ``recall_sample`` in ``meta.json``).

Compression (``compress``), for large galleries:

- ``none``: float32 everywhere;
- ``float16``: ``embeddings.npy`` in float16, and a FAISS index of float16 codes
  (``IndexScalarQuantizer`` / ``IndexHNSWSQ`` / ``IndexIVFScalarQuantizer`` with ``QT_fp16``);
- ``pq``: ``embeddings.npy`` in float16 and ``IndexIVFPQ`` (kind ``ivf``; ``subvectors`` bytes a
  tile, 8 bits each): FAISS ranks by the PQ codes, then the ``rerank`` best are re-scored exactly
  with the stored embeddings, s_j = <q, g_j>, and the top k of those are returned.

A compressed index keeps its embeddings rounded to float16 (scores from them differ from the
float32 ones by about 1e-3); they are upcast to float32 in memory.

Memory of a gallery of N tiles of dim d (N = 1M, d = 512: N d = 512M numbers). On disk:
``embeddings.npy`` 4 N d bytes (2 GiB), 2 N d with ``float16`` or ``pq`` (1 GiB); ``index.faiss``
another 4 N d for ``flat`` / ``ivf`` (2 GiB; ivf + 8 N of ids + its centroids), 4 N d + about
8 m N for ``hnsw`` (+ 256 MiB at m 32), 2 N d with ``float16`` (1 GiB), (subvectors + 8) N + the
centroids with ``pq`` (81 bytes a tile at 1M and 64 subvectors: 77 MiB); ``records.jsonl`` about
100 N. Loaded, the embeddings take 4 N d of RAM whatever the compression (float32, for geo-scoped
search and re-ranking) next to the FAISS index: about 4 GiB for an uncompressed 1M x 512 gallery,
3 GiB with ``float16``, 2.1 GiB with ``pq``.

Geo-scoped search (``near=(lat, lon)``) follows the protocol's candidate rule: the ``scope``
tiles nearest to ``near`` by haversine (ties in gallery order) or, with ``radius_km``, every tile
within that distance, found by a :class:`~geotextloc.eval.spatial.SpatialIndex` (a KD-tree, built
on the first such search) rather than by distances to the whole gallery; they are ranked by s_j
descending (ties: nearer, then gallery order), with exact dot products whatever the kind.

Queries are embedded with the index's ``encoder`` spec, written by whoever builds the
index: ``{"kind": "hashing-bow", "dim": 4096, "ngram": 1}`` (built in, below; texts only) or
``{"kind": "open_clip", "checkpoint": PATH}`` (+ optional ``model``, ``context_length``; through
``geotextloc.models.factory.from_checkpoint``). An ``open_clip`` checkpoint embeds what its run
was trained for (its config's ``query``): texts (``text``), street-view images (``street``), or
texts, images and a text with its image fused (``fusion``; :mod:`geotextloc.models.query`).

On disk, a folder (written to a temporary sibling, then renamed into place)::

    meta.json        format, kind, params, dim, count, encoder, sha256 (of the three files below),
                     compress, recall_at_10, recall_sample (absent in older folders: none, unknown)
    embeddings.npy   float32 (count x dim), L2-normalised; float16 when compressed
    records.jsonl    one JSON object per tile: name, lat, lon and any metadata
    index.faiss      the FAISS index
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from tqdm.auto import tqdm

from geotextloc.data.release import parse_name
from geotextloc.errors import ConfigError, DataError, GeotextlocError
from geotextloc.files import atomic_dir, file_sha256
from geotextloc.eval.spatial import CANDIDATES_PER_CHUNK, SpatialIndex
from geotextloc.views import query_kind

FORMAT = "geotextloc-gallery-index/1"
FILES = {"meta": "meta.json", "embeddings": "embeddings.npy", "records": "records.jsonl", "index": "index.faiss"}
DEFAULT_PARAMS = {
    "flat": {},
    "hnsw": {"m": 32, "ef_construction": 200, "ef_search": 128},
    "ivf": {"nlist": None, "nprobe": 16},  # nlist None: about 4 sqrt(count)
}
PQ_PARAMS = {"subvectors": None, "rerank": 100}  # ivf + pq; subvectors None: the largest divisor of dim <= dim / 8
COMPRESSIONS = ("none", "float16", "pq")
FLAT_MAX = 30_000  # kind auto: exact search up to this many tiles
TRAIN_PER_LIST = 64  # ivf k-means sample: at most this many rows per list
EF_SEARCH_MAX = 4096  # hnsw: the recall check raises ef_search no further
RECALL_K, RECALL_SAMPLE, RECALL_SEED, RECALL_TARGET = 10, 500, 0, 0.95
ADD_CHUNK = 65_536  # rows per FAISS add (progress steps)
TOKEN = re.compile(r"\w+")


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """x / max(||x||, 1e-12) row-wise, as float32; a zero row stays zero.

    Idempotent: rows already of unit norm (within 1e-6) are returned unchanged, bit for bit.
    """
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(np.abs(norm - 1.0) <= 1e-6, 1.0, np.maximum(norm, 1e-12)).astype(np.float32)


# ---------------------------------------------------------------- text encoders


def _bucket(gram: str, dim: int) -> tuple[int, float]:
    h = int.from_bytes(hashlib.blake2b(gram.encode("utf-8"), digest_size=8).digest(), "little")
    return h % dim, (1.0 if h >> 63 else -1.0)


def hashing_bow(texts: Sequence[str], dim: int = 4096, ngram: int = 1) -> np.ndarray:
    """Signed hashed bag of word n-grams (deterministic across runs and machines).

    x_b = sum over n-grams t of the lower-cased text with bucket h(t) = b of sign(t) * count(t),
    with h, sign from BLAKE2b of t; then x <- x / ||x||. Words are ``\\w+`` runs.
    """
    if not (isinstance(dim, int) and dim > 0 and isinstance(ngram, int) and ngram > 0):
        raise ConfigError(f"hashing-bow needs positive integers dim and ngram, got dim={dim!r} ngram={ngram!r}")
    out = np.zeros((len(texts), dim), dtype=np.float32)
    cache: dict[str, tuple[int, float]] = {}
    for i, text in enumerate(texts):
        words = TOKEN.findall(text.lower())
        for n in range(1, ngram + 1):
            for j in range(len(words) - n + 1):
                gram = " ".join(words[j : j + n])
                bucket, sign = cache.get(gram) or cache.setdefault(gram, _bucket(gram, dim))
                out[i, bucket] += sign
    return l2_normalise(out)


QUERY_KINDS = {"text": ("text", "fusion"), "street": ("street", "fusion"), "fusion": ("fusion",)}  # asked -> runs


def _open_clip_queries(spec: Mapping[str, Any], texts: Sequence[str] | None,
                       images: Sequence[str | Path] | None) -> np.ndarray:
    """Query embeddings from a checkpoint via ``geotextloc.models.factory.from_checkpoint``:
    texts through its text tower, street images through its street tower (a run with
    ``query: street | fusion``), a text and an image each through its fusion head (``query: fusion``).

    ``spec``: ``checkpoint`` (a .pt file), optional ``model`` (open_clip name, for a bare state
    dict) and ``context_length``; our training checkpoints carry their own config.
    """
    if "checkpoint" not in spec:
        raise ConfigError(f"encoder spec {dict(spec)} needs a 'checkpoint' file for kind 'open_clip'")
    try:
        from geotextloc.models import factory
        from geotextloc.models.query import street_transform
    except ImportError as err:
        raise GeotextlocError(
            f"encoder 'open_clip' needs geotextloc.models.factory, which cannot be imported ({err}); "
            "update geotextloc or rebuild the index with a 'hashing-bow' encoder"
        ) from None
    import torch

    from geotextloc.data.images import load_image

    asked = "fusion" if texts and images else "street" if images else "text"
    model, _, _, tokenizer, config = factory.from_checkpoint(
        str(spec["checkpoint"]), name=spec.get("model"), context_length=spec.get("context_length")
    )
    trained = query_kind(config)
    if trained not in QUERY_KINDS[asked]:
        what = {"text": "a text", "street": "an image", "fusion": "a text + image"}[asked]
        need = {"text": "a text-query or fusion run", "street": "a street-query or fusion run",
                "fusion": "a fusion run (query: fusion)"}[asked]
        raise ConfigError(f"{spec['checkpoint']}: trained for {trained} queries (query: {trained}); "
                          f"{what} query needs an index built from {need}")
    model.eval()
    parts = {}
    with torch.no_grad():
        if texts:
            parts["text"] = torch.cat([model.encode_text(tokenizer(list(texts[i : i + 64])), normalize=True)
                                       for i in range(0, len(texts), 64)])
        if images:
            transform = street_transform(model.street)
            parts["street"] = torch.cat([model.encode_street(torch.stack([transform(load_image(Path(p)))
                                                                          for p in images[i : i + 64]]),
                                                             normalize=True) for i in range(0, len(images), 64)])
        features = model.fuse(parts["text"], parts["street"]) if asked == "fusion" else parts[asked]
    return l2_normalise(features.float().cpu().numpy())


def encode_queries(spec: Mapping[str, Any], texts: Sequence[str] | None = None,
                   images: Sequence[str | Path] | None = None) -> np.ndarray:
    """Embed queries as the encoder ``spec`` says: texts, street-view image files, or one text and
    one image per query (fused); returns L2-normalised float32 rows."""
    texts = list(texts) if texts is not None else None
    images = list(images) if images is not None else None
    if texts is None and images is None:
        raise ConfigError("give a query: a text, an image, or both")
    if texts and images and len(texts) != len(images):
        raise ConfigError(f"{len(texts)} texts and {len(images)} images: a fused query is one text and one image")
    options = {key: value for key, value in spec.items() if key != "kind"}
    if spec.get("kind") == "hashing-bow":
        if images:
            raise ConfigError("this index's encoder (hashing-bow) embeds texts only; search it with a description, "
                              "or build an index from a street or fusion run to search with an image")
        unknown = set(options) - {"dim", "ngram"}
        if unknown:
            raise ConfigError(f"hashing-bow encoder: unknown option(s) {sorted(unknown)}; use dim, ngram")
        return hashing_bow(texts, **options)
    if spec.get("kind") == "open_clip":
        return _open_clip_queries(spec, texts, images)
    raise ConfigError(f"unknown encoder kind {spec.get('kind')!r}; expected 'hashing-bow' or 'open_clip'")


def encode_texts(spec: Mapping[str, Any], texts: Sequence[str]) -> np.ndarray:
    """Embed query texts as the encoder ``spec`` says; returns L2-normalised float32 rows."""
    return encode_queries(spec, texts=texts)


# ---------------------------------------------------------------- the index


@dataclass
class SearchResult:
    """Top-k per query, best first. Shapes (queries, k); index -1 / name "" where FAISS found fewer.

    ``distance_km`` (from ``near``) is set for geo-scoped searches only.
    """

    indices: np.ndarray
    scores: np.ndarray
    names: list[list[str]]
    lat: np.ndarray
    lon: np.ndarray
    distance_km: np.ndarray | None = None


def _as_record(item: str | Mapping[str, Any], position: int) -> dict[str, Any]:
    record = {"name": item} if isinstance(item, str) else dict(item)
    if not isinstance(record.get("name"), str):
        raise DataError(f"gallery record #{position} has no 'name' string: {record!r}")
    if "lat" not in record or "lon" not in record:
        info = parse_name(record["name"])
        record["lat"], record["lon"] = info.lat, info.lon
    try:
        record["lat"], record["lon"] = float(record["lat"]), float(record["lon"])
        if not (abs(record["lat"]) <= 90.0 and abs(record["lon"]) <= 180.0):
            raise ValueError
    except (TypeError, ValueError):
        raise DataError(f"gallery record {record['name']!r} has no valid lat/lon in degrees") from None
    try:
        json.dumps(record)
    except (TypeError, ValueError):
        raise DataError(f"gallery record {record['name']!r} has metadata that is not JSON: {record!r}") from None
    return record


def _build_faiss(embeddings: np.ndarray, kind: str, compress: str, params: dict[str, Any],
                 progress: bool) -> faiss.Index:
    """The FAISS inner-product index of ``kind`` and ``compress`` over the rows; fills in the
    params left None (``nlist``, ``subvectors``). IVF lists come from k-means on at most
    ``TRAIN_PER_LIST * nlist`` rows (a fixed-seed sample), then every row is added."""
    n, dim = embeddings.shape
    metric, fp16 = faiss.METRIC_INNER_PRODUCT, faiss.ScalarQuantizer.QT_fp16
    if kind == "flat":
        index = faiss.IndexFlatIP(dim) if compress == "none" else faiss.IndexScalarQuantizer(dim, fp16, metric)
    elif kind == "hnsw":
        index = (faiss.IndexHNSWFlat(dim, params["m"], metric) if compress == "none"
                 else faiss.IndexHNSWSQ(dim, fp16, params["m"], metric))
        index.hnsw.efConstruction = params["ef_construction"]
    else:
        nlist = params["nlist"] or max(1, min(int(4 * np.sqrt(n)), n // 39 or 1))
        if not 1 <= nlist <= n:
            raise ConfigError(f"ivf nlist must be between 1 and the gallery size {n}, got {nlist}")
        params["nlist"] = nlist
        quantizer = faiss.IndexFlatIP(dim)
        if compress == "none":
            index = faiss.IndexIVFFlat(quantizer, dim, nlist, metric)
        elif compress == "float16":
            index = faiss.IndexIVFScalarQuantizer(quantizer, dim, nlist, fp16, metric)
        else:
            subvectors = params["subvectors"] or max(m for m in range(1, max(1, dim // 8) + 1) if dim % m == 0)
            if dim % subvectors or n < 256:
                raise ConfigError(f"pq needs subvectors dividing dim {dim} (got {subvectors}) and at least 256 "
                                  f"tiles to learn 256 codes each (got {n}); use compress 'float16' instead")
            params["subvectors"] = subvectors
            index = faiss.IndexIVFPQ(quantizer, dim, nlist, subvectors, 8, metric)
    bar = tqdm(total=n, desc=f"{kind} index", unit="tile", disable=not progress, leave=False)
    if not index.is_trained:
        rows = np.random.default_rng(0).choice(n, min(n, TRAIN_PER_LIST * params["nlist"]), replace=False)
        bar.set_postfix_str(f"k-means: {params['nlist']} lists on {len(rows)} tiles")
        index.train(embeddings[np.sort(rows)])
        bar.set_postfix_str("")
    for start in range(0, n, ADD_CHUNK):
        index.add(embeddings[start : start + ADD_CHUNK])
        bar.update(min(ADD_CHUNK, n - start))
    bar.close()
    return index


def _param_defaults(kind: str, compress: str) -> dict[str, Any]:
    return {**DEFAULT_PARAMS[kind], **(PQ_PARAMS if compress == "pq" else {})}


def recall_queries(embeddings: np.ndarray, sample: int = RECALL_SAMPLE, seed: int = RECALL_SEED) -> np.ndarray:
    """The build-time recall check's held-out queries, L2-normalised float32 rows.

    ``min(sample, count)`` gallery rows g_i, drawn without replacement by
    ``numpy.random.default_rng(seed).choice`` (then sorted), each perturbed as
    q_i = (g_i + e_i) / ||g_i + e_i|| with e_i ~ N(0, I / dim) drawn next from the same generator
    (float32): ||e_i|| is about 1, so cos(q_i, g_i) is about 0.71; near the gallery, as a matching
    description would be, but none of them a gallery row.
    """
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(embeddings), min(sample, len(embeddings)), replace=False))
    noise = rng.standard_normal((len(rows), embeddings.shape[1]), dtype=np.float32)
    return l2_normalise(embeddings[rows] + noise / np.float32(np.sqrt(embeddings.shape[1])))


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over queries of |found_i ∩ truth_i| / k, k = truth's width (the exact top k)."""
    return float(np.mean([len(set(f.tolist()) & set(t.tolist())) / truth.shape[1] for f, t in zip(found, truth)]))


class GalleryIndex:
    """Gallery embeddings + records + encoder spec; exact, approximate and geo-scoped search.

    ``records``: release names, or mappings with ``name`` and optional ``lat``/``lon`` (else
    parsed from the name) plus JSON metadata. Names must be unique (a tile is one place).
    """

    def __init__(
        self,
        embeddings: Any,
        records: Sequence[str | Mapping[str, Any]],
        *,
        encoder: Mapping[str, Any] | None = None,
        kind: str = "flat",
        params: Mapping[str, Any] | None = None,
        compress: str = "none",
        flat_max: int = FLAT_MAX,
        progress: bool = False,
        _faiss_index: faiss.Index | None = None,
    ):
        """``kind``: flat, hnsw, ivf, or auto (flat up to ``flat_max`` tiles, else ivf; always ivf
        with ``compress="pq"``); ``params`` override ``DEFAULT_PARAMS[kind]`` (and ``PQ_PARAMS``);
        ``compress``: none, float16 or pq; ``progress``: a bar while FAISS builds."""
        if kind == "auto":
            if params:
                raise ConfigError("kind 'auto' chooses its own parameters; name the kind (flat, hnsw, ivf) to set them")
            if not (isinstance(flat_max, int) and flat_max >= 0):
                raise ConfigError(f"flat_max must be a non-negative integer, got {flat_max!r}")
            kind = "ivf" if compress == "pq" or len(records) > flat_max else "flat"
        if kind not in DEFAULT_PARAMS:
            raise ConfigError(f"unknown index kind {kind!r}; choose auto or one of {', '.join(DEFAULT_PARAMS)}")
        if compress not in COMPRESSIONS:
            raise ConfigError(f"unknown compress {compress!r}; choose one of {', '.join(COMPRESSIONS)}")
        if (kind, compress) not in KIND_CLASSES:
            raise ConfigError(f"compress {compress!r} codes IVF lists: use kind 'ivf' or 'auto', not {kind!r}")
        unknown = set(params or {}) - set(_param_defaults(kind, compress))
        if unknown:
            raise ConfigError(f"index kind {kind!r} has no parameter(s) {sorted(unknown)}")
        embeddings = np.asarray(embeddings, dtype=np.float32)
        if embeddings.ndim != 2 or len(embeddings) != len(records) or len(records) == 0:
            raise DataError(f"need one embedding row per record, got {embeddings.shape} for {len(records)} records")
        self.records = [_as_record(item, i) for i, item in enumerate(records)]
        bad = ~np.isfinite(embeddings).all(axis=1)
        if bad.any():
            raise DataError(f"embedding of {self.records[int(np.argmax(bad))]['name']!r} is not finite")
        self.names = [r["name"] for r in self.records]
        if len(set(self.names)) != len(self.names):
            dup = next(name for name, count in Counter(self.names).items() if count > 1)
            raise DataError(f"gallery name {dup!r} appears more than once; keep one record per tile")
        if _faiss_index is not None and compress != "none":
            self.embeddings = embeddings  # loaded: the float16 rows as built (upcast), not normalised again
        else:
            unit = l2_normalise(embeddings)
            self.embeddings = unit if compress == "none" else unit.astype(np.float16).astype(np.float32)
        self.lat = np.array([r["lat"] for r in self.records], dtype=np.float64)
        self.lon = np.array([r["lon"] for r in self.records], dtype=np.float64)
        self._spatial: SpatialIndex | None = None  # built on the first geo-scoped search
        self.encoder = dict(encoder) if encoder is not None else None
        self.kind, self.compress = kind, compress
        self.params = {**_param_defaults(kind, compress), **(params or {})}
        self.recall_at_10: float | None = None  # measured when built, read from meta.json when loaded
        self.recall_sample: int | None = None
        if _faiss_index is None:
            self.faiss_index = _build_faiss(unit, kind, compress, self.params, progress)
            self._measure_recall(unit)
        else:
            self.faiss_index = _faiss_index

    @classmethod
    def from_texts(cls, records, texts: Sequence[str], encoder: Mapping[str, Any] | None = None, **kwargs):
        """An index whose gallery embeddings are ``encode_texts(encoder, texts)`` (default hashing-bow)."""
        encoder = dict(encoder or {"kind": "hashing-bow", "dim": 4096, "ngram": 1})
        return cls(encode_texts(encoder, texts), records, encoder=encoder, **kwargs)

    def __len__(self) -> int:
        return len(self.records)

    # -- search

    def search(self, queries: Any, k: int = 5, near: Any = None, scope: int | None = 100,
               radius_km: float | None = None) -> SearchResult:
        """Top-``k`` gallery items per query embedding (rows are L2-normalised here).

        ``near``: None (whole gallery, FAISS), one (lat, lon) for all queries, or one per query;
        ``radius_km`` (with ``near``): rank every tile within that many km instead of the nearest ``scope``.
        """
        q = l2_normalise(np.atleast_2d(np.asarray(queries, dtype=np.float32)))
        if q.shape[1] != self.embeddings.shape[1]:
            raise DataError(f"query embeddings have dim {q.shape[1]}, the index has {self.embeddings.shape[1]}")
        if not (isinstance(k, (int, np.integer)) and k > 0):
            raise ConfigError(f"k must be a positive integer, got {k!r}")
        if near is None:
            if radius_km is not None:
                raise ConfigError("radius_km needs near=(lat, lon), the centre of the radius")
            return self._search_whole(q, k)
        return self._search_near(q, k, near, scope, radius_km)

    def search_text(self, texts: Sequence[str], k: int = 5, near: Any = None, scope: int | None = 100,
                    radius_km: float | None = None) -> SearchResult:
        return self.search_query(texts=texts, k=k, near=near, scope=scope, radius_km=radius_km)

    def search_query(self, texts: Sequence[str] | None = None, images: Sequence[str | Path] | None = None,
                     k: int = 5, near: Any = None, scope: int | None = 100,
                     radius_km: float | None = None) -> SearchResult:
        """:meth:`search` for queries embedded with the index's encoder (:func:`encode_queries`):
        texts, street-view image files, or one text and one image per query (fused)."""
        if self.encoder is None:
            raise ConfigError("this index has no encoder spec, so queries cannot be embedded; search with embeddings")
        return self.search(encode_queries(self.encoder, texts, images), k=k, near=near, scope=scope,
                           radius_km=radius_km)

    def _result(self, indices: np.ndarray, scores: np.ndarray, distance: np.ndarray | None = None) -> SearchResult:
        valid = indices >= 0
        safe = np.where(valid, indices, 0)
        names = [[self.names[j] if ok else "" for j, ok in zip(row, ok_row)] for row, ok_row in zip(safe, valid)]
        lat = np.where(valid, self.lat[safe], np.nan)
        lon = np.where(valid, self.lon[safe], np.nan)
        return SearchResult(indices, scores, names, lat, lon, distance)

    def _search_whole(self, q: np.ndarray, k: int) -> SearchResult:
        k = int(min(k, len(self)))
        if self.kind == "hnsw":
            self.faiss_index.hnsw.efSearch = max(self.params["ef_search"], k)
        elif self.kind == "ivf":
            self.faiss_index.nprobe = self.params["nprobe"]
        if self.compress == "pq":
            return self._result(*self._rerank(q, k))
        scores, indices = self.faiss_index.search(q, k)
        return self._result(indices.astype(np.int64), scores)

    def _rerank(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(indices, scores): FAISS's ``max(k, rerank)`` best by PQ codes, re-scored exactly as
        s_j = <q, g_j> with the stored embeddings, the top ``k`` of those (ties: PQ order)."""
        _, shortlist = self.faiss_index.search(q, int(min(max(k, self.params["rerank"]), len(self))))
        indices = np.empty((len(q), k), dtype=np.int64)
        scores = np.empty((len(q), k), dtype=np.float32)
        for start in range(0, len(q), 256):  # (256, shortlist, dim) floats at a time
            rows = slice(start, start + 256)
            found = shortlist[rows]
            exact = (self.embeddings[np.maximum(found, 0)] @ q[rows, :, None])[..., 0]
            exact[found < 0] = -np.inf
            best = np.argsort(-exact, axis=1, kind="stable")[:, :k]
            indices[rows] = np.take_along_axis(found, best, axis=1)
            scores[rows] = np.take_along_axis(exact, best, axis=1)
        return indices, scores

    def _measure_recall(self, unit: np.ndarray) -> None:
        """recall@10 of whole-gallery search against exact search over ``unit`` (the gallery as
        given, float32) on :func:`recall_queries`; while below ``RECALL_TARGET``, double nprobe
        (ivf, up to nlist; with pq also rerank, up to the gallery size) or ef_search (hnsw, up to
        ``EF_SEARCH_MAX``) and measure again. Sets ``recall_at_10``, ``recall_sample`` and the
        final parameters."""
        queries = recall_queries(unit)
        k = min(RECALL_K, len(self))
        truth = faiss.knn(queries, unit, k, metric=faiss.METRIC_INNER_PRODUCT)[1]
        caps = {"flat": {}, "hnsw": {"ef_search": EF_SEARCH_MAX}, "ivf": {"nprobe": self.params.get("nlist")}}
        caps = caps[self.kind] | ({"rerank": len(self)} if self.compress == "pq" else {})
        while True:
            recall = recall_at_k(self._search_whole(queries, k).indices, truth)
            if recall >= RECALL_TARGET or all(self.params[knob] >= cap for knob, cap in caps.items()):
                break
            self.params |= {knob: min(2 * self.params[knob], cap) for knob, cap in caps.items()}
        self.recall_at_10, self.recall_sample = recall, len(queries)

    def _search_near(self, q: np.ndarray, k: int, near: Any, scope: int | None,
                     radius_km: float | None = None) -> SearchResult:
        """Geo-scoped search: the ``scope`` tiles nearest to ``near`` (all when None) or, with
        ``radius_km``, every tile within that many km, found by a :class:`~geotextloc.eval.spatial.SpatialIndex`
        (built on first use), ranked by s_j descending (ties: nearer, then gallery order); ``k``
        columns, padded with index -1 and NaN where a radius holds fewer tiles."""
        if scope is not None and not (isinstance(scope, (int, np.integer)) and scope > 0):
            raise ConfigError(f"scope must be a positive integer or None, got {scope!r}")
        near = np.asarray(near, dtype=np.float64)
        near = np.broadcast_to(near, (len(q), 2)) if near.shape == (2,) else near
        if near.shape != (len(q), 2) or not (np.abs(near) <= [90.0, 180.0]).all():
            raise DataError(f"near must be (lat, lon) in degrees, one pair or one per query; got shape {near.shape}")
        k = int(min(k, len(self)))
        if self._spatial is None:
            self._spatial = SpatialIndex(self.lat, self.lon)
        if radius_km is not None:
            found = zip(*self._spatial.within(near[:, 0], near[:, 1], radius_km))
        else:
            scope = len(self) if scope is None else min(scope, len(self))
            k = min(k, scope)
            step = max(1, CANDIDATES_PER_CHUNK // scope)
            found = (pair for start in range(0, len(q), step)
                     for pair in zip(*self._spatial.nearest(near[start : start + step, 0],
                                                            near[start : start + step, 1], scope)))
        indices = np.full((len(q), k), -1, dtype=np.int64)
        scores = np.full((len(q), k), np.nan, dtype=np.float32)
        distance = np.full((len(q), k), np.nan, dtype=np.float64)
        for i, (tiles, km) in enumerate(found):  # tiles sorted by (distance, gallery index)
            sim = (self.embeddings @ q[i])[tiles] if len(tiles) == len(self) else self.embeddings[tiles] @ q[i]
            best = np.argsort(-sim, kind="stable")[:k]
            indices[i, : len(best)], scores[i, : len(best)], distance[i, : len(best)] = tiles[best], sim[best], km[best]
        return self._result(indices, scores, distance)

    # -- persistence

    def save(self, path: str | Path) -> Path:
        """Write the index folder: built next to ``path``, then renamed onto it (replacing an old index)."""
        path = Path(path)
        if path.exists() and not (path.is_dir() and ((path / FILES["meta"]).is_file() or not any(path.iterdir()))):
            raise GeotextlocError(f"{path}: exists and is not a gallery index; choose another folder or remove it")
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_dir(path) as tmp:
            np.save(tmp / FILES["embeddings"], self.embeddings.astype(STORED_DTYPE[self.compress]))
            lines = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in self.records)
            (tmp / FILES["records"]).write_text(lines, encoding="utf-8")
            faiss.write_index(self.faiss_index, str(tmp / FILES["index"]))
            meta = {"format": FORMAT, "kind": self.kind, "params": self.params, "dim": self.embeddings.shape[1],
                    "count": len(self), "encoder": self.encoder,
                    "sha256": {FILES[key]: file_sha256(tmp / FILES[key]) for key in ("embeddings", "records", "index")},
                    "compress": self.compress}
            if self.recall_at_10 is not None:
                meta |= {"recall_at_10": self.recall_at_10, "recall_sample": self.recall_sample}
            (tmp / FILES["meta"]).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> GalleryIndex:
        """Read an index folder, each file checked against ``meta.json`` (shapes, counts, and the
        sha256 of each file where the index recorded them, before FAISS parses a byte); anything
        missing, damaged or inconsistent is one DataError naming the folder."""
        path = Path(path)
        meta_file = path / FILES["meta"]
        if not meta_file.is_file():
            raise DataError(f"{path}: not a gallery index (no {FILES['meta']}); build one and save it there")
        try:
            meta = _read_meta(meta_file)
            digests = meta.get("sha256", {})
            for key in ("embeddings", "index"):  # the binary files, before they are parsed
                _verify(path / FILES[key], digests)
            embeddings = np.load(path / FILES["embeddings"], allow_pickle=False)
            if not isinstance(embeddings, np.ndarray):
                raise ValueError(f"{FILES['embeddings']} is not a single .npy array")
            dtype = STORED_DTYPE[meta["compress"]]
            if embeddings.dtype != dtype or embeddings.shape != (meta["count"], meta["dim"]):
                raise ValueError(f"{FILES['embeddings']} holds {embeddings.dtype} {embeddings.shape}, "
                                 f"{FILES['meta']} says {np.dtype(dtype)} ({meta['count']}, {meta['dim']})")
            records = _read_records(path / FILES["records"])
            try:
                index = faiss.read_index(str(path / FILES["index"]))  # already of its concrete class
            except RuntimeError:
                raise ValueError(f"{FILES['index']} is not a readable FAISS index") from None
            if not isinstance(index, KIND_CLASSES[meta["kind"], meta["compress"]]) or index.d != meta["dim"] \
                    or index.metric_type != faiss.METRIC_INNER_PRODUCT or not index.is_trained:
                raise ValueError(f"{FILES['index']} is not a trained {meta['kind']} ({meta['compress']}) "
                                 f"inner-product index of dim {meta['dim']}")
            if not (len(records) == len(embeddings) == index.ntotal == meta["count"]):
                raise ValueError(f"{len(records)} records, {len(embeddings)} embeddings, {index.ntotal} indexed")
            _verify(path / FILES["records"], digests)
            loaded = cls(embeddings, records, encoder=meta["encoder"], kind=meta["kind"], params=meta["params"],
                         compress=meta["compress"], _faiss_index=index)
            loaded.recall_at_10, loaded.recall_sample = meta.get("recall_at_10"), meta.get("recall_sample")
            return loaded
        except (OSError, EOFError, ValueError, RecursionError, GeotextlocError) as err:  # JSON, NumPy: ValueError
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise DataError(f"{path}: broken gallery index ({reason}); rebuild it") from None


KIND_CLASSES = {  # (kind, compress) -> the FAISS class built, and checked on load
    ("flat", "none"): faiss.IndexFlat, ("flat", "float16"): faiss.IndexScalarQuantizer,
    ("hnsw", "none"): faiss.IndexHNSWFlat, ("hnsw", "float16"): faiss.IndexHNSWSQ,
    ("ivf", "none"): faiss.IndexIVFFlat, ("ivf", "float16"): faiss.IndexIVFScalarQuantizer,
    ("ivf", "pq"): faiss.IndexIVFPQ,
}
STORED_DTYPE = {"none": np.float32, "float16": np.float16, "pq": np.float16}  # embeddings.npy


def _read_meta(file: Path) -> dict[str, Any]:
    """``meta.json``, every entry checked (ValueError naming the first bad one)."""
    meta = json.loads(file.read_text(encoding="utf-8"))
    if not isinstance(meta, dict):
        raise ValueError(f"{file.name} holds a JSON {type(meta).__name__}, not an object")
    if meta.get("format") != FORMAT:
        raise ValueError(f"format {meta.get('format')!r}, expected {FORMAT!r}")
    missing = [key for key in ("kind", "params", "dim", "count", "encoder") if key not in meta]
    if missing:
        raise ValueError(f"{file.name} has no {missing[0]!r}")
    kind, params, compress = meta["kind"], meta["params"], meta.setdefault("compress", "none")
    if kind not in DEFAULT_PARAMS:
        raise ValueError(f"unknown kind {kind!r} in {file.name}; expected one of {', '.join(DEFAULT_PARAMS)}")
    if compress not in COMPRESSIONS or (kind, compress) not in KIND_CLASSES:
        raise ValueError(f"compress={compress!r:.40} in {file.name}; expected one of {', '.join(COMPRESSIONS)} "
                         "(pq with kind ivf only)")
    if not isinstance(params, dict) or set(params) - set(_param_defaults(kind, compress)) or not all(
            v is None or (type(v) is int and v > 0) for v in params.values()):
        raise ValueError(f"bad params {params!r:.80} for kind {kind!r} in {file.name}")
    if ("recall_at_10" in meta) != ("recall_sample" in meta):
        raise ValueError(f"{file.name} has only one of recall_at_10 and recall_sample")
    recall, sample = meta.get("recall_at_10", 0.0), meta.get("recall_sample", 1)
    if type(recall) not in (int, float) or not 0.0 <= recall <= 1.0:
        raise ValueError(f"recall_at_10={recall!r:.40} in {file.name}; expected a number from 0 to 1")
    if type(sample) is not int or sample < 1:
        raise ValueError(f"recall_sample={sample!r:.40} in {file.name}; expected a positive integer")
    for key in ("dim", "count"):
        if type(meta[key]) is not int or meta[key] < 1:
            raise ValueError(f"{key}={meta[key]!r:.40} in {file.name}; expected a positive integer")
    encoder = meta["encoder"]
    if encoder is not None and not (isinstance(encoder, dict) and isinstance(encoder.get("kind"), str)):
        raise ValueError(f"encoder {encoder!r:.80} in {file.name} is not null or a spec with a 'kind'")
    digests = meta.get("sha256", {})
    if not isinstance(digests, dict) or not all(isinstance(v, str) for v in digests.values()):
        raise ValueError(f"bad sha256 entry in {file.name}")
    return meta


def _verify(file: Path, digests: Mapping[str, str]) -> None:
    """ValueError if ``file`` is missing or differs from the sha256 recorded for it (if any)."""
    if not file.is_file():
        raise ValueError(f"{file.name} is missing")
    if file.name in digests and file_sha256(file) != digests[file.name]:
        raise ValueError(f"{file.name} does not match the sha256 in {FILES['meta']} (damaged or replaced)")


def _read_records(file: Path) -> list[dict[str, Any]]:
    """The JSON objects of ``records.jsonl``, one per non-empty line (ValueError naming a bad line)."""
    records = []
    with open(file, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                raise ValueError(f"{file.name} line {number} is not JSON (truncated?)") from None
            if not isinstance(record, dict):
                raise ValueError(f"{file.name} line {number} is a JSON {type(record).__name__}, not an object")
            records.append(record)
    return records
