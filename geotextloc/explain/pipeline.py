"""One query through the whole ERM: retrieve the top-k, relevance maps, explanation, re-rank.

    result = explain_query(model, preprocess, tokenizer, text, gallery, features, "osm",
                           OfflineExplainer())
    save(result, "out/")   # top5.png, query_relevance.png, heatmaps/*.png, explanation.json

``gallery`` are release records (anything with ``name``, ``lat``, ``lon``, ``images``);
``features`` their L2-normalised image embeddings (:func:`geotextloc.eval.embed.embed_images`).
The candidates are the k most similar tiles within the ``scope`` nearest to ``near``
(the protocol's geo scope), or in the whole gallery when ``near`` is None.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from geotextloc import viz
from geotextloc.files import atomic_path, atomic_write_text
from geotextloc.explain import relevance, rerank
from geotextloc.explain.schema import Candidate, Explanation
from geotextloc.data.images import load_image
from geotextloc.views import image_kind


@dataclass
class QueryExplanation:
    text: str
    view: str
    candidates: list[dict[str, Any]]  # name, lat, lon, image, osm, score, heatmap, confidence, new_rank
    explanation: Explanation
    words: list[tuple[str, float | None]]  # the text's words with their relevance
    truth: dict[str, Any] | None = None  # name, image, rank (None when outside the scope)
    weight: float = rerank.WEIGHT
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        cands = [{k: (str(v) if isinstance(v, Path) else v) for k, v in c.items()
                  if k not in ("heatmap", "image", "osm")} for c in self.candidates]
        return {"query": self.text, "view": self.view, "truth": _plain(self.truth),
                "candidates": cands, "rerank_weight": self.weight,
                "explanation": self.explanation.to_dict(),
                "words": [{"word": w, "relevance": r} for w, r in self.words],
                "seconds": self.seconds}


def _plain(truth):
    return None if truth is None else {k: str(v) if isinstance(v, Path) else v
                                       for k, v in truth.items() if k != "heatmap"}


def candidate_indices(similarity: np.ndarray, gallery: Sequence, k: int, scope: int | None,
                      near: tuple[float, float] | None) -> np.ndarray:
    """Gallery indices of the best k, ranked as the protocol ranks them (geo scope around near)."""
    if near is None or scope is None:
        return np.argsort(-similarity, kind="stable")[:k]
    query = f"{near[0]:.8f},{near[1]:.8f}_query"  # a release-style name carrying the coordinates
    return rerank.top_candidates(similarity[None], [query], [g.name for g in gallery], scope, k)[0]


@torch.no_grad()
def _embed_text(model, tokens) -> torch.Tensor:
    return model.encode_text(tokens, normalize=True).float().cpu()


def explain_query(model, preprocess, tokenizer, text: str, gallery: Sequence, features: torch.Tensor,
                  view: str, explainer, k: int = 5, scope: int | None = 100,
                  near: tuple[float, float] | None = None, truth: str | None = None,
                  start_layer: int = -1, weight: float = rerank.WEIGHT) -> QueryExplanation:
    """Retrieve, map, explain and re-rank one query (module docstring)."""
    kind = image_kind(view)
    device = next(model.parameters()).device
    tokens = tokenizer([text]).to(device)
    seconds = {}
    start = time.perf_counter()
    similarity = (_embed_text(model, tokens) @ features.T)[0].numpy()
    top = candidate_indices(similarity, gallery, k, scope, near)
    seconds["retrieve"] = time.perf_counter() - start

    names = [g.name for g in gallery]
    truth_index = names.index(truth) if truth in names else None
    shown = list(top) + ([truth_index] if truth_index is not None and truth_index not in top else [])
    start = time.perf_counter()
    images = torch.stack([preprocess(load_image(gallery[i].images[kind])) for i in shown]).to(device)
    maps = relevance.relevance_maps(model, images, tokens.expand(len(shown), -1), start_layer,
                                    text_map=False)
    top1 = relevance.relevance_maps(model, images[:1], tokens, start_layer)  # words: for the top-1 tile
    words = relevance.word_relevance(text, tokens[0].cpu(), top1.text[0].cpu(), tokenizer)
    seconds["relevance_maps"] = time.perf_counter() - start

    candidates = [{"name": gallery[i].name, "lat": gallery[i].lat, "lon": gallery[i].lon,
                   "image": gallery[i].images[kind], "osm": gallery[i].images.get("osm"),
                   "score": float(similarity[i]), "heatmap": maps.image[j].cpu().numpy()}
                  for j, i in enumerate(top)]
    start = time.perf_counter()
    explanation = explainer.explain(text, [
        Candidate(c["name"], c["image"], c["score"], c["heatmap"], c["osm"]) for c in candidates])
    seconds["explain"] = time.perf_counter() - start
    confidences = explanation.confidences
    logit_scale = (float(model.logit_scale.detach().exp()) if hasattr(model, "logit_scale")
                   else rerank.LOGIT_SCALE)
    order = (rerank.rerank_order([c["score"] for c in candidates], confidences, weight, logit_scale)
             if confidences is not None else np.arange(len(candidates)))
    for new_rank, j in enumerate(order, start=1):
        candidates[j]["new_rank"] = new_rank
    for c, e in zip(candidates, sorted(explanation.candidates, key=lambda e: e.rank)):
        c["confidence"], c["rationale"] = e.confidence, e.rationale

    truth_info = None
    if truth is not None:
        ranked = np.asarray(names, dtype=object)[
            candidate_indices(similarity, gallery, len(gallery), scope, near)]
        hits = np.nonzero(ranked == truth)[0]
        extra = truth_index is not None and truth_index not in top
        truth_info = {"name": truth, "rank": int(hits[0]) + 1 if len(hits) else None,
                      "image": gallery[truth_index].images[kind] if truth_index is not None else None,
                      "heatmap": maps.image[-1].cpu().numpy() if extra else None}
    return QueryExplanation(text, view, candidates, explanation, words, truth_info, weight, seconds)


@dataclass
class SplitExplanations:
    """Every query of a split explained: what :func:`rerank.evaluate_rerank` needs."""

    similarity: np.ndarray  # (queries, gallery)
    queries: list[str]
    gallery: list[str]
    top: np.ndarray  # (queries, k) gallery indices, the protocol's order
    explanations: list[Explanation]
    seconds_per_query: dict[str, float]

    def evaluate(self, scope: int | None = 100, weight: float = rerank.WEIGHT,
                 logit_scale: float = rerank.LOGIT_SCALE, texts=None):
        return rerank.evaluate_rerank(self.similarity, self.queries, self.gallery,
                                      self.explanations, scope, weight, texts, self.top, logit_scale)


def explain_split(model, preprocess, tokenizer, records: Sequence, gallery: Sequence, view: str,
                  explainer, k: int = 5, scope: int | None = 100, heatmaps: bool = True,
                  start_layer: int = -1, batch_size: int = 64, progress: bool = True,
                  ) -> SplitExplanations:
    """Retrieve the top-k of every record's text within its geo scope and explain them.

    ``heatmaps=False`` skips the relevance maps (the offline explainer does not use them).
    """
    from tqdm.auto import tqdm

    from geotextloc.data.images import image_paths
    from geotextloc.eval.embed import embed_images, embed_texts

    kind = image_kind(view)
    model.eval()
    features = embed_images(model, image_paths(gallery, view), preprocess, batch_size, progress=progress)
    texts = [r.text for r in records]
    similarity = (embed_texts(model, texts, tokenizer, batch_size, progress=progress) @ features.T).numpy()
    queries, names = [r.name for r in records], [g.name for g in gallery]
    top = rerank.top_candidates(similarity, queries, names, scope, k)
    explanations, t_maps, t_explain = [], 0.0, 0.0
    for i, record in enumerate(tqdm(records, desc=f"explain ({explainer.name})", disable=not progress)):
        cands = [gallery[j] for j in top[i]]
        maps = None
        start = time.perf_counter()
        if heatmaps:
            images = torch.stack([preprocess(load_image(c.images[kind])) for c in cands])
            tokens = tokenizer([record.text]).expand(len(cands), -1)
            device = next(model.parameters()).device
            maps = relevance.relevance_maps(model, images.to(device), tokens.to(device), start_layer,
                                            text_map=False)  # the explainers use the image maps only
        t_maps += time.perf_counter() - start
        start = time.perf_counter()
        explanations.append(explainer.explain(record.text, [
            Candidate(c.name, c.images[kind], float(similarity[i, j]),
                      maps.image[n].cpu().numpy() if maps is not None else None, c.images.get("osm"))
            for n, (c, j) in enumerate(zip(cands, top[i]))]))
        t_explain += time.perf_counter() - start
    n = max(1, len(records))
    return SplitExplanations(similarity, queries, names, top, explanations,
                             {"relevance_maps": t_maps / n, "explain": t_explain / n})


def save(result: QueryExplanation, out_dir: str | Path, dpi: int = 100) -> list[Path]:
    """Write the figures and the JSON of ``result`` under ``out_dir``; returns the paths."""
    out = Path(out_dir)
    written = []

    def figure(fig, path: Path):
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi)
        written.append(path)

    truth = result.truth if result.truth and result.truth.get("image") else None
    figure(viz.top5_figure(result.words, result.candidates, truth), out / "top5.png")
    with atomic_path(out / "query_relevance.png") as tmp:
        viz.words_image(result.words, title="Query: words by relevance").save(tmp, format="PNG")
    written.append(out / "query_relevance.png")
    for rank, c in enumerate(result.candidates, start=1):
        path = out / "heatmaps" / f"{rank}.png"
        with atomic_path(path) as tmp:
            viz.overlay_heatmap(c["image"], c["heatmap"]).save(tmp, format="PNG")
        written.append(path)
    atomic_write_text(out / "explanation.json",
                      json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
    written.append(out / "explanation.json")
    return written
