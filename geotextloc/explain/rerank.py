"""ERM confidence re-ranking of the top-k (k = 5) and its evaluation with the CVG-Text protocol.

For one query with top-k cosine similarities s_1 >= ... >= s_k and explainer confidences c_j:

    p_j = exp(t · s_j) / Σ_i exp(t · s_i)        (softmax over the top-k, t = the model's logit scale)
    ĉ_j = c_j / Σ_i c_i                          (a share of the total; 0 if all zero)
    score_j = p_j + λ · ĉ_j,   λ = ``weight`` (default 1.0)

and the top-k are re-ordered by score_j (descending, ties keep the retrieval order).

Why these choices: the paper says only that confidences are normalised and added to the
similarity scores. Both terms here are distributions over the same k candidates, so adding
them with λ = 1 weighs the retrieval model and the explainer equally: p is the model's own
belief (its learned temperature: t = ``model.logit_scale.exp()``, 100 for CLIP), so when the
model cannot tell the five apart (p ≈ 1/k each) the explainer decides, and when it is sure
(p_1 ≈ 1) the explainer needs strong evidence to overturn it. Dividing the confidences by
their sum keeps their proportions: an explainer equally unsure of all five changes nothing,
and 0.06 vs 0.05 stays a small difference. (Min-max scaling of the similarities was tried
first and dropped: it stretches near-equal similarities to a 0..1 spread, exactly when the
model is least sure, so the explainer could not move anything then.)

:func:`reranked_similarity` writes the new order into a copy of the similarity matrix by
permuting each query's top-k values among its top-k tiles: everything outside the top-k keeps
its value and rank, so :func:`geotextloc.eval.evaluate` measures the re-ranked retrieval
unchanged (:func:`evaluate_rerank`).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

from geotextloc.data.release import parse_name
from geotextloc.eval import metrics, spatial
from geotextloc.explain.schema import Explanation

TOP_K = 5
WEIGHT = 1.0
LOGIT_SCALE = 100.0  # CLIP's learned 1/τ; pass the model's own: model.logit_scale.exp()


def _numpy(similarity: Any) -> np.ndarray:
    """A float numpy array from a numpy array or a torch tensor (any device)."""
    if hasattr(similarity, "detach"):
        similarity = similarity.detach().float().cpu().numpy()
    array = np.asarray(similarity)
    return array if array.dtype.kind == "f" else array.astype(np.float64)


def rerank_scores(similarity: Sequence[float], confidence: Sequence[float],
                  weight: float = WEIGHT, logit_scale: float = LOGIT_SCALE) -> np.ndarray:
    """score_j = softmax(t · s)_j + λ · c_j / Σc  (module docstring)."""
    logits = logit_scale * np.asarray(similarity, dtype=np.float64)
    p = np.exp(logits - logits.max())
    p /= p.sum()
    c = np.clip(np.asarray(confidence, dtype=np.float64), 0.0, None)
    c_hat = c / c.sum() if c.sum() > 0 else np.zeros_like(c)
    return p + weight * c_hat


def rerank_order(similarity: Sequence[float], confidence: Sequence[float],
                 weight: float = WEIGHT, logit_scale: float = LOGIT_SCALE) -> np.ndarray:
    """Positions 0..k-1 of the top-k in their new order (a stable sort: ties keep the old one)."""
    return np.argsort(-rerank_scores(similarity, confidence, weight, logit_scale), kind="stable")


def top_candidates(similarity: Any, queries: Sequence[str], gallery: Sequence[str],
                   scope: int | None = 100, k: int = TOP_K, chunk: int = 1024) -> np.ndarray:
    """Gallery indices (Q, k) of each query's best k within its geo scope, best first,
    ranked exactly as :func:`geotextloc.eval.evaluate` ranks them."""
    sim = _numpy(similarity)
    g = [parse_name(n) for n in gallery]
    q = [parse_name(n) for n in queries]
    g_trig = spatial.half_angles([x.lat for x in g], [x.lon for x in g])
    q_trig = [t[:, None] for t in spatial.half_angles([x.lat for x in q], [x.lon for x in q])]
    out = []
    for start in range(0, len(queries), chunk):
        rows = slice(start, start + chunk)
        dist = spatial.haversine_from_half_angles(tuple(t[rows] for t in q_trig), g_trig)
        out.append(metrics.scoped_ranking(sim[rows], dist, scope)[:, :k])
    return np.concatenate(out) if out else np.zeros((0, k), dtype=np.int64)


def reranked_similarity(similarity: Any, top: np.ndarray,
                        confidences: Sequence[Sequence[float] | None],
                        weight: float = WEIGHT, logit_scale: float = LOGIT_SCALE) -> np.ndarray:
    """A copy of ``similarity`` where each query's top-k tiles (``top``, best first) carry
    their top-k values in the re-ranked order; rows with ``None`` confidences are unchanged."""
    new = np.array(_numpy(similarity), copy=True)
    for i, conf in enumerate(confidences):
        if conf is None:
            continue
        idx = top[i, : len(conf)]
        values = new[i, idx].copy()  # best first, as ranked
        order = rerank_order(values, conf, weight, logit_scale)
        new[i, idx[order]] = values  # the j-th re-ranked tile gets the j-th best value
    return new


def confidences_of(explanations: Sequence[Explanation | None]) -> list[list[float] | None]:
    """Confidences in rank order per query; None where there is no usable explanation."""
    return [e.confidences if e is not None else None for e in explanations]


def evaluate_rerank(similarity: Any, queries: Sequence[str], gallery: Sequence[str],
                    explanations: Sequence[Explanation | None], scope: int | None = 100,
                    weight: float = WEIGHT, texts: Sequence[str] | None = None,
                    top: np.ndarray | None = None, logit_scale: float = LOGIT_SCALE,
                    ) -> dict[str, metrics.ProtocolReport]:
    """Protocol reports ``{"before": ..., "after": ...}`` of retrieval and its ERM re-ranking.

    ``explanations[i]`` explains query i's top-k in the order of :func:`top_candidates`
    (pass that array as ``top`` if already computed).
    """
    if top is None:
        top = top_candidates(similarity, queries, gallery, scope)
    after = reranked_similarity(similarity, top, confidences_of(explanations), weight, logit_scale)
    return {"before": metrics.evaluate(similarity, queries, gallery, scope, texts),
            "after": metrics.evaluate(after, queries, gallery, scope, texts)}


def rerank_table(results: dict[tuple[str, str], dict[str, metrics.ProtocolReport]],
                 metric: str = "R@1") -> pd.DataFrame:
    """One row per (region, view, query group): ``metric`` before and after, and the change.

    ``results[(region, view)]`` is what :func:`evaluate_rerank` returned for that gallery.
    """
    rows = []
    for (region, view), reports in results.items():
        before, after = reports["before"].to_dict(), reports["after"].to_dict()
        for group in before:
            if before[group]["Count"] == 0:
                continue
            rows.append({"region": region, "view": view, "queries": group,
                         f"{metric} before": before[group][metric],
                         f"{metric} after": after[group][metric],
                         "change": after[group][metric] - before[group][metric],
                         "Count": before[group]["Count"]})
    return pd.DataFrame(rows)
