"""Text statistics measured the way CVG-Text reports them, per city (or any grouping).

CVG-Text reports a mean length of 126 tokens, a type-token ratio of 0.76 and a mean
inter-text similarity of 0.17 (:data:`PAPER`). Here, per group of texts:

- ``mean_tokens``, ``median_tokens``: CLIP tokens of the untruncated text, start and end
  tokens included, counted with open_clip's CLIP BPE tokenizer
  (:func:`geotextloc.text.describe.clip_token_count`, equal to
  ``len(open_clip.get_tokenizer("ViT-B-32").tokenizer.encode(text)) + 2``);
- ``type_token_ratio``: distinct / all lower-cased ``\\w+`` words **of each text**, averaged
  over the texts. Per text is the only reading under which the paper's 0.76 is possible: over a
  corpus of thousands of 100-word texts the ratio would be far below 0.1;
- ``inter_text_similarity``: the mean pairwise cosine similarity of the texts' TF-IDF word
  vectors (scikit-learn's smooth IDF, L2-normalised rows; off-diagonal mean over a seeded
  sample of at most 500 texts; :func:`geotextloc.text.describe.inter_text_similarity`), the
  measure the embedded build's ``stats.json`` uses;
- ``share_over_77``: texts longer than CLIP's 77-token context;
- ``share_cue_after_77``: texts in which a cue (a name read by OCR, or another landmark name
  the caller lists) starts at token position >= 77, where CLIP at 77 would cut it off.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from geotextloc.text.describe import CONTEXT, clip_token_count, cue_after_context, inter_text_similarity, type_token_ratio

PAPER = {"mean_tokens": 126.0, "type_token_ratio": 0.76, "inter_text_similarity": 0.17}  # CVG-Text, sec. 3
COLUMNS = ["texts", "mean_tokens", "median_tokens", "share_over_77", "share_cue_after_77", "type_token_ratio",
           "inter_text_similarity"]


def statistics(texts: Iterable[str], cues: Iterable[list[str]] | None = None, sample: int = 500,
               seed: int = 0) -> dict:
    """The statistics of the module docstring for one group of texts (``cues``: per text the
    names to look for after token 77; None: that share is not measured)."""
    texts = list(texts)
    if not texts:
        return {"texts": 0}
    tokens = np.array([clip_token_count(t) for t in texts])
    out = {
        "texts": len(texts),
        "mean_tokens": round(float(tokens.mean()), 1),
        "median_tokens": float(np.median(tokens)),
        "share_over_77": round(float(np.mean(tokens > CONTEXT)), 3),
        "share_cue_after_77": None,
        "type_token_ratio": round(float(np.mean([type_token_ratio(t) for t in texts])), 3),
        "inter_text_similarity": round(inter_text_similarity(texts, sample, seed), 3),
    }
    if cues is not None:
        cues = list(cues)
        out["share_cue_after_77"] = round(float(np.mean(
            [n > CONTEXT and cue_after_context(t, list(c)) for t, c, n in zip(texts, cues, tokens)])), 3)
    return out


def text_statistics(frame: pd.DataFrame, by: str | list[str] = "city", sample: int = 500,
                    seed: int = 0) -> pd.DataFrame:
    """One row of :func:`statistics` per group of ``frame`` (columns ``text``, the ``by``
    columns and optionally ``cues``, a list of names per text), plus a row ``all``."""
    by = [by] if isinstance(by, str) else list(by)
    rows = []
    groups = list(frame.groupby(by, sort=True)) + [(("all",) * len(by), frame)]
    for key, part in groups:
        key = key if isinstance(key, tuple) else (key,)
        cues = part["cues"].tolist() if "cues" in part else None
        rows.append(dict(zip(by, key)) | statistics(part["text"].tolist(), cues, sample, seed))
    return pd.DataFrame(rows).set_index(by)


def paper_row() -> dict:
    """The paper's figures as a row of the statistics table (the rest unknown)."""
    return {"texts": float("nan"), "mean_tokens": PAPER["mean_tokens"], "type_token_ratio": PAPER["type_token_ratio"],
            "inter_text_similarity": PAPER["inter_text_similarity"]}
