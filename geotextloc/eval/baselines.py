"""Reference points for text -> tile retrieval on a version's test split: chance, and reading the map.

Both run the paper's protocol (:func:`geotextloc.eval.evaluate`) with the version's test tiles
as the gallery and its test texts as the queries:

- **chance**: similarities drawn uniformly at random. Its R@1 is about 1/min(scope, gallery);
  its L@m is the share of in-scope tiles within m metres, which says how dense the places are.
- **map labels**: pretend we could read every label on each OSM tile perfectly (the street
  and the named places inside the tile, from the embedded builder's scene facts:
  :func:`geotextloc.data.embedded.labels.place_labels`) and look for their words in the
  description. No training; it shows how much the *names* alone carry. The score of tile j
  for text i sums the weights of the words both share,

      s_ij = sum over w in words(labels_j) & words(text_i) of idf(w),   idf(w) = ln(N / df(w)),

  with df(w) the number of the N query texts that use w: words every description uses (a,
  the, street) weigh nothing, a shop name found in one description weighs most. (A plain
  bag of words lets one tile whose labels are full of common words, a bar called "Why join
  the navy when you can be a pirate", win most of Helsinki's queries.) Scores tie often
  and the protocol ranks ties nearest-first, i.e. the true tile first, so a jitter of
  1e-6 * U(0, 1) breaks ties at random.

Embedded datasets only (the map labels come from the builder's facts files).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from geotextloc.data.embedded.labels import place_labels
from geotextloc.eval.index import TOKEN
from geotextloc.eval.metrics import ProtocolReport, evaluate

BASELINES = ("chance", "map labels")
JITTER = 1e-6


def _rng(seed: int, *key: str) -> np.random.Generator:
    digest = hashlib.sha256(":".join((str(seed), *key)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "big"))


def chance(test: Sequence, scope: int | None = 100, seed: int = 0) -> ProtocolReport:
    """The protocol on random similarities; ``test``: the release records of one version's test split."""
    names = [r.name for r in test]
    similarity = _rng(seed, "chance", *{r.version for r in test}).random((len(names), len(names)))
    return evaluate(similarity, names, names, scope=scope, texts=[r.text for r in test])


def map_labels(test: Sequence, root: str | Path, scope: int | None = 100, seed: int = 0) -> ProtocolReport:
    """The protocol on label-reading scores: idf-weighted shared words of text and tile labels."""
    names = [r.name for r in test]
    texts = [set(TOKEN.findall(r.text.lower())) for r in test]
    labels = [set(TOKEN.findall(place_labels(root, r.city, r.name).lower())) for r in test]
    vocab = {w: k for k, w in enumerate(sorted(set().union(*labels)))}
    used = np.zeros((len(test), len(vocab)))
    for i, words in enumerate(texts):
        for w in words & vocab.keys():
            used[i, vocab[w]] = 1.0
    df = used.sum(axis=0)
    idf = np.log(len(test) / np.maximum(df, 1.0))
    printed = np.zeros((len(test), len(vocab)))
    for j, words in enumerate(labels):
        printed[j, [vocab[w] for w in words]] = 1.0
    jitter = JITTER * _rng(seed, "map labels", *{r.version for r in test}).random((len(names), len(names)))
    return evaluate((used * idf) @ printed.T + jitter, names, names, scope=scope, texts=[r.text for r in test])


def run_baselines(root: str | Path, versions: Sequence[str], scope: int | None = 100, seed: int = 0,
                  records: Sequence | None = None) -> dict[tuple[str, str], ProtocolReport]:
    """(baseline, version) -> report, for each version's test split (read from ``root`` unless
    ``records`` are given); versions without test records are left out."""
    if records is None:
        from geotextloc.data.release import read_release

        records = read_release(root, versions=list(versions), splits=("test",), check_images=False).records
    out = {}
    for version in versions:
        test = [r for r in records if r.version == version and r.split == "test"]
        if test:
            out[("chance", version)] = chance(test, scope, seed)
            out[("map labels", version)] = map_labels(test, root, scope, seed)
    return out


def summary(reports: dict[tuple[str, str], ProtocolReport], group: str = "overall") -> pd.DataFrame:
    """One row per (baseline, version): the protocol's metrics for ``group`` (overall, panorama, single_view)."""
    rows = {key: report.to_dict()[group] for key, report in reports.items()}
    frame = pd.DataFrame.from_dict(rows, orient="index")
    frame.index = pd.MultiIndex.from_tuples(list(rows), names=["baseline", "version"])
    return frame
