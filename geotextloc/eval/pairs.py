"""The CVG-Text protocol for models that score a (query text, candidate tile) pair jointly.

A single-stream model (ViLT) has no tile embedding to search with: it reads the text and the
tile together and gives one score s_ij = f(text_i, tile_j). BLIP has both: a dual encoder (ITC,
cosine c_ij) and a matching head (ITM) that reads the pair. Both are evaluated within the
protocol's scope, never against the whole gallery (:func:`evaluate_pairs`):

- **every candidate scored** (ViLT): the M = 100 tiles nearest to the query's true place are
  ranked by s_ij; equal scores keep the protocol's order (nearer first, then gallery order).
- **re-ranking the top k** (BLIP): the scope is ranked by the first stage c_ij, as
  :func:`~geotextloc.eval.metrics.evaluate_embeddings` ranks it; its first k candidates are
  scored by the second stage s_ij and put first, ordered by s_ij (equal s_ij: nearer first,
  then gallery order); the rest keep their first-stage order behind them.

Steps 3-4 (dedup, R@k, L@m, deviation) and the report are the protocol's
(:func:`~geotextloc.eval.metrics.evaluate_ranking`). :func:`evaluate_matching` runs either kind
of model on records: it tokenises each text once and keeps each tile's image state (the
vision tower's output the matching head reads) in a bounded cache, so a tile shared by nearby
queries is encoded once.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from contextlib import nullcontext

import numpy as np
import torch
from tqdm.auto import tqdm

from geotextloc.data.images import image_paths, load_image, one_per_name
from geotextloc.errors import ConfigError
from geotextloc.eval.metrics import ProtocolReport, evaluate_ranking, rank_by_score

PairScores = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (query rows, gallery indices) -> scores
STATE_CACHE_BYTES = 1 << 30  # image states kept at once (BLIP-B/384: 1.8 MB a tile; ViLT-B/32: 0.4 MB)


def evaluate_pairs(
    score_pairs: PairScores,
    queries: Sequence[str],
    gallery: Sequence[str],
    scope: int | None = 100,
    texts: Sequence[str] | None = None,
    first_stage: PairScores | None = None,
    k: int | None = None,
    chunk_size: int | None = None,
) -> ProtocolReport:
    """The protocol's report with candidates ranked by pair scores (module docstring).

    ``score_pairs(rows, cols)``: the scores of the pairs (query ``rows[p]``, gallery item
    ``cols[p]``), two 1-D arrays of equal length -> one score per pair, higher = better match.
    Without ``first_stage`` every candidate of the scope is scored. With ``first_stage`` (the same
    signature, e.g. a dual encoder's cosine) the scope is ranked by it and its first ``k``
    candidates are re-ranked by ``score_pairs`` (``k=0``: the first stage alone).
    """
    if first_stage is None and k is not None:
        raise ConfigError("k (candidates re-ranked) needs a first_stage that ranks the scope first")
    if k is not None and (isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0):
        raise ConfigError(f"k must be a non-negative integer (candidates re-ranked per query), got {k!r}")

    def scored(score: PairScores, rows: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        values = np.asarray(score(np.repeat(rows, candidates.shape[1]), candidates.ravel()), dtype=np.float64)
        return values.reshape(candidates.shape)

    def rank(rows: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        if first_stage is None:
            return rank_by_score(candidates, scored(score_pairs, rows, candidates))
        first = np.argsort(-scored(first_stage, rows, candidates), axis=1, kind="stable")  # positions, best first
        top = min(int(k or 0), candidates.shape[1])
        if top == 0:
            return np.take_along_axis(candidates, first, axis=1)
        head = np.sort(first[:, :top], axis=1)  # the first k back in candidate order: nearer first
        second = scored(score_pairs, rows, np.take_along_axis(candidates, head, axis=1))
        head = np.take_along_axis(head, np.argsort(-second, axis=1, kind="stable"), axis=1)
        return np.take_along_axis(candidates, np.concatenate([head, first[:, top:]], axis=1), axis=1)

    return evaluate_ranking(rank, queries, gallery, scope=scope, texts=texts, chunk_size=chunk_size)


class ImageStates:
    """``model.image_state`` of gallery tiles by index, computed in batches on demand and kept
    in a least-recently-used cache of at most ``max_bytes``."""

    def __init__(self, model, paths: Sequence, transform, batch_size: int = 64, max_bytes: int = STATE_CACHE_BYTES):
        self.model, self.paths, self.transform, self.batch_size = model, list(paths), transform, batch_size
        self.max_bytes, self.bytes = max_bytes, 0
        self.cache: OrderedDict[int, torch.Tensor] = OrderedDict()
        self.device = next(model.parameters()).device

    @torch.no_grad()
    def __call__(self, cols: np.ndarray) -> torch.Tensor:
        """The states of tiles ``cols`` (with repeats), stacked in that order."""
        wanted = list(dict.fromkeys(int(c) for c in cols))
        missing = [c for c in wanted if c not in self.cache]
        for start in range(0, len(missing), self.batch_size):
            batch = missing[start : start + self.batch_size]
            images = torch.stack([self.transform(load_image(self.paths[c])) for c in batch]).to(self.device)
            with autocast_for(self.device):
                states = self.model.image_state(images)
            for c, state in zip(batch, states):
                self.cache[c] = state
                self.bytes += state.numel() * state.element_size()
        for c in wanted:
            self.cache.move_to_end(c)
        out = torch.stack([self.cache[int(c)] for c in cols])
        keep = set(wanted)
        while self.bytes > self.max_bytes and len(self.cache) > len(keep):
            c, state = self.cache.popitem(last=False)
            self.bytes -= state.numel() * state.element_size()
        return out


def autocast_for(device: torch.device):
    """bf16 autocast on CUDA, nothing elsewhere (the evaluation paths of embed and pairs)."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def evaluate_matching(model, records: Sequence, view: str, transform, tokenizer, scope: int | None = 100,
                      batch_size: int = 64, progress: bool = True, first_stage: tuple | None = None,
                      k: int | None = None) -> ProtocolReport:
    """The protocol for a pair-scoring model on ``records`` (queries: their texts; gallery: their
    ``view`` tiles, one per place name), as :func:`geotextloc.eval.embed.evaluate_model` calls it.

    Pairs are scored by ``model.match(model.image_state(tiles), tokens)``: every candidate of the
    scope (ViLT), or, given ``first_stage`` = (query embeddings, gallery embeddings) of a dual
    encoder (BLIP's ITC, L2-normalised), the first ``k`` of the scope ranked by their cosine.
    """
    gallery = one_per_name(records)
    paths = image_paths(gallery, view)
    texts = [r.text for r in records]
    cosine = None
    if first_stage is not None:
        queries, tiles = (np.asarray(e, dtype=np.float32) for e in first_stage)

        def cosine(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
            return np.einsum("pd,pd->p", queries[rows], tiles[cols])

    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        tokens = tokenizer(texts)
        states = ImageStates(model, paths, transform, batch_size)
        per_query = min(len(gallery) if scope is None else scope, len(gallery), len(gallery) if k is None else k)
        bar = tqdm(total=len(records) * per_query, desc="score pairs", disable=not progress, leave=False)

        @torch.no_grad()
        def score_pairs(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
            out = np.empty(len(rows), dtype=np.float32)
            for start in range(0, len(rows), batch_size):
                part = slice(start, start + batch_size)
                with autocast_for(device):
                    scores = model.match(states(cols[part]), tokens[torch.as_tensor(rows[part])].to(device))
                out[part] = scores.float().cpu().numpy()
                bar.update(len(out[part]))
            return out

        report = evaluate_pairs(score_pairs, [r.name for r in records], [r.name for r in gallery], scope=scope,
                                texts=texts, first_stage=cosine, k=k)
        bar.close()
    finally:
        model.train(was_training)
    return report
