"""The ERM study over a test split (what notebook 05 reports): which queries are explained, the
top-5 re-ranking before and after per region, view and query group, how the true tile's rank
moved, what evidence the explainer found on the true tile, and where the relevance maps sit on
the map's layers (its own text against another place's).

Queries are grouped by release version (``{version: [Record]}``); each version's queries are
ranked in that version's gallery (one tile per name), and reports over several versions are
pooled query by query (:func:`merge_reports`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from geotextloc.data.release import parse_name
from geotextloc.eval.metrics import GROUPS, ProtocolReport
from geotextloc.explain import relevance
from geotextloc.explain.offline import OfflineExplainer, map_layers, mentioned_labels
from geotextloc.views import image_kind

NOT_FOUND = 10**6  # rank of a true tile outside the scope, for comparisons


def place_of(name: str) -> tuple[float, float]:
    """(lat, lon) of a release name: the panorama and single-view records of a place share it."""
    info = parse_name(name)
    return info.lat, info.lon


def sample_places(queries: Mapping[str, Sequence], n: int, rng: np.random.Generator) -> dict[str, list]:
    """Every query of ``max(1, n // 2)`` random places (drawn from all versions' places), per version:
    a place's panorama and single-view texts are chosen together."""
    places = sorted({place_of(r.name) for records in queries.values() for r in records})
    picked = rng.choice(len(places), size=min(len(places), max(1, n // 2)), replace=False)
    chosen = {places[i] for i in picked}
    return {v: [r for r in records if place_of(r.name) in chosen] for v, records in queries.items()}


def merge_reports(reports: Iterable[ProtocolReport]) -> ProtocolReport | None:
    """One report over several galleries' queries (rows in the given order); None for none."""
    reports = list(reports)
    if not reports:
        return None
    return ProtocolReport(pd.concat([r.table for r in reports], ignore_index=True), reports[0].scope)


def ranks(report: ProtocolReport | None) -> np.ndarray:
    """The true tile's rank per query, :data:`NOT_FOUND` outside the scope (float array)."""
    if report is None:
        return np.zeros(0)
    return report.table["rank"].astype("Float64").fillna(NOT_FOUND).to_numpy(dtype=float)


def in_top(report: ProtocolReport, queries: Mapping[str, Sequence], k: int = 5) -> dict[str, list]:
    """The queries whose true tile is within the top ``k`` of ``report`` (its rows follow the
    versions' queries in order): the only ones re-ranking the top k can change."""
    rank = ranks(report)
    records = [r for part in queries.values() for r in part]
    if len(records) != len(rank):
        raise ValueError(f"the report has {len(rank)} rows for {len(records)} queries")
    return {v: [r for r, x in zip(records, rank) if r.version == v and x <= k] for v in queries}


@dataclass
class RerankRun:
    """The ERM over one set of queries: ``splits`` {version: SplitExplanations}, the protocol
    ``before`` and ``after`` re-ranking (None without queries), seconds per query of the
    explainer (``explain_s``) and OCR runs of tiles not cached (``ocr_runs``)."""

    splits: dict
    queries: int
    wall_s: float
    before: ProtocolReport | None
    after: ProtocolReport | None
    explain_s: float
    ocr_runs: int


def rerank_run(model, preprocess, tokenizer, queries: Mapping[str, Sequence], galleries: Mapping[str, Sequence],
               view: str, explainer, logit_scale: float, heatmaps: bool = False) -> RerankRun:
    """Retrieve, explain and re-rank every query of ``queries`` in its version's gallery.

    ``heatmaps``: compute the relevance maps of the candidates (the LMM explainer reads them; the
    offline explainer does not)."""
    from geotextloc.explain.pipeline import explain_split

    ocr_before = getattr(explainer, "ocr_runs", 0)
    start = time.perf_counter()
    splits = {v: explain_split(model, preprocess, tokenizer, queries[v], galleries[v], view, explainer,
                               heatmaps=heatmaps, progress=False)
              for v in queries if queries[v]}
    reports = [s.evaluate(logit_scale=logit_scale, texts=[r.text for r in queries[v]]) for v, s in splits.items()]
    n = sum(len(queries[v]) for v in splits)
    explain_s = sum(s.seconds_per_query["explain"] * len(queries[v]) for v, s in splits.items()) / max(1, n)
    return RerankRun(splits, n, time.perf_counter() - start, merge_reports(r["before"] for r in reports),
                     merge_reports(r["after"] for r in reports), explain_s,
                     getattr(explainer, "ocr_runs", 0) - ocr_before)


def _hits(report: ProtocolReport | None, group: str) -> int:
    if report is None:
        return 0
    table = report.table
    rows = table if GROUPS[group] is None else table[table["view"] == GROUPS[group]]
    return int((rows["rank"] == 1).sum())


def rerank_table(runs: Mapping[tuple[str, str], RerankRun],
                 populations: Mapping[tuple[str, str], ProtocolReport]) -> pd.DataFrame:
    """R@1 before and after re-ranking per (region, view) and query group, over the population
    the explained queries came from (every test query, or the sample): n, queries explained,
    R@1 before/after, R@5 (the ceiling of top-5 re-ranking) and the change, in percent.

    Every hit of the population must be among the explained queries (else ValueError): R@1
    before is then the population's own R@1."""
    rows = []
    for key, run in runs.items():
        population = populations[key]
        summary = population.to_dict()
        for group in GROUPS:
            n = summary[group]["Count"]
            if n == 0:
                continue
            if _hits(run.before, group) != _hits(population, group):
                raise ValueError(f"{key} {group}: the explained queries do not hold every hit of the population")
            explained = 0 if run.before is None else int(
                (run.before.table["view"] == GROUPS[group]).sum() if GROUPS[group] else len(run.before.table))
            rows.append({"region": key[0], "view": key[1], "queries": group, "n": n, "explained": explained,
                         "R@1 before": 100 * _hits(run.before, group) / n,
                         "R@1 after": 100 * _hits(run.after, group) / n, "R@5 (ceiling)": summary[group]["R@5"]})
    table = pd.DataFrame(rows)
    table["change"] = table["R@1 after"] - table["R@1 before"]
    return table


def rank_moves(runs: Mapping[tuple[str, str], RerankRun]) -> pd.DataFrame:
    """How re-ranking moved the true tile, per (region, view): lifted to #1, lifted but not to
    #1, pushed down, and hits lost."""
    rows = []
    for (city, label), run in runs.items():
        if run.before is None:
            continue
        b, a = ranks(run.before), ranks(run.after)
        rows.append({"region": city, "view": label, "explained": len(b),
                     "truth lifted to #1": int(((a == 1) & (b != 1)).sum()),
                     "truth lifted, not to #1": int(((a < b) & (a != 1)).sum()),
                     "truth pushed down": int((a > b).sum()), "hits lost": int(((b == 1) & (a != 1)).sum())})
    return pd.DataFrame(rows).set_index(["region", "view"])


def truth_evidence(split, i: int) -> str:
    """What the explainer found on query ``i``'s true tile: a name, only a category (park,
    water, ...), nothing, or "truth not explained" (not among the candidates, or no answer)."""
    names = [split.gallery[j] for j in split.top[i]]
    explanation = split.explanations[i]
    if split.queries[i] not in names or explanation is None or explanation.status != "ok":
        return "truth not explained"
    candidates = sorted(explanation.candidates, key=lambda c: c.rank)
    evidence = candidates[names.index(split.queries[i])].evidence
    if any(x.startswith("name") for x in evidence):
        return "a name"
    return "only a category / park / water" if evidence else "nothing"


def evidence_outcomes(runs: Mapping[tuple[str, str], RerankRun]) -> pd.DataFrame:
    """One row per explained query: view, the evidence on its true tile (:func:`truth_evidence`)
    and whether re-ranking lifted, kept or pushed down its true tile."""
    rows = []
    for (_, label), run in runs.items():
        if run.before is None:
            continue
        found = [truth_evidence(split, i) for split in run.splits.values() for i in range(len(split.queries))]
        b, a = ranks(run.before), ranks(run.after)
        outcome = np.where(a < b, "lifted", np.where(a > b, "pushed down", "kept"))
        rows += [{"view": label, "on the true tile": f, "outcome": o} for f, o in zip(found, outcome)]
    return pd.DataFrame(rows, columns=["view", "on the true tile", "outcome"])


def relevance_lifts(model, preprocess, tokenizer, records: Sequence, texts: Sequence[str], view: str,
                    reader: OfflineExplainer, device: str = "cpu"):
    """(table, maps): the image relevance map of each record's ``view`` tile for ``texts`` (one
    per record) and its :func:`~geotextloc.explain.relevance.relevance_lift` on the layers of the
    record's OSM tile (roads, buildings, water, green, labels read by OCR, and the labels the
    record's *own* text names), one row per (record, layer)."""
    import torch

    from geotextloc.data.images import load_image

    kind = image_kind(view)
    images = torch.stack([preprocess(load_image(r.images[kind])) for r in records]).to(device)
    maps = relevance.relevance_maps(model, images, tokenizer(list(texts)).to(device))
    rows = []
    for record, heat in zip(records, maps.image.cpu().numpy()):
        labels, size = reader.read_labels(record.images["osm"])
        layers = map_layers(record.images["osm"], labels)
        named = mentioned_labels(record.text, labels, size)
        layers["label named in the text"] = map_layers(record.images["osm"], named)["label"]
        for layer, values in relevance.relevance_lift(heat, layers).items():
            rows.append({"name": record.name, "layer": layer, **values})
    return pd.DataFrame(rows), maps


def map_shift(own, other) -> float:
    """Mean total variation between two sets of image relevance maps (0: identical, 1: disjoint)."""
    p, q = (m.image_grid.flatten(1) / m.image_grid.flatten(1).sum(1, keepdim=True) for m in (own, other))
    return float(0.5 * (p - q).abs().sum(1).mean())
