"""FAISS gallery index: the gallery tiles' embeddings with their records, searched by text.

Similarity is cosine: gallery embeddings g_j and a query embedding q are L2-normalised, so
s_j = <q, g_j>. Whole-gallery search (``near=None``) uses the FAISS index of ``kind``:

- ``flat``: ``IndexFlatIP``, exact;
- ``hnsw``: ``IndexHNSWFlat(dim, m, METRIC_INNER_PRODUCT)``, approximate (``m``, ``ef_construction``,
  ``ef_search``);
- ``ivf``: ``IndexIVFFlat`` over an ``IndexFlatIP`` quantizer, approximate (``nlist``, ``nprobe``).

Geo-scoped search (``near=(lat, lon)``) follows the protocol's candidate rule
(:func:`geotextloc.eval.metrics.scoped_ranking`): the ``scope`` tiles nearest to ``near`` by
haversine (ties in gallery order), ranked by s_j descending (ties: nearer, then gallery order),
with exact dot products whatever the kind.

Query texts are embedded with the index's ``encoder`` spec, written by whoever builds the
index: ``{"kind": "hashing-bow", "dim": 4096, "ngram": 1}`` (built in, below) or
``{"kind": "open_clip", "checkpoint": PATH}`` (+ optional ``model``, ``context_length``; through
``geotextloc.models.factory.from_checkpoint``).

On disk, a folder (written to a temporary sibling, then renamed into place)::

    meta.json        format, kind, params, dim, count, encoder, sha256 (of the three files below)
    embeddings.npy   float32 (count x dim), L2-normalised
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

from geotextloc.data.release import parse_name
from geotextloc.errors import ConfigError, DataError, GeotextlocError
from geotextloc.files import atomic_dir, file_sha256
from geotextloc.eval.metrics import PAIRS_PER_CHUNK, half_angles, haversine_from_half_angles, scoped_ranking

FORMAT = "geotextloc-gallery-index/1"
FILES = {"meta": "meta.json", "embeddings": "embeddings.npy", "records": "records.jsonl", "index": "index.faiss"}
DEFAULT_PARAMS = {
    "flat": {},
    "hnsw": {"m": 32, "ef_construction": 200, "ef_search": 128},
    "ivf": {"nlist": None, "nprobe": 16},  # nlist None: about 4 sqrt(count)
}
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


def _open_clip_texts(spec: Mapping[str, Any], texts: Sequence[str]) -> np.ndarray:
    """Text embeddings from a checkpoint via ``geotextloc.models.factory.from_checkpoint``.

    ``spec``: ``checkpoint`` (a .pt file), optional ``model`` (open_clip name, for a bare state
    dict) and ``context_length``; our training checkpoints carry their own config.
    """
    if "checkpoint" not in spec:
        raise ConfigError(f"encoder spec {dict(spec)} needs a 'checkpoint' file for kind 'open_clip'")
    try:
        from geotextloc.models import factory
    except ImportError as err:
        raise GeotextlocError(
            f"encoder 'open_clip' needs geotextloc.models.factory, which cannot be imported ({err}); "
            "update geotextloc or rebuild the index with a 'hashing-bow' encoder"
        ) from None
    import torch

    model, _, _, tokenizer, _ = factory.from_checkpoint(
        str(spec["checkpoint"]), name=spec.get("model"), context_length=spec.get("context_length")
    )
    model.eval()
    with torch.no_grad():
        features = [model.encode_text(tokenizer(list(texts[i : i + 64]))) for i in range(0, len(texts), 64)]
    return l2_normalise(torch.cat(features).float().cpu().numpy())


def encode_texts(spec: Mapping[str, Any], texts: Sequence[str]) -> np.ndarray:
    """Embed query texts as the encoder ``spec`` says; returns L2-normalised float32 rows."""
    options = {key: value for key, value in spec.items() if key != "kind"}
    if spec.get("kind") == "hashing-bow":
        unknown = set(options) - {"dim", "ngram"}
        if unknown:
            raise ConfigError(f"hashing-bow encoder: unknown option(s) {sorted(unknown)}; use dim, ngram")
        return hashing_bow(texts, **options)
    if spec.get("kind") == "open_clip":
        return _open_clip_texts(spec, texts)
    raise ConfigError(f"unknown encoder kind {spec.get('kind')!r}; expected 'hashing-bow' or 'open_clip'")


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


def _build_faiss(embeddings: np.ndarray, kind: str, params: dict[str, Any]) -> faiss.Index:
    n, dim = embeddings.shape
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, params["m"], faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = params["ef_construction"]
    else:
        nlist = params["nlist"] or max(1, min(int(4 * np.sqrt(n)), n // 39 or 1))
        if not 1 <= nlist <= n:
            raise ConfigError(f"ivf nlist must be between 1 and the gallery size {n}, got {nlist}")
        params["nlist"] = nlist
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(embeddings)
    index.add(embeddings)
    return index


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
        _faiss_index: faiss.Index | None = None,
    ):
        if kind not in DEFAULT_PARAMS:
            raise ConfigError(f"unknown index kind {kind!r}; choose one of {', '.join(DEFAULT_PARAMS)}")
        unknown = set(params or {}) - set(DEFAULT_PARAMS[kind])
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
        self.embeddings = l2_normalise(embeddings)
        self.lat = np.array([r["lat"] for r in self.records], dtype=np.float64)
        self.lon = np.array([r["lon"] for r in self.records], dtype=np.float64)
        self._trig = half_angles(self.lat, self.lon)
        self.encoder = dict(encoder) if encoder is not None else None
        self.kind = kind
        self.params = {**DEFAULT_PARAMS[kind], **(params or {})}
        self.faiss_index = _build_faiss(self.embeddings, kind, self.params) if _faiss_index is None else _faiss_index

    @classmethod
    def from_texts(cls, records, texts: Sequence[str], encoder: Mapping[str, Any] | None = None, **kwargs):
        """An index whose gallery embeddings are ``encode_texts(encoder, texts)`` (default hashing-bow)."""
        encoder = dict(encoder or {"kind": "hashing-bow", "dim": 4096, "ngram": 1})
        return cls(encode_texts(encoder, texts), records, encoder=encoder, **kwargs)

    def __len__(self) -> int:
        return len(self.records)

    # -- search

    def search(self, queries: Any, k: int = 5, near: Any = None, scope: int | None = 100) -> SearchResult:
        """Top-``k`` gallery items per query embedding (rows are L2-normalised here).

        ``near``: None (whole gallery, FAISS), one (lat, lon) for all queries, or one per query.
        """
        q = l2_normalise(np.atleast_2d(np.asarray(queries, dtype=np.float32)))
        if q.shape[1] != self.embeddings.shape[1]:
            raise DataError(f"query embeddings have dim {q.shape[1]}, the index has {self.embeddings.shape[1]}")
        if not (isinstance(k, (int, np.integer)) and k > 0):
            raise ConfigError(f"k must be a positive integer, got {k!r}")
        if near is None:
            return self._search_whole(q, k)
        return self._search_near(q, k, near, scope)

    def search_text(self, texts: Sequence[str], k: int = 5, near: Any = None, scope: int | None = 100) -> SearchResult:
        if self.encoder is None:
            raise ConfigError("this index has no encoder spec, so texts cannot be embedded; search with embeddings")
        return self.search(encode_texts(self.encoder, list(texts)), k=k, near=near, scope=scope)

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
        scores, indices = self.faiss_index.search(q, k)
        return self._result(indices.astype(np.int64), scores)

    def _search_near(self, q: np.ndarray, k: int, near: Any, scope: int | None) -> SearchResult:
        if scope is not None and not (isinstance(scope, (int, np.integer)) and scope > 0):
            raise ConfigError(f"scope must be a positive integer or None, got {scope!r}")
        near = np.asarray(near, dtype=np.float64)
        near = np.broadcast_to(near, (len(q), 2)) if near.shape == (2,) else near
        if near.shape != (len(q), 2) or not (np.abs(near) <= [90.0, 180.0]).all():
            raise DataError(f"near must be (lat, lon) in degrees, one pair or one per query; got shape {near.shape}")
        k = int(min(k, len(self) if scope is None else min(scope, len(self))))
        trig = [t[:, None] for t in half_angles(near[:, 0], near[:, 1])]
        indices = np.empty((len(q), k), dtype=np.int64)
        scores = np.empty((len(q), k), dtype=np.float32)
        distance = np.empty((len(q), k), dtype=np.float64)
        chunk = max(1, PAIRS_PER_CHUNK // len(self))
        for start in range(0, len(q), chunk):
            rows = slice(start, start + chunk)
            dist = haversine_from_half_angles(tuple(t[rows] for t in trig), self._trig)
            sim = q[rows] @ self.embeddings.T
            ranked = scoped_ranking(sim, dist, scope)[:, :k]
            indices[rows] = ranked
            scores[rows] = np.take_along_axis(sim, ranked, axis=1)
            distance[rows] = np.take_along_axis(dist, ranked, axis=1)
        return self._result(indices, scores, distance)

    # -- persistence

    def save(self, path: str | Path) -> Path:
        """Write the index folder: built next to ``path``, then renamed onto it (replacing an old index)."""
        path = Path(path)
        if path.exists() and not (path.is_dir() and ((path / FILES["meta"]).is_file() or not any(path.iterdir()))):
            raise GeotextlocError(f"{path}: exists and is not a gallery index; choose another folder or remove it")
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_dir(path) as tmp:
            np.save(tmp / FILES["embeddings"], self.embeddings)
            lines = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in self.records)
            (tmp / FILES["records"]).write_text(lines, encoding="utf-8")
            faiss.write_index(self.faiss_index, str(tmp / FILES["index"]))
            meta = {"format": FORMAT, "kind": self.kind, "params": self.params, "dim": self.embeddings.shape[1],
                    "count": len(self), "encoder": self.encoder,
                    "sha256": {FILES[key]: file_sha256(tmp / FILES[key]) for key in ("embeddings", "records", "index")}}
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
            if embeddings.dtype != np.float32 or embeddings.shape != (meta["count"], meta["dim"]):
                raise ValueError(f"{FILES['embeddings']} holds {embeddings.dtype} {embeddings.shape}, "
                                 f"{FILES['meta']} says float32 ({meta['count']}, {meta['dim']})")
            records = _read_records(path / FILES["records"])
            try:
                index = faiss.read_index(str(path / FILES["index"]))  # already of its concrete class
            except RuntimeError:
                raise ValueError(f"{FILES['index']} is not a readable FAISS index") from None
            if not isinstance(index, KIND_CLASSES[meta["kind"]]) or index.d != meta["dim"] \
                    or index.metric_type != faiss.METRIC_INNER_PRODUCT or not index.is_trained:
                raise ValueError(f"{FILES['index']} is not a trained {meta['kind']} inner-product index "
                                 f"of dim {meta['dim']}")
            if not (len(records) == len(embeddings) == index.ntotal == meta["count"]):
                raise ValueError(f"{len(records)} records, {len(embeddings)} embeddings, {index.ntotal} indexed")
            _verify(path / FILES["records"], digests)
            return cls(embeddings, records, encoder=meta["encoder"], kind=meta["kind"], params=meta["params"],
                       _faiss_index=index)
        except (OSError, EOFError, ValueError, RecursionError, GeotextlocError) as err:  # JSON, NumPy: ValueError
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise DataError(f"{path}: broken gallery index ({reason}); rebuild it") from None


KIND_CLASSES = {"flat": faiss.IndexFlat, "hnsw": faiss.IndexHNSWFlat, "ivf": faiss.IndexIVFFlat}


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
    kind, params = meta["kind"], meta["params"]
    if kind not in DEFAULT_PARAMS:
        raise ValueError(f"unknown kind {kind!r} in {file.name}; expected one of {', '.join(DEFAULT_PARAMS)}")
    if not isinstance(params, dict) or set(params) - set(DEFAULT_PARAMS[kind]) or not all(
            v is None or (type(v) is int and v > 0) for v in params.values()):
        raise ValueError(f"bad params {params!r:.80} for kind {kind!r} in {file.name}")
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
