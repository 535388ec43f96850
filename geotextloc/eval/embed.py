"""Embedding with a model: gallery images, text queries, GeoBridge's views; and the CVG-Text
evaluation of a CrossText2Loc model on records.

Every embedding is float32, L2-normalised, on the CPU. On a CPU, a pretrained-towers model
(:mod:`geotextloc.models.stages`) is embedded through a per-process memo of its locked parts:
every run of a grid shares them, so each tile's stem feature maps and each text's pooled
output are computed once, keyed by a fingerprint of the weights that made them (a fine-tuned
stem or text tower gets its own entries). The result equals the model's own forward (the stem
maps are kept in float16).

Queries are texts, street views or both fused (:func:`embed_queries`, for the models of
:mod:`geotextloc.models.query`).

similarity[i, j] = cos(query_i, tile_j) = g_i . f_j; the protocol (geo-scoped ranking, R@k,
L@m, deviation) is :func:`geotextloc.eval.evaluate_embeddings`, which scores each query's
candidates only (no queries x gallery matrix).
Models that score (text, tile) pairs jointly (ViLT; BLIP's ITM re-ranking) are evaluated by
:mod:`geotextloc.eval.pairs` instead, within the same scope.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from geotextloc.data.images import Images, image_batches, image_paths, one_per_name
from geotextloc.eval.metrics import ProtocolReport, evaluate_embeddings
from geotextloc.eval.pairs import autocast_for, evaluate_matching
from geotextloc.models import stages
from geotextloc.errors import ConfigError
from geotextloc.views import GEOBRIDGE_VIEWS, STREET, TEXT

MEMO_STEM_STAGES = 5  # the stages the tiny profiles lock (train_last_k: 2 of 7)
MEMO_LIMIT = 200_000  # entries; the memo is cleared beyond this
_MEMO: dict = {}


@dataclass
class Embedded:
    """L2-normalised embeddings of one kind (a view or text) for the locations that have it."""

    names: list[str]
    vectors: np.ndarray  # (len(names), D) float32


def _fingerprint(modules) -> str:
    values = [t.detach().double().sum().item() for m in modules for t in [*m.parameters(), *m.buffers()]]
    return hashlib.sha256(json.dumps(values).encode()).hexdigest()[:16]


def _memoised(keys: list, compute) -> list:
    missing = [i for i, key in enumerate(keys) if key not in _MEMO]
    if missing:
        if len(_MEMO) + len(missing) > MEMO_LIMIT:
            _MEMO.clear()
            missing = list(range(len(keys)))
        for i, value in zip(missing, compute(missing)):
            _MEMO[keys[i]] = value
    return [_MEMO[key] for key in keys]


@torch.no_grad()
def embed_visual(visual, paths: Sequence[Path], transform, batch_size: int = 64, num_workers: int = 0,
                 progress: bool = True) -> torch.Tensor:
    """(N, D) features of the images at ``paths`` through one image tower (``model.visual`` or a
    GeoBridge view encoder); memoised for a towers image tower on the CPU."""
    paths = [Path(p) for p in paths]
    device = next(visual.parameters()).device
    if device.type == "cpu" and stages.towers_visual(visual):
        tag = ("image", _fingerprint(stages.stem_modules(visual, MEMO_STEM_STAGES)), repr(transform))
        keys = [(*tag, str(p), stat.st_size, stat.st_mtime_ns) for p, stat in ((p, p.stat()) for p in paths)]

        def compute(missing):
            todo = [paths[i] for i in missing]
            maps = stages.run_batches(lambda b: stages.image_stem(visual, b, MEMO_STEM_STAGES),
                                      image_batches(todo, transform, batch_size), "embed images",
                                      progress=progress, total=-(-len(todo) // batch_size))
            return list(maps.half())

        maps = torch.stack(_memoised(keys, compute))
        out = [stages.image_tail(visual, chunk.float(), MEMO_STEM_STAGES) for chunk in maps.split(batch_size)]
        return F.normalize(torch.cat(out), dim=-1)
    loader = DataLoader(Images(paths, transform), batch_size=batch_size, num_workers=num_workers)
    out = []
    for images in tqdm(loader, desc="embed images", disable=not progress, leave=False):
        with autocast_for(device):
            out.append(F.normalize(visual(images.to(device)).float(), dim=-1).cpu())
    return torch.cat(out)


@torch.no_grad()
def embed_images(model, paths: Sequence[Path], transform, batch_size: int = 64, num_workers: int = 0,
                 progress: bool = True) -> torch.Tensor:
    """(N, D) image features of a CLIP-style ``model`` (``model.visual``)."""
    if getattr(model, "single_stream", False):
        raise ConfigError(f"{type(model).__name__} scores (text, tile) pairs and has no tile embeddings to index "
                          "or search; evaluate it with geotextloc evaluate (every pair of the scope is scored)")
    return embed_visual(model.visual, paths, transform, batch_size, num_workers, progress)


@torch.no_grad()
def embed_texts(model, texts: Sequence[str], tokenizer, batch_size: int = 64, progress: bool = True) -> torch.Tensor:
    """(N, D) text features of a CLIP-style ``model`` (``encode_text``)."""
    texts = list(texts)
    device = next(model.parameters()).device
    if device.type == "cpu" and stages.towers_model(model):
        tag = ("text", _fingerprint([model.text.transformer]), model.text.context_length)

        def compute(missing):
            tokens = tokenizer([texts[i] for i in missing])
            return list(stages.pooled_by_length(model, tokens, batch_size, progress=progress, desc="embed texts"))

        pooled = torch.stack(_memoised([(*tag, text) for text in texts], compute))
        return F.normalize(model.text.proj(pooled), dim=-1)
    out = []
    for start in tqdm(range(0, len(texts), batch_size), desc="embed texts", disable=not progress, leave=False):
        tokens = tokenizer(texts[start : start + batch_size]).to(device)
        with autocast_for(device):
            out.append(model.encode_text(tokens, normalize=True).float().cpu())
    return torch.cat(out)


@torch.no_grad()
def embed_records(bridge, records: Sequence, transforms, tokenizer, kinds: Sequence[str] = (*GEOBRIDGE_VIEWS, TEXT),
                  batch_size: int = 64, num_workers: int = 0, progress: bool = True) -> dict[str, Embedded]:
    """Each record's views (with GeoBridge's E_d, E_p, E_s) and text (E_t), for the kinds asked.

    ``transforms``: view -> image transform; records lacking a kind are left out of that kind.
    """
    was_training = bridge.training
    bridge.eval()
    out: dict[str, Embedded] = {}
    try:
        for kind in kinds:
            chosen = [r for r in records if (getattr(r, "text", None) if kind == TEXT else kind in r.images)]
            if not chosen:
                continue
            if kind == TEXT:
                features = embed_texts(bridge.text, [r.text for r in chosen], tokenizer, batch_size, progress)
            else:
                features = embed_visual(bridge.encoders[kind], [r.images[kind] for r in chosen],
                                        transforms[kind], batch_size, num_workers, progress)
            out[kind] = Embedded([r.name for r in chosen], features.float().numpy())
    finally:
        bridge.train(was_training)
    return out


@torch.no_grad()
def embed_queries(model, records: Sequence, query: str, tokenizer, batch_size: int = 64, num_workers: int = 0,
                  progress: bool = True) -> torch.Tensor:
    """(N, D) query embeddings of ``records``: their texts (``query="text"``), their street views
    through ``model.street`` (``street``), or both fused by ``model.fuse`` (``fusion``; a
    :class:`~geotextloc.models.query.QueryModel`)."""
    if query == TEXT:
        return embed_texts(model, [r.text for r in records], tokenizer, batch_size, progress)
    from geotextloc.models.query import street_transform

    if getattr(model, "street", None) is None or (query == "fusion" and getattr(model, "fuse", None) is None):
        raise ConfigError(f"{query} queries need a model trained for them (query: {query}); this one embeds texts")
    street = embed_visual(model.street, image_paths(records, STREET), street_transform(model.street), batch_size,
                          num_workers, progress)
    if query == STREET:
        return street
    text = embed_texts(model, [r.text for r in records], tokenizer, batch_size, progress)
    device = next(model.parameters()).device
    return model.fuse(text.to(device), street.to(device)).float().cpu()


def evaluate_model(
    model, records: Sequence, view: str, transform, tokenizer,
    scope: int | None = 100, batch_size: int = 64, num_workers: int = 0, progress: bool = True,
    query: str = TEXT,
) -> ProtocolReport:
    """The protocol's report for ``records`` (queries: their texts, street views or both fused, as
    ``query`` says (:func:`embed_queries`); gallery: their ``view`` tiles, one per place name).

    A model that scores (text, tile) pairs jointly is evaluated on text queries within the same
    scope by :func:`geotextloc.eval.pairs.evaluate_matching`: ViLT (``model.single_stream``) scores
    every candidate; BLIP (``model.rerank_k > 0``) is ranked by these embeddings, then its ITM
    head re-ranks the first ``rerank_k`` of each query's scope.
    """
    single, rerank = getattr(model, "single_stream", False), int(getattr(model, "rerank_k", 0) or 0)
    if (single or rerank) and query != TEXT:
        raise ConfigError(f"query={query!r}: {type(model).__name__} scores (text, tile) pairs; use query: text")
    if single:
        return evaluate_matching(model, records, view, transform, tokenizer, scope=scope, batch_size=batch_size,
                                 progress=progress)
    gallery = one_per_name(records)
    was_training = model.training
    model.eval()
    try:
        tiles = embed_images(model, image_paths(gallery, view), transform, batch_size, num_workers, progress)
        queries = embed_queries(model, records, query, tokenizer, batch_size, num_workers, progress)
    finally:
        model.train(was_training)
    if rerank:
        return evaluate_matching(model, records, view, transform, tokenizer, scope=scope, batch_size=batch_size,
                                 progress=progress, first_stage=(queries.numpy(), tiles.numpy()), k=rerank)
    return evaluate_embeddings(queries, tiles, [r.name for r in records], [r.name for r in gallery],
                               scope=scope, texts=[r.text for r in records])
